"""The reproduction's results: mean and std over seeds, the verdict, ablations, RESULTS*.md."""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics

from generalist_tf.experiments import ledger, repro_frontier
from generalist_tf.experiments.repro_suites import (
    ABLATIONS,
    COLUMNS,
    DRIFT_RUNS,
    REFERENCE_FRONTIER,
    SELECTION_COLUMNS,
    SUITES,
    Run,
)


def summarise(runs: list[Run]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and standard deviation over seeds, per method and column (in percent)."""
    table = {}
    for method in dict.fromkeys(r.label for r in runs):
        mine = [r for r in runs if r.label == method]
        table[method] = {}
        for key in [k for k, _ in COLUMNS] + [k for k, _ in SELECTION_COLUMNS]:
            values = [100.0 * r.metrics[key] for r in mine]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            table[method][key] = (statistics.mean(values), spread)
        table[method]["best_epoch"] = statistics.mean(r.metrics["best_epoch"] for r in mine)
        table[method]["seeds"] = len(mine)
    return table


def verdict(table, margin: float = 2.0) -> list[str]:
    """The claims, read off the numbers (each line states the numbers it rests on).

    Args:
      margin: how many points of worst-case l_inf Generalist-D may trail PGD-AT by.
    """
    lines = []

    def cell(method, key):
        mean, std = table[method][key]
        return f"{mean:.2f} +- {std:.2f}"

    if "generalist_d" in table and "pgd_at" in table:
        g, p = table["generalist_d"], table["pgd_at"]
        clean_gain = g["clean"][0] - p["clean"][0]
        robust_gap = g["worst_linf"][0] - p["worst_linf"][0]
        holds = clean_gain > 0 and robust_gap >= -margin
        lines.append(
            f"- Generalist-D vs PGD-AT: natural {cell('generalist_d', 'clean')} vs "
            f"{cell('pgd_at', 'clean')} ({clean_gain:+.2f}), worst-case l_inf "
            f"{cell('generalist_d', 'worst_linf')} vs {cell('pgd_at', 'worst_linf')} "
            f"({robust_gap:+.2f}). Claim (more natural accuracy at robustness within {margin:g} "
            "points): "
            f"{'holds' if holds else 'does NOT hold'} here."
        )
        if "last_clean" in g and "last_clean" in p:
            lines.append(
                f"- Without checkpoint selection (the last G of each run; PGD-20 of the validation "
                f"step on the test split): Generalist-D natural {cell('generalist_d', 'last_clean')}"
                f" vs PGD-AT {cell('pgd_at', 'last_clean')} "
                f"({g['last_clean'][0] - p['last_clean'][0]:+.2f}), PGD-20 "
                f"{cell('generalist_d', 'last_pgd20')} vs {cell('pgd_at', 'last_pgd20')} "
                f"({g['last_pgd20'][0] - p['last_pgd20'][0]:+.2f}). The exported G of "
                f"Generalist-D comes from epoch {g['best_epoch']:.1f} on average (PGD-AT: "
                f"{p['best_epoch']:.1f})."
            )
    for variant in ("generalist_t", "generalist_d_multinorm"):
        if variant in table and "avg" in table and "max" in table:
            best = max(("avg", "max"), key=lambda m: table[m]["union"][0])
            gain = table[variant]["union"][0] - table[best]["union"][0]
            lines.append(
                f"- {variant} vs {best.upper()} (the better of AVG/MAX) on union accuracy: "
                f"{cell(variant, 'union')} vs {cell(best, 'union')} ({gain:+.2f}): "
                f"{'better' if gain > 0 else 'NOT better'} here."
            )
    return lines


def _rows(table: dict, columns, names: dict | None = None) -> list[str]:
    """The table's rows: `mean +- std` per column, then the number of seeds (a single seed
    shows `+- 0.00`: no spread was measured, as its `seeds` cell says)."""
    rows = ["| method | " + " | ".join(title for _, title in columns) + " | seeds |"]
    rows.append("|---|" + "---|" * (len(columns) + 1))
    for label, cells in table.items():
        rows.append(
            f"| {(names or {}).get(label, label)} | "
            + " | ".join(f"{m:.2f} +- {s:.2f}" for m, s in (cells[k] for k, _ in columns))
            + f" | {cells['seeds']} |"
        )
    return rows


def ablation_rows(runs: list[Run], ablation_runs: list[Run]) -> list[str]:
    """Each ablation beside its method's runs with the same seeds (single-seed numbers)."""
    seeds = sorted({r.seed for r in ablation_runs})
    reference = {}
    for key in dict.fromkeys(r.label for r in ablation_runs):
        method = ABLATIONS[key][1]
        reference[method] = [r for r in runs if r.label == method and r.seed in seeds]
    table = summarise([r for group in reference.values() for r in group] + ablation_runs)
    names = {key: what for key, (what, _, _) in ABLATIONS.items()}
    names.update({method: f"{method} (as in the table above)" for method in reference})
    columns = COLUMNS + SELECTION_COLUMNS
    rows = _rows(table, columns, names)
    header = rows[0].rstrip() + " best epoch |"
    body = [
        row + f" {table[label]['best_epoch']:.1f} |"
        for row, label in zip(rows[2:], table, strict=True)
    ]
    return [header, rows[1] + "---|", *body]


def ablation_reading(runs: list[Run], ablation_runs: list[Run]) -> list[str]:
    """What the ablations say about the verdict, each line with the numbers it rests on."""
    seeds = sorted({r.seed for r in ablation_runs})
    table = summarise([r for r in runs if r.seed in seeds] + list(ablation_runs))

    def pct(label, key):
        return f"{table[label][key][0]:.2f}"

    lines = []
    if "generalist_d" in table:
        from generalist_tf.algorithm import schedules, variants

        mixing = schedules.parse_mixing(variants.VARIANTS["generalist_d"].mixing)
        mine = [r for r in runs if r.label == "generalist_d"]
        epochs = mine[0].metrics["epochs"]

        def natural_weight(epoch: float) -> float:
            return schedules.mixing_weights(mixing, ["natural"], round(epoch), epochs)[0]

        picked = [(r.seed, r.metrics["best_epoch"]) for r in sorted(mine, key=lambda r: r.seed)]
        unmixed = sum(natural_weight(epoch) == 0 for _, epoch in picked)
        listing = ", ".join(
            f"{epoch:.0f} (seed {seed}, natural weight {natural_weight(epoch):.2f})"
            for seed, epoch in picked
        )
        line = (
            f"- Checkpoint selection: the exported Generalist-D G comes from "
            f"epoch{'s' if len(picked) > 1 else ''} {listing} of "
            f"{epochs}: in {unmixed} of {len(picked)} runs the served G is the robust learner's "
            "EMA (the natural weight grows only after 2E/3)."
        )
        if "gd_select_pgd" in table:
            other = table["gd_select_pgd"]["best_epoch"]
            line += (
                f" Choosing G on validation PGD accuracy alone picks epoch {other:.0f} (natural "
                f"weight {natural_weight(other):.2f})."
            )
        lines.append(line)
    pairs = [
        (
            "gd_no_communication",
            "generalist_d",
            "last_pgd20",
            "Redistribution: without it the last G (0.6 natural + 0.4 robust EMA, never pulled "
            "back together) keeps {a}% PGD-20 against {b}% with it; interpolating learners that "
            "drift apart destroys robustness, and with redistribution the mix is only as good as "
            "the table shows.",
        ),
        (
            "gd_no_ema",
            "generalist_d",
            "clean",
            "EMA: without it the exported G has {a}% natural accuracy against {b}% with it "
            "(worst-case l_inf {c}% vs {d}%).",
        ),
        (
            "gd_ema_0999",
            "generalist_d",
            "last_clean",
            "EMA window: the unscaled alpha 0.999 gives the last G {a}% natural accuracy against "
            "{b}% with the scaled window (worst-case l_inf of the exported G {c}% vs {d}%).",
        ),
        (
            "gd_comm_after_mixing",
            "generalist_d",
            "last_pgd20",
            "Order of redistribution and mixing: redistributing first after mixing starts gives "
            "the last G {a}% PGD-20 against {b}% (natural {e}% vs {f}%).",
        ),
        (
            "gd_period10",
            "generalist_d",
            "last_pgd20",
            "Redistribution period: every 10th epoch gives the last G {a}% PGD-20 against {b}% "
            "(natural {e}% vs {f}%).",
        ),
        (
            "gd_select_pgd",
            "generalist_d",
            "clean",
            "Selection rule: choosing G on validation PGD accuracy alone exports a G with {a}% "
            "natural accuracy against {b}% under clean + PGD (worst-case l_inf {c}% vs {d}%).",
        ),
        (
            "gd_robust_end_07",
            "generalist_d",
            "last_pgd20",
            "Mixing schedule: ending at robust weight 0.7 instead of 0.4 gives the last G {a}% "
            "PGD-20 against {b}% (natural {e}% vs {f}%).",
        ),
        (
            "multinorm_linf_first",
            "generalist_d_multinorm",
            "worst_linf",
            "Multi-norm weights: keeping the l_inf learner alone until 2E/3 gives worst-case l_inf "
            "{a}% against {b}% with equal weights from the start, and union {g}% vs {h}%: our equal "
            "weights let the l_2 learner dominate G.",
        ),
    ]
    for ablation, method, key, text in pairs:
        if ablation in table and method in table:
            lines.append(
                "- "
                + text.format(
                    a=pct(ablation, key),
                    b=pct(method, key),
                    c=pct(ablation, "worst_linf"),
                    d=pct(method, "worst_linf"),
                    e=pct(ablation, "last_clean"),
                    f=pct(method, "last_clean"),
                    g=pct(ablation, "union"),
                    h=pct(method, "union"),
                )
            )
    return lines


def run_rows(runs: list[Run]) -> list[str]:
    """One table row per run: its numbers (percent), its time and its command."""
    names = [name for _, name in COLUMNS]
    lines = [
        f"| run | seed | {' | '.join(names)} | seconds | commit | command |",
        "|" + "---|" * (len(names) + 5),
    ]
    for r in runs:
        cells = " | ".join(
            f"{100 * r.metrics[key]:.2f}" if key in r.metrics else "-" for key, _ in COLUMNS
        )
        tree = r.commit[:10] + ("+dirty" if r.commit.endswith("+dirty") else "") or "-"
        seconds = f"{r.seconds:.0f}" + (" (resumed: last part only)" if r.resumed else "")
        lines.append(f"| {r.label} | {r.seed} | {cells} | {seconds} | {tree} | `{r.command}` |")
    return lines


def timing(runs: list[Run], ablation_runs: list[Run], *, wall: float, jobs: int) -> str:
    """The Time sentence of RESULTS.md: wall-clock time of the suite, and the summed run time."""
    every = [*runs, *ablation_runs]
    summed = (
        f"each run's own time, summed (runs share the CPU when --jobs > 1): "
        f"{sum(r.seconds for r in runs) / 60:.1f} minutes for the table, "
        f"{sum(r.seconds for r in every) / 60:.1f} with the ablations."
    )
    reused = sum(1 for r in every if not r.ended)
    if reused:
        return (
            f"Time: {reused} of the {len(every)} runs were reused (from `runs.json` or the ledger), so this "
            f"invocation's wall time ({wall / 60:.1f} minutes) does not measure the suite; "
            + summed
        )
    text = f"Time (wall clock, --jobs={jobs}, every run trained by this invocation): " + (
        f"the {len(runs)} runs of the table ended after {max(r.ended for r in runs) / 60:.1f} "
        "minutes"
        if runs
        else "no run of the table"
    )
    if ablation_runs:
        text += f", all {len(every)} with the ablations after {wall / 60:.1f} minutes"
    return text + "; " + summed


def write_results(
    path: str,
    runs: list[Run],
    *,
    suite: str,
    seeds,
    wall: float,
    command: str,
    ablation_runs: list[Run] = (),
    jobs: int = 1,
):
    from generalist_tf.evaluation import plots

    spec = SUITES[suite]
    # The reference-frontier runs have no suite columns: their own section, not the ablations'.
    frontier_labels = {*REFERENCE_FRONTIER, *DRIFT_RUNS}
    frontier_runs = [r for r in ablation_runs if r.label in frontier_labels]
    ablation_runs = [r for r in ablation_runs if r.label not in frontier_labels]
    if spec.table_columns_from_full_split:
        runs, ablation_runs = (
            [_full_split_columns(r) for r in group] for group in (runs, ablation_runs)
        )
    table = summarise(runs)
    alarms = sorted({a for r in [*runs, *ablation_runs] for a in r.metrics["alarms"]})
    examples = sorted({r.metrics.get("suite_examples", 0) for r in [*runs, *ablation_runs]})
    where = (
        "clean and PGD-20 of the exported G on the whole test split (training's final table, "
        f"one random start); the attack suite's columns on a fixed subset of {examples} test "
        "images, the same for every run"
        if spec.table_columns_from_full_split
        else "the exported G (chosen on the validation split) evaluated on the whole test split"
    )
    text = [
        f"# Small-scale reproduction ({suite})",
        "",
        f"Command: `{command}`",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores ({ledger.machine()}), no GPU.",
        timing(runs, list(ablation_runs), wall=wall, jobs=jobs),
        f"Seeds: {', '.join(map(str, seeds))}. Each run: its `flags/{spec.prefix}_<method>.cfg`; "
        f"{where}.",
        "Accuracy in percent, mean +- standard deviation over seeds. Worst-case: per example, "
        "the worst of every attack of that norm (FGSM, PGD-20/100, CW, MIM, APGD-CE, APGD-T, "
        "Square for l_inf; PGD-20/100, APGD-CE for l_2). Union: robust to all of them at once.",
        "",
        *_rows(table, COLUMNS),
        "",
        "## Exported G against the last G",
        "",
        "The exported G is the epoch with the best validation score (its `--select_metric`, "
        "default clean + PGD accuracy of G); the last G is the end of training. Both on the test "
        "split with the validation step's PGD-20 (one random start), so these PGD-20 numbers "
        "differ slightly from the suite's.",
        "",
        *_rows(table, SELECTION_COLUMNS),
        "",
        "## Verdict",
        "",
        *verdict(table, spec.claim_margin),
        "",
    ]
    if ablation_runs:
        text += [
            "## Ablations",
            "",
            f"Seed {', '.join(sorted({str(r.seed) for r in ablation_runs}))}, one run each, "
            "beside the same seed of the method it changes (+- is 0 for a single seed).",
            "",
            *ablation_rows(runs, list(ablation_runs)),
            "",
            f"What they explain (seed {', '.join(sorted({str(r.seed) for r in ablation_runs}))}):",
            "",
            *ablation_reading(runs, list(ablation_runs)),
            "",
        ]
    frontier_plot = spec.plot.replace("tradeoff", "frontier")
    drift_path = os.path.join(os.path.dirname(path), drift_file(spec))
    frontier_lines = repro_frontier.section([*runs, *frontier_runs], drift_path, frontier_plot)
    text += frontier_lines
    text += [
        "## Every run",
        "",
        "Each row is one fresh process running the command beside it from the repository root "
        "(plus `--workdir`); with `--deterministic` the command repeats the row on this machine.",
        "",
        *run_rows([*runs, *ablation_runs, *frontier_runs]),
        "",
        "## Gradient-masking alarms raised",
        "",
        *([f"- {a}" for a in alarms] or ["- none"]),
        "",
        f"![trade-off]({spec.plot})",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(text))
    if frontier_lines:
        repro_frontier.plot(
            [*runs, *frontier_runs], drift_path, os.path.join(os.path.dirname(path), frontier_plot)
        )
    points = {m: (c["clean"][0] / 100, c["worst_linf"][0] / 100) for m, c in table.items()}
    spread = {m: (c["clean"][1] / 100, c["worst_linf"][1] / 100) for m, c in table.items()}
    plots.plot_tradeoff(
        points,
        os.path.join(os.path.dirname(path), spec.plot),
        robust="worst-case l_inf accuracy",
        spread=spread,
    )
    return table


def _full_split_columns(run: Run) -> Run:
    """The run with its clean / PGD-20 columns taken from the whole-test-split table."""
    m = run.metrics
    return dataclasses.replace(
        run, metrics={**m, "clean": m["exported_clean"], "pgd20_linf": m["exported_pgd20"]}
    )


def drift_file(spec) -> str:
    """The drift experiment's record beside a suite's ledger (`RESULTS_<suite>_drift.json`)."""
    return (spec.ledger or spec.results).rsplit(".", 1)[0] + "_drift.json"
