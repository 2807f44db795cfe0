"""Numbers a reader can trust: confidence intervals, epsilons as written, AutoAttack's standard list.

Pure functions over the report dict of `runner.summarise` (no TensorFlow):
  * `wilson_interval`: the 95% Wilson score interval of an accuracy measured on n examples. Wilson
    rather than Clopper-Pearson: it is close to nominal coverage where Clopper-Pearson is
    conservative, and stays inside [0, 1] with a sensible width at 0% or 100%;
  * `epsilon_text`: 8/255 when an epsilon is a ratio of 255, its decimal form otherwise;
  * `standard_autoattack`: the per-example worst case over exactly the standard list of a norm,
    with the budgets that ran and whether they are the standard ones;
  * `epsilon_mixup_alarm`: training and evaluation epsilons within 2% of each other but not equal
    (the 0.031 vs 8/255 mix-up).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

# The two-sided 95% normal quantile.
Z_95 = 1.959963984540054
INTERVAL_METHOD = "Wilson score, 95%"
# Epsilons this close to k/255 (relative) are written as k/255.
_RATIO_TOLERANCE = 1e-6
# Epsilons closer than this (relative) but not equal are the mix-up the alarm reports: 2%, since
# 0.031 and 8/255 (0.03137) themselves differ by 1.2%.
MIXUP_TOLERANCE = 0.02


def wilson_interval(accuracy: float, n: int, z: float = Z_95) -> list[float]:
    """The Wilson score interval [low, high] of a proportion `accuracy` observed on `n` trials.

    Raises:
      ValueError: n < 1 or accuracy outside [0, 1].
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
    z2 = z * z
    centre = (accuracy + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # The interval contains the estimate exactly (rounding can leave 1e-17 above 0 at 0%).
    return [min(max(0.0, centre - half), accuracy), max(min(1.0, centre + half), accuracy)]


def epsilon_text(epsilon: float) -> str:
    """`8/255` when epsilon is k/255 for an integer 0 < k < 255, else the number (`0.1`, `1`)."""
    k = epsilon * 255.0
    if 0 < round(k) < 255 and abs(k - round(k)) <= _RATIO_TOLERANCE * k:
        return f"{round(k)}/255"
    return f"{epsilon:g}"


def standard_autoattack(
    clean: np.ndarray,
    masks: Mapping[str, np.ndarray],
    entries: Mapping[str, dict],
    standard: Mapping[str, Sequence[str]],
    *,
    iterations: int,
    square_queries: int,
    standard_iterations: int,
    standard_queries: int,
) -> tuple[dict, dict]:
    """AutoAttack-standard accuracy per norm and what ran for it.

    Returns:
      ({norm: accuracy or None}, {norm: {"attacks", "missing", "iterations", "square_queries",
      "standard"}}): the accuracy is the per-example worst case over x and exactly the standard
      attacks of that norm, None when one of them did not run (named in `missing`). `standard`
      is False when a budget is below AutoAttack's (the number is then weaker than the standard).
    """
    accuracies, budgets = {}, {}
    for norm, names in standard.items():
        missing = [name for name in names if name not in masks]
        robust = clean.copy()
        for name in names:
            if name in masks:
                robust &= masks[name]
        ran_square = any(entries[name].get("queries") for name in names if name in entries)
        below = iterations < standard_iterations or (
            ran_square and square_queries < standard_queries
        )
        accuracies[norm] = None if missing else float(np.mean(robust))
        budgets[norm] = {
            "attacks": list(names),
            "missing": missing,
            "iterations": iterations,
            "square_queries": square_queries if ran_square else None,
            "standard": not missing and not below,
        }
    return accuracies, budgets


def add_intervals(report: dict) -> None:
    """Adds `interval` to each attack entry and the top-level `intervals` (in place)."""
    n = report["num_examples"]
    for entry in report["attacks"].values():
        entry["num_examples"] = n
        entry["interval"] = wilson_interval(entry["accuracy"], n)
    intervals = {
        "method": INTERVAL_METHOD,
        "clean_accuracy": wilson_interval(report["clean_accuracy"], n),
        "worst_case": {k: wilson_interval(v, n) for k, v in report["worst_case"].items()},
        "union_accuracy": wilson_interval(report["union_accuracy"], n),
    }
    if "autoattack_standard" in report:
        intervals["autoattack_standard"] = {
            k: None if v is None else wilson_interval(v, n)
            for k, v in report["autoattack_standard"].items()
        }
    report["intervals"] = intervals


def percent_with_interval(accuracy: float, interval: Sequence[float]) -> str:
    """`81.20 [78.10, 84.00]`: an accuracy and its interval, in percent."""
    low, high = interval
    return f"{100 * accuracy:.2f} [{100 * low:.2f}, {100 * high:.2f}]"


def epsilon_mixup_alarm(
    training: Mapping[str, float], evaluation: Mapping[str, float]
) -> list[str]:
    """An alarm per norm whose training and evaluation epsilons differ by < 2% but are not equal."""
    found = []
    for norm, trained in training.items():
        evaluated = evaluation.get(norm)
        if evaluated is None or trained <= 0 or trained == evaluated:
            continue
        if abs(trained - evaluated) < MIXUP_TOLERANCE * max(trained, evaluated):
            found.append(
                f"{norm}: trained at epsilon {trained:g} ({epsilon_text(trained)}) but evaluated "
                f"at {evaluated:g} ({epsilon_text(evaluated)}): within 2% but not equal (the "
                "0.031 vs 8/255 mix-up?); state which one the numbers are for"
            )
    return found
