"""Small-scale reproduction: every method x several seeds, evaluated alike, summarised in RESULTS.md.

    python -m generalist_tf.experiments.repro --suite=digits --workdir=runs/repro

Trains each method from its flagfile (`flags/digits_<method>.cfg`; the `mnist` suite runs the
same recipes on MNIST with the SmallCNN), evaluates the exported G of every run with the full
attack suite of `runner.evaluate_model` on the test split, and writes `RESULTS.md` (mean and
standard deviation over seeds, the commands, the machine, the wall time, and a verdict computed
from the numbers) and `tradeoff.png` (natural vs worst-case l_inf accuracy of every method).

A suite may span sessions: every finished run goes into the suite's committed results ledger
(`RESULTS_fashion_mnist.json`, `RESULTS.json`; see `ledger`), and a later invocation reuses the
entries whose commands still resolve to the same flags; `--notrain` writes the results of the
runs finished so far.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

from absl import app, flags, logging

METHODS = (
    "standard",
    "pgd_at",
    "trades",
    "avg",
    "max",
    "msd",
    "generalist_d",
    "generalist_d_multinorm",
    "generalist_t",
)
COLUMNS = (
    ("clean", "clean"),
    ("pgd20_linf", "PGD-20 l_inf"),
    ("worst_linf", "worst-case l_inf"),
    ("worst_l2", "worst-case l_2"),
    ("union", "union (l_inf and l_2)"),
)
# The exported G (best validation PGD accuracy) against the last G, as ALGORITHM.md asks.
SELECTION_COLUMNS = (
    ("exported_clean", "exported G clean"),
    ("exported_pgd20", "exported G PGD-20"),
    ("last_clean", "last G clean"),
    ("last_pgd20", "last G PGD-20"),
)


@dataclasses.dataclass(frozen=True)
class Suite:
    """A reproduction: which flagfiles (`flags/<prefix>_<method>.cfg`), overrides, outputs.

    `claim_margin`: the verdict's tolerance on worst-case l_inf (Generalist-D may trail PGD-AT
    by at most this many points and still count as "equal robustness").
    """

    prefix: str
    flags: dict
    results: str
    plot: str
    claim_margin: float
    ablations: tuple[str, ...]
    # The clean and PGD-20 columns from training's final table on the whole test split (the
    # suite then runs on a subset), not from the suite's report.
    table_columns_from_full_split: bool = False
    # The committed results ledger (`ledger`) that carries finished runs across sessions.
    ledger: str = ""


_DIGITS_ABLATIONS = (
    "gd_select_pgd",
    "gd_no_ema",
    "gd_period5",
    "gd_no_communication",
    "gd_robust_end_07",
    "multinorm_linf_first",
)
SUITES = {
    "digits": Suite(
        "digits", {}, "RESULTS.md", "tradeoff.png", 2.0, _DIGITS_ABLATIONS, ledger="RESULTS.json"
    ),
    "mnist": Suite(
        "digits",
        {"dataset": "mnist", "model": "small_cnn"},
        "RESULTS.md",
        "tradeoff.png",
        2.0,
        _DIGITS_ABLATIONS,
    ),
    "fashion_mnist": Suite(
        "fashion_mnist",
        {},
        "RESULTS_fashion_mnist.md",
        "tradeoff_fashion_mnist.png",
        1.0,
        (
            "gd_select_pgd",
            "gd_ema_0999",
            "gd_comm_after_mixing",
            "gd_period10",
            "gd_robust_end_07",
        ),
        table_columns_from_full_split=True,
        ledger="RESULTS_fashion_mnist.json",
    ),
}


# Single-seed ablations of the Generalist choices (ALGORITHM.md): label -> (what, method, flags).
ABLATIONS = {
    "gd_select_pgd": (
        "Generalist-D, G selected on validation PGD accuracy alone (--select_metric=pgd)",
        "generalist_d",
        {"select_metric": "pgd"},
    ),
    "gd_no_ema": ("Generalist-D, no EMA (--ema_decay=0)", "generalist_d", {"ema_decay": 0}),
    "gd_ema_0999": (
        "Generalist-D, the official EMA alpha 0.999 unscaled (a 1,000-step window)",
        "generalist_d",
        {"ema_decay": 0.999},
    ),
    "gd_comm_after_mixing": (
        "Generalist-D, first redistribution after mixing starts (--communication_start=0.7)",
        "generalist_d",
        {"communication_start": "0.7"},
    ),
    "gd_period10": (
        "Generalist-D, redistribution every 10th epoch (twice the official period)",
        "generalist_d",
        {"communication_period": 10},
    ),
    "gd_period5": (
        "Generalist-D, redistribution every 5th epoch (the official period; ours is 2)",
        "generalist_d",
        {"communication_period": 5},
    ),
    "gd_no_communication": (
        "Generalist-D, no redistribution (--communication_mode=none)",
        "generalist_d",
        {"communication_mode": "none"},
    ),
    "gd_robust_end_07": (
        "Generalist-D, robust weight ends at 0.7 instead of 0.4",
        "generalist_d",
        {"mixing": "natural=0:0,2/3:0,1:0.3;linf_pgd=0:1,2/3:1,1:0.7"},
    ),
    "multinorm_linf_first": (
        "Generalist-D multi-norm, l_inf weight 1 until 2E/3, then to 0.5 (ours: 0.5 throughout)",
        "generalist_d_multinorm",
        {"mixing": "linf_pgd=0:1,2/3:1,1:0.5;l2_pgd=0:0,2/3:0,1:0.5"},
    ),
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One trained and evaluated run; `label` is the method or the ablation's key."""

    label: str
    seed: int
    metrics: dict
    seconds: float
    # When the run ended, in seconds since its invocation started (0 for a reused run).
    ended: float = 0.0
    # The command that trains and evaluates it (`run_command`), as RESULTS.md lists it.
    command: str = ""
    # The commit of the tree whose invocation finished it (`ledger.commit`); "" if not recorded.
    commit: str = ""
    # Resumed from an earlier invocation's checkpoint: `seconds` then counts only the last one.
    resumed: bool = False


def run_dir(root: str, label: str, seed: int) -> str:
    """Where the run of `label` with `seed` writes (its `--workdir`)."""
    return os.path.join(root, label, f"seed{seed}")


def command(method: str, flags_: dict, suite: str = "digits") -> list[str]:
    """`python -m generalist_tf.main --flagfile=flags/<prefix>_<method>.cfg --<flag>=<value> ...`."""
    return [
        sys.executable,
        "-m",
        "generalist_tf.main",
        f"--flagfile=flags/{SUITES[suite].prefix}_{method}.cfg",
        *[f"--{k}={v}" for k, v in flags_.items()],
    ]


def run_flags(seed: int, suite: str, extra: dict) -> dict:
    """The flags one run adds to its flagfile: the suite's, the overrides, the seed."""
    return {**SUITES[suite].flags, **extra, "seed": seed}


def run_command(method: str, seed: int, suite: str, extra: dict) -> str:
    """The user-facing command of one run: its flagfile, seed and overrides (no workdir)."""
    return shlex.join(["python", *command(method, run_flags(seed, suite, extra), suite)[1:]])


def run_one(
    method: str,
    seed: int,
    *,
    root: str,
    suite: str,
    extra: dict,
    label: str | None = None,
    restart: bool = False,
) -> Run:
    """Trains one method with one seed and evaluates its exported G, as its flagfile does.

    Each run is a fresh process running exactly `python -m generalist_tf.main
    --flagfile=flags/digits_<method>.cfg --seed=<seed> --workdir=<root>/<label>/seed<seed>`
    (plus `extra` flags), training's final attack suite included: with `--deterministic` (from
    `flags/digits_common.cfg`) that flagfile command gives the same numbers as its row's run.
    A fresh process matters: TensorFlow's op-seed counters and Keras' name counters live for the
    process, so a second run in one process would not repeat the command's numbers.

    Raises:
      RuntimeError: the run failed (its last error line).
    """
    label = label or method
    workdir = run_dir(root, label, seed)
    flags_ = {**run_flags(seed, suite, extra), "workdir": workdir, "verbose": 0}
    if restart:  # retrain from scratch; otherwise an interrupted run resumes from its checkpoint
        flags_["restart"] = "true"
    resumed = not restart and os.path.isdir(os.path.join(workdir, "checkpoints"))
    start = time.time()
    result = subprocess.run(
        command(method, {**flags_, "final_eval": "true"}, suite), capture_output=True, text=True
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["(no output)"]
        raise RuntimeError(f"{label} seed {seed} failed: {lines[-1]}")
    return Run(
        label,
        seed,
        read_metrics(workdir),
        time.time() - start,
        command=run_command(method, seed, suite, extra),
        resumed=resumed,
    )


def read_metrics(workdir: str) -> dict:
    """The numbers of a finished run: its suite report and, from `results.json`, the last G."""
    from generalist_tf import train
    from generalist_tf.evaluation import writers

    with open(os.path.join(workdir, writers.REPORT_JSON)) as f:
        report = json.load(f)
    with open(os.path.join(workdir, train.RESULTS)) as f:
        results = json.load(f)
    test = results["test"]
    return {
        "clean": report["clean_accuracy"],
        "pgd20_linf": report["attacks"]["pgd20_linf"]["accuracy"],
        "worst_linf": report["worst_case"]["linf"],
        "worst_l2": report["worst_case"]["l2"],
        "union": report["union_accuracy"],
        "alarms": report["alarms"],
        # Validation-time PGD-20 (test_step) of the exported and of the last G, on the test split.
        "best_epoch": results["best_epoch"],
        "epochs": results["epochs"],
        "exported_clean": test["best/clean_accuracy"],
        "exported_pgd20": test["best/pgd_accuracy"],
        "last_clean": test["global/clean_accuracy"],
        "last_pgd20": test["global/pgd_accuracy"],
        "suite_examples": report.get("num_examples", 0),
    }


def reusable(root: str) -> dict[tuple[str, int], float]:
    """(label, seed) -> seconds of the runs a previous invocation finished under `root`."""
    from generalist_tf.evaluation import writers

    path = os.path.join(root, "runs.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        entries = json.load(f)
    done = {}
    for entry in entries:
        label = entry.get("label", entry.get("method"))
        workdir = run_dir(root, label, entry["seed"])
        if os.path.exists(os.path.join(workdir, writers.REPORT_JSON)):
            done[(label, entry["seed"])] = entry["seconds"]
    return done


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
    rows = ["| method | " + " | ".join(title for _, title in columns) + " |"]
    rows.append("|---|" + "---|" * len(columns))
    for label, cells in table.items():
        rows.append(
            f"| {(names or {}).get(label, label)} | "
            + " | ".join(f"{m:.2f} +- {s:.2f}" for m, s in (cells[k] for k, _ in columns))
            + " |"
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
        best = round(statistics.mean(r.metrics["best_epoch"] for r in mine))
        natural = schedules.mixing_weights(mixing, ["natural"], best, epochs)[0]
        lines.append(
            f"- Checkpoint selection: the exported Generalist-D G comes from epoch {best} of "
            f"{epochs} on average, where the natural learner's weight is {natural:.2f}: the "
            "served G is then the robust learner's EMA, and choosing G on validation PGD accuracy "
            "never picks a mixed G. The natural weight grows only after 2E/3."
        )
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
        cells = " | ".join(f"{100 * r.metrics[key]:.2f}" for key, _ in COLUMNS)
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
    text = (
        f"Time (wall clock, --jobs={jobs}, every run trained by this invocation): the "
        f"{len(runs)} runs of the table ended after {max(r.ended for r in runs) / 60:.1f} minutes"
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
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores ({_cpu_name()}), no GPU.",
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
    text += [
        "## Every run",
        "",
        "Each row is one fresh process running the command beside it from the repository root "
        "(plus `--workdir`); with `--deterministic` the command repeats the row on this machine.",
        "",
        *run_rows([*runs, *ablation_runs]),
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


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_plan(
    plan: list[tuple[str, str, int, dict]],
    *,
    root: str,
    suite: str,
    extra: dict,
    done: dict[tuple[str, int], float],
    jobs: int = 1,
    restart: bool = False,
    ledger_path: str = "",
    train: bool = True,
) -> list[Run]:
    """Runs every (label, method, seed, overrides) of `plan` not in `done`, `jobs` at a time.

    Each run is its own process (`run_one`), so runs in parallel cannot share TensorFlow state;
    with `--deterministic` their numbers do not depend on `jobs`. `<root>/runs.json` is rewritten
    in plan order after every finished run, so an interrupted invocation resumes with `--reuse`.
    A failed run does not stop the others; the first failure is raised once all have ended.

    With `ledger_path` (see `ledger`), a run that is neither in `done` nor trained here is taken
    from the ledger when its command still resolves to the flags recorded there, and every run
    finished or collected here is written to it. With `train=False` nothing is trained: the result
    is the runs found (in `done` or the ledger), in plan order.
    """
    from generalist_tf.experiments import ledger

    os.makedirs(root, exist_ok=True)
    start = time.time()
    # Each entry's flags beyond its flagfile: the invocation's, then the entry's own.
    extras = [{**extra, **overrides} for _, _, _, overrides in plan]
    results: dict[int, Run] = {}
    resolved: dict[int, dict[str, str]] = {}
    entries = ledger.read(ledger_path) if ledger_path and not restart else []
    defaults = ledger.defaults()
    tree = ledger.commit() if ledger_path else ""
    from_ledger = set()
    # Entries whose workdir holds another experiment (flags changed since): retrained from scratch.
    stale = set()
    for i, (label, method, seed, _) in enumerate(plan):
        resolved[i] = ledger.resolved_flags(
            command(method, run_flags(seed, suite, extras[i]), suite)[3:]
        )
        recorded = os.path.join(run_dir(root, label, seed), "flags.cfg")
        if os.path.exists(recorded):
            changed = ledger.differing(
                ledger.resolved_flags([f"--flagfile={recorded}"]), resolved[i], defaults
            )
            if changed:
                logging.warning("%s seed %d: its workdir ran %s otherwise", label, seed, changed)
                stale.add(i)
        if (label, seed) in done and i not in stale:
            metrics = read_metrics(run_dir(root, label, seed))
            results[i] = Run(
                label,
                seed,
                metrics,
                done[(label, seed)],
                command=run_command(method, seed, suite, extras[i]),
                commit=tree,
            )
            continue
        entry = ledger.find(entries, label, seed)  # entries is [] without a ledger
        if entry is None:
            continue
        changed = ledger.differing(entry["flags"], resolved[i], defaults)
        if changed:
            logging.warning(
                "%s seed %d: the ledger's run differs in %s; retraining", label, seed, changed
            )
            continue
        results[i] = Run(
            label,
            seed,
            entry["metrics"],
            entry["seconds"],
            command=run_command(method, seed, suite, extras[i]),
            commit=entry.get("commit", ""),
            resumed=entry.get("resumed", False),
        )
        from_ledger.add(i)

    def record():
        with open(os.path.join(root, "runs.json"), "w") as f:
            json.dump([dataclasses.asdict(results[i]) for i in sorted(results)], f, indent=1)
        for i in sorted(set(results) - from_ledger) if ledger_path else ():
            run = results[i]
            ledger.upsert(
                ledger_path,
                {
                    "label": run.label,
                    "seed": run.seed,
                    "method": plan[i][1],
                    "metrics": run.metrics,
                    "seconds": run.seconds,
                    "command": run.command,
                    "commit": run.commit or tree,
                    "resumed": run.resumed,
                    "flags": resolved[i],
                },
            )
            from_ledger.add(i)

    if not train:
        record()
        return [results[i] for i in sorted(results)]

    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {
            pool.submit(
                run_one,
                method,
                seed,
                root=root,
                suite=suite,
                extra=extras[i],
                label=label,
                restart=restart or i in stale,
            ): i
            for i, (label, method, seed, _) in enumerate(plan)
            if i not in results
        }
        for future in concurrent.futures.as_completed(futures):
            try:
                run = future.result()
            except RuntimeError as e:
                failures.append(e)
                logging.error("%s", e)
                continue
            run = dataclasses.replace(run, ended=time.time() - start, commit=tree)
            results[futures[future]] = run
            logging.warning(
                "%s seed %d: %s (%.0f s)", run.label, run.seed, run.metrics, run.seconds
            )
            record()
    if failures:
        raise failures[0]
    record()
    return [results[i] for i in sorted(results)]


FLAGS = flags.FLAGS


def _define():
    flags.DEFINE_enum("suite", "digits", list(SUITES), "Which reproduction.")
    flags.DEFINE_string("workdir", "runs/repro", "Where runs and RESULTS.md go.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every method.")
    flags.DEFINE_list("methods", list(METHODS), "Methods to run.")
    flags.DEFINE_list(
        "ablations",
        None,
        f"Ablations to run (of {', '.join(ABLATIONS)}; 'none': none); default: the suite's.",
    )
    flags.DEFINE_list("ablation_seeds", ["0"], "Seeds of the ablations.")
    flags.DEFINE_bool(
        "reuse",
        True,
        "Reuse the finished runs recorded in <workdir>/runs.json and resume interrupted ones; "
        "--noreuse retrains every run from scratch (--restart).",
    )
    flags.DEFINE_string("data_dir", None, "tfds data directory (mnist suite).")
    flags.DEFINE_integer("epochs", 0, "Override every method's epochs (0: keep the flagfile's).")
    flags.DEFINE_integer(
        "square_queries", 0, "Override the Square attack's query budget (0: the flagfile's)."
    )
    flags.DEFINE_string(
        "results", "", "Output file (relative to the repo root); default: the suite's."
    )
    flags.DEFINE_string(
        "ledger",
        "",
        "Results ledger (relative to the repo root) that finished runs are read from and written "
        "to, so a suite spans sessions; default: the suite's; 'none': no ledger.",
    )
    flags.DEFINE_bool(
        "train",
        True,
        "Train the runs that are neither finished in --workdir nor in the ledger; --notrain only "
        "collects finished runs (into the ledger) and writes the results of those.",
    )
    flags.DEFINE_string(
        "precision", "", "Override every run's --precision (fp32, bf16, auto; empty: flagfile's)."
    )
    flags.DEFINE_integer(
        "jobs",
        2,
        "Runs trained at once, each in its own process (2 fills this 2-core CPU).",
        lower_bound=1,
    )


def main(argv):
    del argv
    spec = SUITES[FLAGS.suite]
    if FLAGS.ablations is None:
        FLAGS.ablations = list(spec.ablations)
    elif FLAGS.ablations == ["none"]:
        FLAGS.ablations = []
    unknown = sorted(set(FLAGS.ablations) - set(ABLATIONS))
    if unknown:
        raise app.UsageError(f"--ablations: unknown {unknown}; choose from {list(ABLATIONS)}")
    extra = {"data_dir": FLAGS.data_dir} if FLAGS.data_dir else {}
    if FLAGS.epochs:
        extra["epochs"] = FLAGS.epochs
    if FLAGS.square_queries:
        extra["eval_square_queries"] = FLAGS.square_queries
    if FLAGS.precision:
        extra["precision"] = FLAGS.precision
    os.makedirs(FLAGS.workdir, exist_ok=True)
    done = reusable(FLAGS.workdir) if FLAGS.reuse else {}
    plan = [(m, m, int(s), {}) for m in FLAGS.methods for s in FLAGS.seeds]
    plan += [
        (key, ABLATIONS[key][1], int(s), ABLATIONS[key][2])
        for key in FLAGS.ablations
        for s in FLAGS.ablation_seeds
    ]
    start = time.time()
    finished = run_plan(
        plan,
        root=FLAGS.workdir,
        suite=FLAGS.suite,
        extra=extra,
        done=done,
        jobs=FLAGS.jobs,
        restart=not FLAGS.reuse,
        ledger_path="" if FLAGS.ledger == "none" else (FLAGS.ledger or spec.ledger),
        train=FLAGS.train,
    )
    if not finished:
        raise app.UsageError("no finished run to write results from (--notrain)")
    command = "python -m generalist_tf.experiments.repro " + " ".join(
        f"--{name}={FLAGS[name].serialize().split('=', 1)[-1]}"
        for name in ("suite", "workdir", "seeds", "methods", "ablations", "ablation_seeds", "jobs")
    )
    methods = set(FLAGS.methods)
    write_results(
        FLAGS.results or spec.results,
        [r for r in finished if r.label in methods],
        suite=FLAGS.suite,
        seeds=FLAGS.seeds,
        wall=time.time() - start,
        command=command,
        ablation_runs=[r for r in finished if r.label not in methods],
        jobs=FLAGS.jobs,
    )


if __name__ == "__main__":
    _define()
    app.run(main)
