"""Small-scale reproduction: every method x several seeds, evaluated alike, summarised in RESULTS.md.

    python -m generalist_tf.repro --suite=digits --workdir=runs/repro

Trains each method from its flagfile (`flags/digits_<method>.cfg`; the `mnist` suite runs the
same recipes on MNIST with the SmallCNN), evaluates the exported G of every run with the full
attack suite of `evaluate.evaluate_model` on the test split, and writes `RESULTS.md` (mean and
standard deviation over seeds, the commands, the machine, the wall time, and a verdict computed
from the numbers) and `tradeoff.png` (natural vs worst-case l_inf accuracy of every method).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
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
SUITES = {
    "digits": {},
    "mnist": {"dataset": "mnist", "model": "small_cnn"},
}


@dataclasses.dataclass(frozen=True)
class Run:
    method: str
    seed: int
    metrics: dict
    seconds: float


def _config(flagfile: str, overrides: dict):
    from generalist_tf import cli, config

    values = flags.FlagValues()
    cli.define_flags(values)
    values(["repro", f"--flagfile={flagfile}", *[f"--{k}={v}" for k, v in overrides.items()]])
    return config.from_flags(values.flag_values_dict())


def run_one(
    method: str, seed: int, *, root: str, suite: str, extra: dict, eval_kwargs: dict
) -> Run:
    """Trains one method with one seed and evaluates its exported G."""
    from generalist_tf import data, evaluate, export, train

    workdir = os.path.join(root, method, f"seed{seed}")
    # The driver evaluates the export itself (below): training's own final evaluation is skipped.
    overrides = {
        **SUITES[suite],
        **extra,
        "seed": seed,
        "workdir": workdir,
        "verbose": 0,
        "final_eval": False,
    }
    cfg = _config(f"flags/digits_{method}.cfg", overrides)
    start = time.time()
    train.train(cfg)
    arrays = data.load(cfg.dataset, data_dir=cfg.data_dir)
    model = export.load_serving(os.path.join(workdir, train.EXPORT_BEST))
    report = evaluate.evaluate_model(
        model,
        arrays.x_test,
        arrays.y_test,
        workdir=os.path.join(workdir, "eval"),
        epsilon_linf=cfg.eval_attack.epsilon,
        epsilon_l2=cfg.eval_epsilon_l2,
        seed=seed,
        **eval_kwargs,
    )
    metrics = {
        "clean": report["clean_accuracy"],
        "pgd20_linf": report["attacks"]["pgd20_linf"]["accuracy"],
        "worst_linf": report["worst_case"]["linf"],
        "worst_l2": report["worst_case"]["l2"],
        "union": report["union_accuracy"],
        "alarms": report["alarms"],
    }
    return Run(method, seed, metrics, time.time() - start)


def summarise(runs: list[Run]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and standard deviation over seeds, per method and column (in percent)."""
    table = {}
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        table[method] = {}
        for key, _ in COLUMNS:
            values = [100.0 * r.metrics[key] for r in mine]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            table[method][key] = (statistics.mean(values), spread)
    return table


def verdict(table) -> list[str]:
    """The claims, read off the numbers (each line states the numbers it rests on)."""
    lines = []

    def cell(method, key):
        mean, std = table[method][key]
        return f"{mean:.2f} +- {std:.2f}"

    if "generalist_d" in table and "pgd_at" in table:
        g, p = table["generalist_d"], table["pgd_at"]
        clean_gain = g["clean"][0] - p["clean"][0]
        robust_gap = g["worst_linf"][0] - p["worst_linf"][0]
        holds = clean_gain > 0 and robust_gap >= -2.0
        lines.append(
            f"- Generalist-D vs PGD-AT: natural {cell('generalist_d', 'clean')} vs "
            f"{cell('pgd_at', 'clean')} ({clean_gain:+.2f}), worst-case l_inf "
            f"{cell('generalist_d', 'worst_linf')} vs {cell('pgd_at', 'worst_linf')} "
            f"({robust_gap:+.2f}). Claim (more natural accuracy at robustness within 2 points): "
            f"{'holds' if holds else 'does NOT hold'} here."
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


def write_results(path: str, runs: list[Run], *, suite: str, seeds, wall: float, command: str):
    from generalist_tf import evaluate

    table = summarise(runs)
    rows = ["| method | " + " | ".join(title for _, title in COLUMNS) + " |"]
    rows.append("|---|" + "---|" * len(COLUMNS))
    for method, cells in table.items():
        rows.append(
            f"| {method} | "
            + " | ".join(f"{m:.2f} +- {s:.2f}" for m, s in (cells[k] for k, _ in COLUMNS))
            + " |"
        )
    alarms = sorted({a for r in runs for a in r.metrics["alarms"]})
    text = [
        f"# Small-scale reproduction ({suite})",
        "",
        f"Command: `{command}`",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, no GPU. "
        f"Wall time: {wall / 60:.1f} minutes for {len(runs)} runs (training + evaluation).",
        f"Seeds: {', '.join(map(str, seeds))}. Each run: its `flags/digits_<method>.cfg`; the "
        "exported G (chosen on the validation split) evaluated on the whole test split.",
        "Accuracy in percent, mean +- standard deviation over seeds. Worst-case: per example, "
        "the worst of every attack of that norm (FGSM, PGD-20/100, CW, MIM, APGD-CE, APGD-T, "
        "Square for l_inf; PGD-20/100, APGD-CE for l_2). Union: robust to all of them at once.",
        "",
        *rows,
        "",
        "## Verdict",
        "",
        *verdict(table),
        "",
        "## Gradient-masking alarms raised",
        "",
        *([f"- {a}" for a in alarms] or ["- none"]),
        "",
        "![trade-off](tradeoff.png)",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(text))
    points = {m: (c["clean"][0] / 100, c["worst_linf"][0] / 100) for m, c in table.items()}
    evaluate.plot_tradeoff(points, os.path.join(os.path.dirname(path), "tradeoff.png"))
    return table


FLAGS = flags.FLAGS


def _define():
    flags.DEFINE_enum("suite", "digits", list(SUITES), "Which reproduction.")
    flags.DEFINE_string("workdir", "runs/repro", "Where runs and RESULTS.md go.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every method.")
    flags.DEFINE_list("methods", list(METHODS), "Methods to run.")
    flags.DEFINE_string("data_dir", None, "tfds data directory (mnist suite).")
    flags.DEFINE_integer("epochs", 0, "Override every method's epochs (0: keep the flagfile's).")
    flags.DEFINE_integer("square_queries", 1000, "Square attack query budget.")
    flags.DEFINE_string("results", "RESULTS.md", "Output file (relative to the repo root).")


def main(argv):
    del argv
    extra = {"data_dir": FLAGS.data_dir} if FLAGS.data_dir else {}
    if FLAGS.epochs:
        extra["epochs"] = FLAGS.epochs
    eval_kwargs = {"square_queries": FLAGS.square_queries}
    start, runs = time.time(), []
    for method in FLAGS.methods:
        for seed in map(int, FLAGS.seeds):
            run = run_one(
                method,
                seed,
                root=FLAGS.workdir,
                suite=FLAGS.suite,
                extra=extra,
                eval_kwargs=eval_kwargs,
            )
            logging.warning("%s seed %d: %s (%.0f s)", method, seed, run.metrics, run.seconds)
            runs.append(run)
            with open(os.path.join(FLAGS.workdir, "runs.json"), "w") as f:
                json.dump([dataclasses.asdict(r) for r in runs], f, indent=1)
    command = "python -m generalist_tf.repro " + " ".join(
        f"--{name}={FLAGS[name].serialize().split('=', 1)[-1]}"
        for name in ("suite", "workdir", "seeds", "methods", "epochs", "square_queries")
    )
    write_results(
        FLAGS.results,
        runs,
        suite=FLAGS.suite,
        seeds=FLAGS.seeds,
        wall=time.time() - start,
        command=command,
    )


if __name__ == "__main__":
    _define()
    app.run(main)
