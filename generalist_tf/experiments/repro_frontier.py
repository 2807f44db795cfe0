"""The frontier section of a reproduction's results: reference frontier, drift curves, verdict.

Every point is the exported G's clean and PGD-20 accuracy on the whole test split (training's
final table; the frontier command and the drift driver score their points the same way), so
the reference runs, the drift curves and Generalist's G are compared on one axis.
"""

from __future__ import annotations

import json
import os

from generalist_tf import tradeoff
from generalist_tf.experiments.repro_suites import DRIFT_RUNS, REFERENCE_FRONTIER, Run

# The ledger's main-table rows that are reference points too (seed 0).
TABLE_REFERENCES = {
    "standard": "Standard training",
    "pgd_at": "PGD-AT, l_inf 0.1 (the table's row)",
    "trades": "TRADES, beta 6 (the table's row)",
}


def is_reference(label: str) -> bool:
    """A reference point of the frontier: a reference-frontier run or a baseline row."""
    return label in REFERENCE_FRONTIER or label in TABLE_REFERENCES


def reference_runs(runs: list[Run], seed: int = 0) -> list[tuple[str, Run]]:
    """(description, run) of every reference point of `seed`: the reference-frontier runs and
    the main table's standard, PGD-AT and TRADES rows."""
    return [
        (
            REFERENCE_FRONTIER[r.label][0]
            if r.label in REFERENCE_FRONTIER
            else TABLE_REFERENCES[r.label],
            r,
        )
        for r in runs
        if r.seed == seed and is_reference(r.label)
    ]


def point(run: Run) -> tuple[float, float]:
    return run.metrics["exported_clean"], run.metrics["exported_pgd20"]


def section(runs: list[Run], drift_path: str, plot_name: str) -> list[str]:
    """The markdown lines of the frontier section ([] without reference runs)."""
    references = reference_runs(runs)
    if not any(run.label in REFERENCE_FRONTIER for _, run in references):
        return []
    reference = [point(run) for _, run in references]
    optimal = tradeoff.pareto([tradeoff.Point(0.0, c, r) for c, r in reference])
    lines = [
        "## The trade-off frontier",
        "",
        "Seed 0. Every point is an exported G: clean and PGD-20 accuracy on the whole test split "
        "(training's final table, one random start), every radius evaluated at l_inf 0.1. "
        "The reference runs (`ref_*`) train like their method's row but skip the attack "
        "suite; their models are kept beside the ledger (`models/`) for re-scoring.",
        "",
        "| reference point | run | clean | PGD-20 l_inf | Pareto | CPU |",
        "|---|---|---|---|---|---|",
    ]
    for (what, run), (clean, robust), pareto in sorted(
        zip(references, reference, optimal), key=lambda x: -x[1][1]
    ):
        lines.append(
            f"| {what} | `{run.label}` | {100 * clean:.2f} | {100 * robust:.2f} | "
            f"{'yes' if pareto else ''} | {run.cpu or 'not recorded'} |"
        )
    lines += ["", *verdict_lines(runs, reference)]
    drift = read_drift(drift_path)
    if drift:
        lines += ["", *drift_lines(drift)]
    lines += ["", f"![frontier]({plot_name})", ""]
    return lines


def verdict_lines(runs: list[Run], reference: list[tuple[float, float]]) -> list[str]:
    """Generalist-D's G against the reference frontier, per seed."""
    lines = []
    for run in sorted(runs, key=lambda r: (r.label, r.seed)):
        if run.label != "generalist_d" and run.label not in DRIFT_RUNS:
            continue
        clean, robust = point(run)
        gain = tradeoff.gain_at([(clean, robust)], reference, robust)
        reading = (
            "beyond the reference's most robust point"
            if gain is None
            else f"{100 * gain:+.2f} points of clean accuracy against the frontier"
        )
        lines.append(
            f"- `{run.label}` seed {run.seed}: clean {100 * clean:.2f} at PGD-20 "
            f"{100 * robust:.2f}: {reading}."
        )
    return (
        [
            "Generalist's G against the reference frontier (clean accuracy gained at its own "
            "PGD-20 accuracy, frontier interpolated between its Pareto points):",
            "",
        ]
        + lines
        if lines
        else []
    )


def read_drift(path: str) -> dict | None:
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def drift_lines(drift: dict) -> list[str]:
    """The drift experiment's table: one row per fine-tune."""
    at = drift["reference"][drift["at_label"]][1]
    reference = [tuple(v[:2]) for v in drift["reference"].values()]
    low = min(r for _, r in reference)
    lines = [
        "### When the claim can hold: natural fine-tunes of the PGD-AT export",
        "",
        f"From `{drift['model']}` (sha256 {drift['model_sha256'][:12]}), natural fine-tunes of S "
        f"steps at the protocol's free-window learning rate ({drift['free_window_learning_rate']:.4g}) "
        "and at 4x it, each interpolated with the robust export at "
        f"{len(next(iter(drift['curves'].values()))['points']) if drift['curves'] else 0} "
        "evenly spaced lambdas from 0 to 1 "
        f"(`python -m generalist_tf.experiments.drift`; {drift.get('cpu', '')}). "
        + (
            f"Every point, and the reference frontier re-scored from its kept models "
            f"({', '.join(f'`{k}`' for k in sorted(drift['reference']))}), on the same fixed "
            f"{drift['reference_examples']} test images. "
            if drift.get("reference_examples")
            else ""
        )
        + f"Gain: clean accuracy over the reference frontier at PGD-AT's PGD-20 accuracy "
        f"({100 * at:.2f}) and at the least robust reference point's ({100 * low:.2f}); "
        "largest gain: the best inside the reference's robust range (0 where the curve only "
        "meets it at the shared PGD-AT end).",
        "",
        "| S | learning rate | drift S x lr | gain at PGD-AT | gain at the least robust "
        "reference | largest gain (at PGD-20) | natural end clean / PGD-20 | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def pts(v):
        return "n/a" if v is None else f"{100 * v:+.2f}"

    for key, c in sorted(
        drift["curves"].items(), key=lambda kv: (kv[1]["multiplier"], kv[1]["steps"])
    ):
        end = c["points"][0]
        lines.append(
            f"| {c['steps']} | {c['learning_rate']:.4g} | {c['drift']:.3g} | "
            f"{pts(c['gain_at_reference'])} | "
            f"{pts(tradeoff.gain_at(curve_points(c), reference, low))} | {pts(c['largest_gain'])}"
            + (
                f" (at {100 * c['largest_gain_at']:.2f})"
                if c["largest_gain_at"] is not None
                else ""
            )
            + f" | {100 * end['test_clean']:.2f} / {100 * end['test_pgd']:.2f} | "
            f"{c['seconds']['total']:.0f} |"
        )
    return lines


def curve_points(curve: dict) -> list[tuple[float, float]]:
    return [(p["test_clean"], p["test_pgd"]) for p in curve["points"]]


def plot(runs: list[Run], drift_path: str, path: str) -> None:
    """Clean against PGD-20: the reference runs, Generalist's G, the drift curves; the whole
    range on the left, the robust end (PGD-20 >= 45%) on the right."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from generalist_tf import files

    figure = Figure(figsize=(12, 5), dpi=100)
    FigureCanvasAgg(figure)
    drift = read_drift(drift_path)
    for index, zoom in enumerate((False, True)):
        axes = figure.add_subplot(1, 2, index + 1)
        axes.set_title("robust end" if zoom else "Trade-off frontier (test split, seed 0)")
        axes.set_xlabel("PGD-20 l_inf accuracy (%)")
        axes.set_ylabel("clean accuracy (%)")
        axes.grid(alpha=0.3)
        for family, marker in (("pgd_at", "s-"), ("trades", "^-")):
            members = sorted(
                (
                    point(run)
                    for _, run in reference_runs(runs)
                    if run.label.startswith(f"ref_{family}")
                ),
                key=lambda p: p[1],
            )
            if members:
                axes.plot(
                    [100 * r for _, r in members],
                    [100 * c for c, _ in members],
                    marker,
                    label=f"{family} (reference runs)",
                )
        for what, run in reference_runs(runs):
            if run.label in TABLE_REFERENCES:
                clean, robust = point(run)
                axes.plot([100 * robust], [100 * clean], "x", ms=9, label=what)
        for run in runs:
            if run.label == "generalist_d" or run.label in DRIFT_RUNS:
                clean, robust = point(run)
                marker = "r*" if run.label == "generalist_d" else "m*"
                axes.plot(
                    [100 * robust], [100 * clean], marker, ms=12, label=f"{run.label} s{run.seed}"
                )
        for key, c in sorted((drift or {}).get("curves", {}).items()):
            axes.plot(
                [100 * p["test_pgd"] for p in c["points"]],
                [100 * p["test_clean"] for p in c["points"]],
                ":",
                marker=".",
                label=f"fine-tune {key} (test subset)",
            )
        if zoom:
            axes.set_xlim(45, None)
            axes.set_ylim(74, 86)
            axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    with files.staged(path) as staging:
        figure.savefig(staging, bbox_inches="tight")
