"""The attack suite of the evaluation: every attack's name, norm, budget and run function.

Names in report order (l_inf, then l_2), the named lists of `--eval_attacks`, the random stream
of each attack, and `attack_suite`, which builds every attack at the given budgets.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from generalist_tf import attacks, defaults
from generalist_tf.attacks import fab
from generalist_tf.evaluation.attack_names import (  # noqa: F401 (`suite.<name>` for callers)
    ATTACK_NAMES,
    ATTACK_SETS,
    DEFAULT_ATTACKS,
    LATER_ATTACKS,
    NON_GRADIENT_ATTACKS,
    REFERENCES,
    STANDARD_ATTACKS,
    STANDARD_ITERATIONS,
    STANDARD_SQUARE_QUERIES,
    STREAM_ORDER,
    TARGETED_DLR_ATTACKS,
    TRANSFER_ATTACK,
    expand_attacks,
)

# Step sizes of PGD, CW and MIM as a fraction of epsilon (2/255 for 8/255, the usual protocol).
STEP_FRACTION = defaults.STEP_FRACTION
CW_STEPS = 30
MIM_STEPS = 20
# Tolerances of the threat-model check on every adversarial batch (float32 rounding).
BALL_TOLERANCE = 1e-5
# Accuracy-vs-epsilon curve: PGD-20 at these multiples of the nominal epsilon.
EPSILON_FRACTIONS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


@dataclasses.dataclass(frozen=True)
class SuiteAttack:
    """One attack of the suite.

    `run(model, x, y, epsilon, seed)` returns adversarial images for one batch. It is called
    `repeats` times with different seeds and an example is robust only if it survives all of
    them; `restarts` is what the report states (APGD restarts internally, so repeats 1).
    """

    name: str
    norm: str
    num_steps: int
    restarts: int
    repeats: int
    run: Callable
    description: str


def _pgd_attack(name, norm, num_steps, restarts, jit_compile, loss="ce", description=""):
    """PGD from a random start (`attacks.pgd`), `restarts` independent times."""

    def run(model, x, y, epsilon, seed):
        return attacks.pgd(
            model,
            x,
            y,
            norm=norm,
            epsilon=epsilon,
            step_size=STEP_FRACTION * epsilon if epsilon > 0 else 1.0,
            num_steps=num_steps,
            random_start=True,
            loss=loss,
            jit_compile=jit_compile,
            seed=tf.constant([seed, 0], tf.int64),
        )

    description = description or (
        f"PGD-{num_steps} ({loss.upper()}), random start, step {STEP_FRACTION:g} x epsilon"
    )
    return SuiteAttack(name, norm, num_steps, restarts, restarts, run, description)


def attack_suite(
    *,
    restarts: int = 1,
    apgd_steps: int = defaults.EVAL_APGD_STEPS,
    square_queries: int = 5000,
    jit_compile="auto",
) -> dict[str, SuiteAttack]:
    """The attacks of `ATTACK_NAMES` and `TRANSFER_ATTACK` with their budgets.

    Epsilon is given at run time. Step sizes are `STEP_FRACTION` x epsilon for PGD, CW and MIM;
    APGD sets its own (2 x epsilon, then halved at its checkpoints).
    """

    def fgsm(model, x, y, epsilon, seed):
        del seed
        return attacks.fgsm(model, x, y, epsilon=epsilon, jit_compile=jit_compile)

    def mim(model, x, y, epsilon, seed):
        del seed
        return attacks.mim(
            model,
            x,
            y,
            epsilon=epsilon,
            step_size=STEP_FRACTION * epsilon if epsilon > 0 else 1.0,
            num_steps=MIM_STEPS,
            jit_compile=jit_compile,
        )

    def bound(function, **fixed):
        """`function` as a `SuiteAttack.run`, with this suite's budgets and compile policy."""

        def run(model, x, y, epsilon, seed):
            return function(
                model, x, y, epsilon=epsilon, seed=seed, jit_compile=jit_compile, **fixed
            )

        return run

    def apgd(norm, loss):
        return bound(attacks.apgd, norm=norm, num_steps=apgd_steps, loss=loss, restarts=restarts)

    square = bound(attacks.square, num_queries=square_queries)
    square_2 = bound(attacks.square_l2, num_queries=square_queries)

    def fab_t(norm):
        return bound(fab.fab_t, norm=norm, num_steps=apgd_steps, restarts=restarts)

    def apgd_t(norm):
        return SuiteAttack(
            f"apgd_t_{norm}",
            norm,
            apgd_steps,
            restarts,
            1,
            apgd(norm, "dlr_targeted"),
            f"APGD-T (targeted DLR), up to {targets} target classes x {apgd_steps} iterations "
            f"per restart",
        )

    def fab_attack(norm):
        return SuiteAttack(
            f"fab_t_{norm}",
            norm,
            apgd_steps,
            restarts,
            1,
            fab_t(norm),
            f"FAB-T (minimum-norm, targeted), up to {fab.TARGET_CLASSES} target classes x "
            f"{apgd_steps} iterations per restart, alpha_max {fab.ALPHA_MAX:g}, eta {fab.ETA:g}, "
            f"beta {fab.BETA:g}; adversarial if its distance is within epsilon",
        )

    targets = attacks.APGD_TARGET_CLASSES
    suite = [
        SuiteAttack("fgsm_linf", "linf", 1, 1, 1, fgsm, "FGSM, one step of epsilon from x"),
        _pgd_attack("pgd20_linf", "linf", 20, restarts, jit_compile),
        _pgd_attack("pgd100_linf", "linf", 100, restarts, jit_compile),
        _pgd_attack(
            "cw_linf",
            "linf",
            CW_STEPS,
            restarts,
            jit_compile,
            loss="cw",
            description=(
                f"CW-inf: PGD-{CW_STEPS} on the CW margin (kappa {attacks.CW_KAPPA:g}), random "
                f"start, step {STEP_FRACTION:g} x epsilon"
            ),
        ),
        SuiteAttack(
            "mim_linf",
            "linf",
            MIM_STEPS,
            1,
            1,
            mim,
            f"MIM-{MIM_STEPS}, decay 1.0, step {STEP_FRACTION:g} x epsilon, from x",
        ),
        SuiteAttack(
            "apgd_ce_linf",
            "linf",
            apgd_steps,
            restarts,
            1,
            apgd("linf", "ce"),
            f"APGD-CE, {apgd_steps} iterations per restart",
        ),
        apgd_t("linf"),
        fab_attack("linf"),
        SuiteAttack(
            "square_linf",
            "linf",
            square_queries,
            1,
            1,
            square,
            f"Square Attack, {square_queries} queries (steps = queries), p_init 0.8",
        ),
        _pgd_attack("pgd20_l2", "l2", 20, restarts, jit_compile),
        _pgd_attack("pgd100_l2", "l2", 100, restarts, jit_compile),
        SuiteAttack(
            "apgd_ce_l2",
            "l2",
            apgd_steps,
            restarts,
            1,
            apgd("l2", "ce"),
            f"APGD-CE, {apgd_steps} iterations per restart",
        ),
        apgd_t("l2"),
        fab_attack("l2"),
        SuiteAttack(
            "square_l2",
            "l2",
            square_queries,
            1,
            1,
            square_2,
            f"Square Attack (l_2), {square_queries} queries (steps = queries), p_init 0.8",
        ),
    ]
    suite.append(
        _pgd_attack(
            TRANSFER_ATTACK,
            "linf",
            20,
            restarts,
            jit_compile,
            description=(
                f"PGD-20 (CE) on the surrogate model, random start, step {STEP_FRACTION:g} x "
                f"epsilon, evaluated on the model"
            ),
        )
    )
    return {attack.name: attack for attack in suite}


def selected_attacks(
    suite, names, *, num_classes: int, transfer: bool
) -> list[tuple[str, SuiteAttack]]:
    """The attacks to run, in `ATTACK_NAMES` order, then the transfer attack if asked."""
    left_out = [name for name in TARGETED_DLR_ATTACKS if name in names and num_classes < 4]
    for name in left_out:
        logging.warning("%s left out: targeted DLR needs >= 4 classes, got %d", name, num_classes)
    runs = [(name, suite[name]) for name in ATTACK_NAMES if name in names and name not in left_out]
    if transfer:
        runs.append((TRANSFER_ATTACK, suite[TRANSFER_ATTACK]))
    return runs


def check_threat_model(name, x_adv, x, norm, epsilon):
    """Raises RuntimeError if an attack left the ball or the pixel box (it would inflate success)."""
    delta = (x_adv - x).reshape(len(x), -1)
    if norm == "linf":
        distance = np.max(np.abs(delta), axis=1)
    else:
        distance = np.sqrt(np.sum(np.square(delta.astype(np.float64)), axis=1))
    if distance.max(initial=0.0) > epsilon * (1 + BALL_TOLERANCE) + BALL_TOLERANCE:
        raise RuntimeError(
            f"{name} left the {norm} ball of radius {epsilon}: distance {distance.max()}"
        )
    if x_adv.min(initial=0.0) < 0.0 or x_adv.max(initial=1.0) > 1.0 or not np.isfinite(x_adv).all():
        raise RuntimeError(f"{name} left the [0, 1] pixel box or produced non-finite pixels")


def check_arguments(
    epsilon_linf,
    epsilon_l2,
    batch_size,
    restarts,
    apgd_steps,
    square_queries,
    names,
    reference,
    epsilon_fractions,
):
    """Raises ValueError, naming the argument and its value, for an invalid evaluation."""
    for flag, value in (("epsilon_linf", epsilon_linf), ("epsilon_l2", epsilon_l2)):
        if not value > 0:
            raise ValueError(f"{flag} must be > 0, got {value}")
    for flag, value in (
        ("batch_size", batch_size),
        ("restarts", restarts),
        ("apgd_steps", apgd_steps),
        ("square_queries", square_queries),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{flag} must be an integer >= 1, got {value!r}")
    unknown = [name for name in names if name not in ATTACK_NAMES]
    if unknown or not names:
        raise ValueError(f"attacks must be a non-empty subset of {ATTACK_NAMES}, got {names}")
    if reference is not None and reference not in REFERENCES:
        raise ValueError(f"reference must be None or one of {REFERENCES}, got {reference!r}")
    fractions = list(epsilon_fractions)
    if fractions != sorted(fractions) or any(not f >= 0 for f in fractions):
        raise ValueError(f"epsilon_fractions must be increasing and >= 0, got {epsilon_fractions}")


def predict_labels(model, x: np.ndarray) -> np.ndarray:
    """The labels `model` predicts for the images `x` (inference mode)."""
    return np.argmax(np.asarray(model(tf.constant(x), training=False)), axis=-1)
