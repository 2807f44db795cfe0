"""`MODEL_CARD.md` of an export: what the network is, how it was trained, selected and evaluated.

Written by training into every export directory (`export/`, `export_last/`), atomically, after
the export itself; the card of `export/` is written again with the attack suite's results once
the final evaluation ran. The card states the exact command that reproduces the run, and a
RobustBench-style claim block (threat model, epsilon, clean and AutoAttack-standard accuracy,
number of examples), which says "not evaluated" rather than borrowing a number it does not have.
"""

from __future__ import annotations

import os
import shlex
import sys

from generalist_tf import files, names
from generalist_tf.evaluation import reporting

CARD = "MODEL_CARD.md"


def _percent(value: float | None, interval=None) -> str:
    if value is None:
        return "not evaluated"
    if interval is None:
        return f"{100 * value:.2f}%"
    return reporting.percent_with_interval(value, interval) + "%"


def _attack_line(name: str, attack) -> str:
    return (
        f"  - {name}: {attack.norm}, epsilon {reporting.epsilon_text(attack.epsilon)}, step "
        f"{attack.step_size:g}, {attack.num_steps} steps"
        + (", random start" if attack.random_start else "")
    )


def _claims(report: dict | None) -> list[str]:
    lines = ["## Claim (RobustBench style)", ""]
    if report is None:
        return lines + [
            "Not evaluated by the attack suite: run `python -m generalist_tf.main --mode=eval "
            "--model=<this directory> --workdir=<new directory> --eval_attacks=standard`.",
            "",
        ]
    n = report["num_examples"]
    subset = report.get("subset")
    of = f" (a subset of {subset['of']})" if subset else ""
    intervals = report.get("intervals", {})
    lines += [
        "| threat model | epsilon | clean | AutoAttack standard | examples |",
        "|---|---|---|---|---|",
    ]
    for norm, epsilon in report["epsilons"].items():
        standard = (report.get("autoattack_standard") or {}).get(norm)
        budget = (report.get("autoattack_budgets") or {}).get(norm, {})
        shown = _percent(standard, (intervals.get("autoattack_standard") or {}).get(norm))
        if standard is not None and not budget.get("standard"):
            shown += " (below the standard budgets)"
        if standard is None and budget.get("missing"):
            shown = f"not run (missing {', '.join(budget['missing'])})"
        lines.append(
            f"| {norm} | {epsilon['text']} | "
            f"{_percent(report['clean_accuracy'], intervals.get('clean_accuracy'))} | "
            f"{shown} | {n}{of} |"
        )
    return lines + [""]


def render(
    config,
    results: dict,
    *,
    export_name: str,
    splits: dict[str, int],
    report: dict | None = None,
    report_table: str | None = None,
    argv: list[str] | None = None,
) -> str:
    """The card's markdown.

    Args:
      config: the run's `Config`.
      results: the training results (`train`'s results.json content).
      export_name: `export` (the selected G) or `export_last` (G after the last epoch).
      splits: examples per split: `train`, `validation`, `test`.
      report: the attack suite's report on this export, if it ran.
      report_table: its markdown (`report.md`).
      argv: the command line of the run (default `sys.argv`; its program name is replaced by
        `python -m generalist_tf.main`).
    """
    argv = sys.argv if argv is None else argv
    selected = export_name == "export"
    which = (
        f"G of epoch {results['best_epoch']}, selected by the {results['selection']}"
        if selected
        else f"G after the last epoch ({config.optimisation.epochs})"
    )
    kwargs = ", ".join(f"{k}={v}" for k, v in sorted(config.model.model_kwargs.items()))
    trained = names.trained_norms(config.algorithm.learners)
    lines = [
        f"# Model card: {config.model.model} on {config.data.dataset} ({config.algorithm.variant})",
        "",
        f"This directory holds {which}, as a float32 SavedModel (`serving_default`: images "
        f"in [0, 1], NHWC -> logits); the same network for `keras.models.load_model` is "
        f"`../{export_name}.keras`.",
        "",
        "## Data",
        "",
        f"- dataset: {config.data.dataset}; training {splits['train']} examples, validation "
        f"{splits['validation']} (carved from training, never from test), test {splits['test']}",
        "",
        "## Network and training",
        "",
        f"- architecture: {config.model.model}" + (f" ({kwargs})" if kwargs else ""),
        f"- variant: {config.algorithm.variant}; learners: {', '.join(config.algorithm.learners)}",
        f"- epochs: {config.optimisation.epochs}; batch {config.optimisation.batch_size}; learning rate "
        f"{config.optimisation.learning_rate}; momentum {config.optimisation.momentum:g}",
        f"- mixing: {', '.join(f'{k}: {v}' for k, v in config.algorithm.mixing.items()) or 'none'}",
        f"- communication: {config.algorithm.communication or 'none'}",
        f"- EMA decay: {config.algorithm.ema_decay:g}; seed: {config.runtime.seed}; precision: {config.runtime.precision}",
        f"- selection: {results['selection']} (epoch {results['best_epoch']})",
        "- training attacks:",
    ]
    budgets = {"linf": config.attacks.linf_attack, "l2": config.attacks.l2_attack}
    lines += [_attack_line(norm, budgets[norm]) for norm in trained] or [
        "  - none (clean training)"
    ]
    lines += ["", "## Test accuracy (the training's table)", "", "```", results["table"], "```", ""]
    lines += _claims(report)
    if report is not None:
        lines += ["## Attack suite", ""]
        lines += [report_table.split("\n", 2)[2].strip() if report_table else ""]
        lines += [""]
    lines += [
        "## Reproduce",
        "",
        "The run's complete flags are in its workdir's `flags.cfg`:",
        "",
        "```",
        "python -m generalist_tf.main --flagfile="
        f"{shlex.quote(os.path.join(config.runtime.workdir, 'flags.cfg'))} --workdir=<new directory>",
        "```",
        "",
        f"Invoked as: `python -m generalist_tf.main {' '.join(shlex.quote(a) for a in argv[1:])}`",
        "",
    ]
    return "\n".join(lines)


def write(export_dir: str, text: str) -> None:
    """Writes `export_dir/MODEL_CARD.md` atomically (a reader never sees half a card)."""
    files.write_text(os.path.join(export_dir, CARD), text)
