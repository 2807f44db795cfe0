"""The report's files: report.json, report.md (the paper-style table), curves and TensorBoard."""

from __future__ import annotations

import os

import tensorflow as tf

from generalist_tf import files
from generalist_tf.evaluation import plots, reporting

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CURVE_JSON = "accuracy_vs_epsilon.json"
SUMMARY_DIR = "eval"
CLEAN_ACCURACY_METRIC = "eval/clean_accuracy"
UNION_ACCURACY_METRIC = "eval/union_accuracy"
NUM_ALARMS_METRIC = "eval/num_alarms"


def curve_png(norm: str) -> str:
    """File name of the accuracy-vs-epsilon plot of `norm`."""
    return f"accuracy_vs_epsilon_{norm}.png"


def write_outputs(
    workdir: str, report: dict, curves: dict, descriptions: dict, *, tensorboard: bool = True
) -> None:
    """Writes report.json, report.md, the curves (JSON and PNGs) and the TensorBoard scalars."""
    files.write_json(os.path.join(workdir, REPORT_JSON), report, indent=2)
    files.write_text(os.path.join(workdir, REPORT_MD), markdown_report(report, descriptions))
    files.write_json(os.path.join(workdir, CURVE_JSON), curves, indent=2)
    for norm, curve in curves.items():
        plots.plot_epsilon_curve(curve, norm, os.path.join(workdir, curve_png(norm)))
    if tensorboard:
        write_summaries(report, curves, os.path.join(workdir, SUMMARY_DIR))


def markdown_report(report: dict, descriptions: dict[str, str] | None = None) -> str:
    """The report as markdown: a summary, the paper-style table, notes and alarms.

    Accuracies carry their 95% interval (`reporting.INTERVAL_METHOD`) when the report has them.
    """
    descriptions = descriptions or {}
    intervals = report.get("intervals")

    def accuracy(value, interval):
        if intervals is None or interval is None:
            return f"{100 * value:.2f}%"
        return reporting.percent_with_interval(value, interval) + "%"

    subset = report.get("subset")
    examples = f"{report['num_examples']} examples"
    if subset:
        examples = (
            f"**A subset: {subset['num_examples']} of the {subset['of']} test examples** "
            "(fixed, `data.EVAL_SUBSET_SEED`)"
        )
    worst = report["worst_case"]

    def get(*keys):
        return None if intervals is None else _nested(intervals, keys)

    lines = [
        "# Robustness evaluation",
        "",
        f"{examples}; clean accuracy "
        f"{accuracy(report['clean_accuracy'], get('clean_accuracy'))}; worst case l_inf "
        f"{accuracy(worst['linf'], get('worst_case', 'linf'))}, l_2 "
        f"{accuracy(worst['l2'], get('worst_case', 'l2'))}; union over all attacks "
        f"{accuracy(report['union_accuracy'], get('union_accuracy'))}.",
        "",
    ]
    if intervals is not None:
        lines += [f"Intervals: {intervals['method']} (binomial, over examples).", ""]
    for norm, value in (report.get("autoattack_standard") or {}).items():
        budget = report["autoattack_budgets"][norm]
        if value is None:
            lines.append(
                f"- AutoAttack standard, {norm}: not run (missing {', '.join(budget['missing'])})."
            )
            continue
        note = "" if budget["standard"] else " **below the standard budgets**"
        queries = budget["square_queries"]
        lines.append(
            f"- AutoAttack standard, {norm} ({', '.join(budget['attacks'])}; "
            f"{budget['iterations']} iterations"
            + (f", Square {queries} queries" if queries else "")
            + f"){note}: {accuracy(value, get('autoattack_standard', norm))}."
        )
    if report.get("autoattack_standard"):
        lines.append("")
    lines += [
        "| attack | norm | epsilon | steps | restarts | accuracy (%) | 95% interval (%) | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["attacks"].items():
        interval = entry.get("interval")
        shown = "" if interval is None else f"{100 * interval[0]:.2f}-{100 * interval[1]:.2f}"
        epsilon = entry.get("epsilon_text") or f"{entry['epsilon']:.4g}"
        lines.append(
            f"| {name} | {entry['norm']} | {epsilon} | {entry['num_steps']} | "
            f"{entry['restarts']} | {100 * entry['accuracy']:.2f} | {shown} | "
            f"{entry['seconds']:.1f} |"
        )
    lines += ["", "Attacks as run:", ""]
    lines += [f"- {name}: {description}" for name, description in descriptions.items()]
    lines += [
        "",
        "An attack's accuracy is measured on its adversarial examples; worst case and union also "
        "count examples misclassified without attack.",
        "",
        "## Alarms",
        "",
    ]
    lines += [f"- {alarm}" for alarm in report["alarms"]] or ["None."]
    if "reference" in report:
        reference = report["reference"]
        lines += [
            "",
            f"## Reference: {reference['library']} {reference['version']}",
            "",
            "| reference attack | class | parameters | accuracy (%) | ours | ours (%) |",
            "|---|---|---|---|---|---|",
        ]
        for name, entry in reference["attacks"].items():
            parameters = ", ".join(f"{k}={v}" for k, v in entry["parameters"].items())
            lines.append(
                f"| {name} | {entry['class']} | {parameters} | {100 * entry['accuracy']:.2f} | "
                f"{entry['ours']} | {100 * entry['ours_accuracy']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _nested(tree: dict, keys) -> object:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def write_summaries(report: dict, curves: dict, logdir: str, step: int = 0) -> None:
    """TensorBoard scalars of a report: accuracies, worst cases, curves and the alarm count."""
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        tf.summary.scalar(CLEAN_ACCURACY_METRIC, report["clean_accuracy"], step=step)
        for name, entry in report["attacks"].items():
            tf.summary.scalar(f"eval/{name}/accuracy", entry["accuracy"], step=step)
        for norm, value in report["worst_case"].items():
            tf.summary.scalar(f"eval/worst_case_{norm}", value, step=step)
        tf.summary.scalar(UNION_ACCURACY_METRIC, report["union_accuracy"], step=step)
        tf.summary.scalar(NUM_ALARMS_METRIC, len(report["alarms"]), step=step)
        for norm, curve in curves.items():
            # The step of a curve point is its epsilon in percent of the nominal epsilon.
            for fraction, accuracy in zip(curve["fractions"], curve["accuracies"]):
                tf.summary.scalar(
                    f"eval/accuracy_vs_epsilon_{norm}", accuracy, step=round(100 * fraction)
                )
    writer.flush()
    writer.close()
