"""The robustness evaluation suite: every attack of the protocol, a report, plots and alarms.

`evaluate_model` runs the attacks named in `ATTACK_NAMES` (or a subset) on the same examples and
writes, under its work directory:
  * `report.json`: clean accuracy, per-attack accuracy and budget, per-norm worst case and the
    union over all attacks (both from per-example masks), the gradient-masking alarms, and,
    when asked, a third-party reference run;
  * `report.md`: the same as a paper-style table;
  * `accuracy_vs_epsilon_<norm>.png` (+ `accuracy_vs_epsilon.json`): PGD-20 accuracy at
    `EPSILON_FRACTIONS` times the nominal epsilon;
  * TensorBoard scalars under `eval/`.

Accuracy conventions: an attack's accuracy is the accuracy on its adversarial examples (with
restarts, an example counts as correct only if every restart failed); the worst case and the
union also count an example misclassified without attack as not robust, since x lies in every
ball.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from generalist_tf import (
    alarms,
    distribute,
    eval_progress,
    fab,
    files,
    reporting,
    robust_attacks,
    square_l2,
)
from generalist_tf import attacks as pgd_attacks

NORMS = ("linf", "l2")
# Every attack of the suite, in report order: l_inf, then l_2.
ATTACK_NAMES = (
    "fgsm_linf",
    "pgd20_linf",
    "pgd100_linf",
    "cw_linf",
    "mim_linf",
    "apgd_ce_linf",
    "apgd_t_linf",
    "fab_t_linf",
    "square_linf",
    "pgd20_l2",
    "pgd100_l2",
    "apgd_ce_l2",
    "apgd_t_l2",
    "fab_t_l2",
    "square_l2",
)
# Attacks added after the first suite (FAB-T, the l_2 targeted and black-box attacks), in the
# order they were added. They run only when asked for, so that published numbers and the guarded
# reproduction rows keep their meaning: the default is every other attack.
LATER_ATTACKS = ("apgd_t_l2", "fab_t_linf", "fab_t_l2", "square_l2")
DEFAULT_ATTACKS = tuple(name for name in ATTACK_NAMES if name not in LATER_ATTACKS)
# Added when a surrogate model is given: PGD-20 on the surrogate, evaluated on the model.
TRANSFER_ATTACK = "transfer_pgd20_linf"
# AutoAttack's standard version (Croce & Hein 2020; RobustBench's rule), per norm: APGD-CE,
# APGD-T (9 targets), FAB-T (9 targets), Square (5,000 queries); 100 iterations each.
STANDARD_ATTACKS = {
    "linf": ("apgd_ce_linf", "apgd_t_linf", "fab_t_linf", "square_linf"),
    "l2": ("apgd_ce_l2", "apgd_t_l2", "fab_t_l2", "square_l2"),
}
STANDARD_ITERATIONS = 100
STANDARD_SQUARE_QUERIES = 5000
# Named lists for `--eval_attacks` (alone): the default, the standard list of both norms, all.
ATTACK_SETS = {
    "default": DEFAULT_ATTACKS,
    "standard": tuple(name for names in STANDARD_ATTACKS.values() for name in names),
    "all": ATTACK_NAMES,
}
# The random stream of an attack is its position here: append only, so that adding an attack
# never changes another one's numbers.
STREAM_ORDER = DEFAULT_ATTACKS + (TRANSFER_ATTACK,) + LATER_ATTACKS
# Black-box and transfer attacks; every other attack is a white-box gradient attack.
NON_GRADIENT_ATTACKS = ("square_linf", "square_l2", TRANSFER_ATTACK)
# Targeted DLR needs at least 4 classes; these are left out (with a warning) below that.
TARGETED_DLR_ATTACKS = ("apgd_t_linf", "apgd_t_l2")
# Step sizes of PGD, CW and MIM as a fraction of epsilon (2/255 for 8/255, the usual protocol).
STEP_FRACTION = 0.25
CW_STEPS = 30
MIM_STEPS = 20
# Accuracy-vs-epsilon curve: PGD-20 at these multiples of the nominal epsilon.
EPSILON_FRACTIONS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
# Gradient-health and unbounded-attack alarms run on at most this many examples.
ALARM_EXAMPLES = 256
# Tolerances of the threat-model check on every adversarial batch (float32 rounding).
BALL_TOLERANCE = 1e-5
REFERENCES = ("art",)

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


@dataclasses.dataclass(frozen=True)
class Attack:
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
        return pgd_attacks.pgd(
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
    return Attack(name, norm, num_steps, restarts, restarts, run, description)


def attack_suite(
    *, restarts: int = 1, apgd_steps: int = 100, square_queries: int = 5000, jit_compile="auto"
) -> dict[str, Attack]:
    """The attacks of `ATTACK_NAMES` and `TRANSFER_ATTACK` with their budgets.

    Epsilon is given at run time. Step sizes are `STEP_FRACTION` x epsilon for PGD, CW and MIM;
    APGD sets its own (2 x epsilon, then halved at its checkpoints).
    """

    def fgsm(model, x, y, epsilon, seed):
        del seed
        return robust_attacks.fgsm(model, x, y, epsilon=epsilon, jit_compile=jit_compile)

    def mim(model, x, y, epsilon, seed):
        del seed
        return robust_attacks.mim(
            model,
            x,
            y,
            epsilon=epsilon,
            step_size=STEP_FRACTION * epsilon if epsilon > 0 else 1.0,
            num_steps=MIM_STEPS,
            jit_compile=jit_compile,
        )

    def bound(function, **fixed):
        """`function` as an `Attack.run`, with this suite's budgets and compile policy."""

        def run(model, x, y, epsilon, seed):
            return function(
                model, x, y, epsilon=epsilon, seed=seed, jit_compile=jit_compile, **fixed
            )

        return run

    def apgd(norm, loss):
        return bound(
            robust_attacks.apgd, norm=norm, num_steps=apgd_steps, loss=loss, restarts=restarts
        )

    square = bound(robust_attacks.square, num_queries=square_queries)
    square_2 = bound(square_l2.square_l2, num_queries=square_queries)

    def fab_t(norm):
        return bound(fab.fab_t, norm=norm, num_steps=apgd_steps, restarts=restarts)

    def apgd_t(norm):
        return Attack(
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
        return Attack(
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

    targets = robust_attacks.APGD_TARGET_CLASSES
    suite = [
        Attack("fgsm_linf", "linf", 1, 1, 1, fgsm, "FGSM, one step of epsilon from x"),
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
                f"CW-inf: PGD-{CW_STEPS} on the CW margin (kappa {pgd_attacks.CW_KAPPA:g}), random "
                f"start, step {STEP_FRACTION:g} x epsilon"
            ),
        ),
        Attack(
            "mim_linf",
            "linf",
            MIM_STEPS,
            1,
            1,
            mim,
            f"MIM-{MIM_STEPS}, decay 1.0, step {STEP_FRACTION:g} x epsilon, from x",
        ),
        Attack(
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
        Attack(
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
        Attack(
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
        Attack(
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


def _to_float_images(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32)


def _predict(model, x: np.ndarray) -> np.ndarray:
    return np.argmax(np.asarray(model(tf.constant(x), training=False)), axis=-1)


def _check_threat_model(name, x_adv, x, norm, epsilon):
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


def _seed_stream(attack_index: int, batch_index: int, repeat: int) -> int:
    """A distinct, reproducible random stream per (attack, batch, restart)."""
    return (attack_index * 100_003 + batch_index) * 1_009 + repeat


def run_attack(
    model,
    x,
    y,
    attack: Attack,
    *,
    epsilon: float,
    batch_size: int = 256,
    seed: int = 0,
    stream: int = 0,
    progress: keras.utils.Progbar | None = None,
    target_model=None,
    strategy: tf.distribute.Strategy | None = None,
    records: eval_progress.Progress | None = None,
    record_as: str | None = None,
) -> np.ndarray:
    """Per-example correctness of the model under one attack, batch by batch.

    Args:
      model: the model the attack differentiates / queries (a `robust_attacks.Classifier`).
      x, y: float32 images in [0, 1] and int labels (numpy).
      attack: the attack and its budget.
      epsilon: the radius of the attack's norm ball.
      batch_size: examples per attack call.
      seed: the evaluation seed.
      stream: distinguishes attacks that share `seed` (the attack's index in the suite).
      progress: a progress bar advanced by one per batch.
      target_model: the model classified on the adversarial examples when it is not `model`
        (transfer attacks).
      strategy: spreads the batches over its replicas (`distribute.map_batches`); the same
        masks as on one device.
      records: where finished batches are kept and found again (`eval_progress`), under the
        name `record_as` (default: the attack's name).

    Returns:
      Boolean array: the example is classified correctly under every repeat of the attack.

    Raises:
      RuntimeError: an adversarial example outside the ball or the pixel box.
    """
    target_model = model if target_model is None else target_model

    record_as = record_as or attack.name

    def one_batch(batch_index):
        recorded = None if records is None else records.batch(record_as, batch_index)
        if recorded is not None:
            return tf.constant(recorded)
        xb, yb = _batch(x, y, batch_index, batch_size)
        correct = np.ones(len(xb), bool)
        for repeat in range(attack.repeats):
            batch_seed = seed * 1_000_003 + _seed_stream(stream, batch_index, repeat)
            x_adv = np.asarray(attack.run(model, xb, yb, epsilon, batch_seed))
            _check_threat_model(attack.name, x_adv, xb, attack.norm, epsilon)
            correct &= _predict(target_model, x_adv) == yb
        if records is not None:
            records.save_batch(record_as, batch_index, correct)
        return tf.constant(correct)

    masks = distribute.map_batches(
        strategy,
        one_batch,
        _num_batches(len(x), batch_size),
        on_done=None if progress is None else progress.add,
    )
    return np.concatenate(masks).astype(bool)


def _batch(x: np.ndarray, y: np.ndarray, index: int, batch_size: int):
    """Images and labels of batch `index`."""
    start = index * batch_size
    return x[start : start + batch_size], y[start : start + batch_size]


def _num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def _validate(
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


def evaluate_model(
    model,
    x,
    y,
    *,
    workdir: str,
    epsilon_linf: float,
    epsilon_l2: float,
    batch_size: int = 256,
    seed: int = 0,
    restarts: int = 1,
    square_queries: int = 5000,
    apgd_steps: int = 100,
    attacks=None,
    reference: str | None = None,
    surrogate=None,
    jit_compile="auto",
    tensorboard: bool = True,
    epsilon_fractions=EPSILON_FRACTIONS,
    verbose: int = 1,
    strategy: tf.distribute.Strategy | None = None,
    population: int | None = None,
    training_epsilons: dict[str, float] | None = None,
) -> dict:
    """Evaluates a classifier under the attack suite and writes the report, plots and summaries.

    Args:
      model: a Keras model or a callable `images -> logits` (e.g. `export.load_serving(path)`).
      x: test images, uint8 in [0, 255] or float in [0, 1], (N, H, W, C).
      y: int labels, (N,).
      workdir: output directory (created).
      epsilon_linf, epsilon_l2: the nominal radii of the two threat models.
      batch_size: examples per attack call.
      seed: every random start and random search is a pure function of it.
      restarts: random restarts of PGD, CW and APGD (an example counts as robust only if it
        survives all of them).
      square_queries: queries per example of the Square Attack.
      apgd_steps: iterations of each APGD run.
      attacks: names from `ATTACK_NAMES` to run, or one name of `ATTACK_SETS` (None:
        `DEFAULT_ATTACKS`). APGD-T is left out, with a warning, for fewer than 4 classes (its DLR
        loss is undefined there).
      reference: None, or "art" to cross-check PGD-20 and APGD-CE with the Adversarial
        Robustness Toolbox (`pip install -r requirements-art.txt`).
      surrogate: optional model (same input) for a transfer attack, `TRANSFER_ATTACK`.
      jit_compile: compile policy of the attacks (see `attacks.resolve_jit_compile`).
      tensorboard: write TensorBoard scalars under `workdir/eval`.
      epsilon_fractions: multiples of each nominal epsilon for the accuracy-vs-epsilon curves,
        increasing (their last point feeds the large-epsilon alarm); () skips the curves.
      verbose: 1 shows a progress bar over attacks and batches, 0 is silent.
      strategy: the training strategy; a `MirroredStrategy` of several replicas evaluates one
        batch per replica at a time (`distribute.map_batches`), with the same numbers as one
        device. The alarms and the ART reference run on the default device.
      population: the size of the split `x` was drawn from, when `x` is a subset of it (the
        report's headline then says so).
      training_epsilons: {norm: epsilon} the model was trained at, for the alarm on
        near-but-unequal epsilons (`reporting.epsilon_mixup_alarm`).

    Returns:
      The report, as written to `report.json`: `summarise`'s numbers plus
      `autoattack_standard` and its `autoattack_budgets`, `intervals` (`reporting`), `epsilons`
      (number and k/255 text), `subset` and `alarms`.

    Raises:
      ValueError: an argument outside its range, or mismatched `x` and `y`.
      RuntimeError: an attack produced an example outside its threat model.
    """
    names = expand_attacks(attacks)
    _validate(
        epsilon_linf,
        epsilon_l2,
        batch_size,
        restarts,
        apgd_steps,
        square_queries,
        names,
        reference,
        epsilon_fractions,
    )
    x, y = _to_float_images(x), np.asarray(y).astype(np.int64)
    if x.ndim != 4 or y.shape != (len(x),) or len(x) == 0:
        raise ValueError(f"need images (N, H, W, C) and labels (N,), got {x.shape} and {y.shape}")
    os.makedirs(workdir, exist_ok=True)
    classifier = robust_attacks.as_classifier(model)
    epsilons = {"linf": float(epsilon_linf), "l2": float(epsilon_l2)}
    suite = attack_suite(
        restarts=restarts,
        apgd_steps=apgd_steps,
        square_queries=square_queries,
        jit_compile=jit_compile,
    )
    runs = _selected_attacks(
        suite, names, num_classes=int(classifier(x[:1]).shape[-1]), transfer=surrogate is not None
    )
    surrogate_classifier = None if surrogate is None else robust_attacks.as_classifier(surrogate)
    fractions = tuple(float(f) for f in epsilon_fractions)
    curve_norms = [
        norm for norm in NORMS if fractions and any(attack.norm == norm for _, attack in runs)
    ]
    batches = _num_batches(len(x), batch_size)
    sweeps = sum(1 for f in fractions if f not in (0.0, 1.0)) * len(curve_norms)
    progress = keras.utils.Progbar(
        batches * (len(runs) + sweeps), unit_name="batch", verbose=verbose
    )

    strategy = distribute.eval_strategy(strategy)
    surrogate_logits = None if surrogate_classifier is None else surrogate_classifier(x[:8])
    records = eval_progress.Progress(
        workdir,
        eval_progress.fingerprint(
            np.concatenate(
                [np.asarray(classifier(x[: eval_progress.FINGERPRINT_EXAMPLES]))]
                + ([] if surrogate_logits is None else [np.asarray(surrogate_logits)]),
                axis=-1,
            ),
            x,
            y,
            dict(
                epsilons=epsilons,
                batch_size=batch_size,
                seed=seed,
                restarts=restarts,
                square_queries=square_queries,
                apgd_steps=apgd_steps,
                attacks=[name for name, _ in runs],
                fractions=list(fractions),
            ),
        ),
    )

    def clean_batch(index):
        xb, yb = _batch(x, y, index, batch_size)
        return tf.constant(_predict(classifier, xb) == yb)

    clean = np.concatenate(
        distribute.map_batches(strategy, clean_batch, _num_batches(len(x), batch_size))
    ).astype(bool)
    masks, entries = {}, {}
    for name, attack in runs:
        started = time.perf_counter()
        is_transfer = name == TRANSFER_ATTACK
        masks[name] = run_attack(
            surrogate_classifier if is_transfer else classifier,
            x,
            y,
            attack,
            epsilon=epsilons[attack.norm],
            batch_size=batch_size,
            seed=seed,
            stream=STREAM_ORDER.index(name),
            progress=progress,
            target_model=classifier if is_transfer else None,
            strategy=strategy,
            records=records,
        )
        seconds = records.add_seconds(name, time.perf_counter() - started)
        entries[name] = {
            "accuracy": float(np.mean(masks[name])),
            "norm": attack.norm,
            "epsilon": epsilons[attack.norm],
            "epsilon_text": reporting.epsilon_text(epsilons[attack.norm]),
            "num_steps": attack.num_steps,
            "restarts": attack.restarts,
            "seconds": round(seconds, 3),
        }
        if name.startswith("square_"):
            entries[name]["queries"] = square_queries
        logging.info("%s: accuracy %.4f (%s)", name, entries[name]["accuracy"], attack.description)

    curves = {}
    for norm in curve_norms:
        curves[norm] = _epsilon_curve(
            classifier,
            x,
            y,
            suite[f"pgd20_{norm}"],
            epsilons[norm],
            fractions,
            clean,
            masks,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
            strategy=strategy,
            records=records,
        )

    report = summarise(clean, masks, entries)
    report["autoattack_standard"], report["autoattack_budgets"] = reporting.standard_autoattack(
        clean,
        masks,
        entries,
        STANDARD_ATTACKS,
        iterations=apgd_steps,
        square_queries=square_queries,
        standard_iterations=STANDARD_ITERATIONS,
        standard_queries=STANDARD_SQUARE_QUERIES,
    )
    reporting.add_intervals(report)
    report["epsilons"] = {
        norm: {"value": value, "text": reporting.epsilon_text(value)}
        for norm, value in epsilons.items()
    }
    report["subset"] = (
        {"num_examples": len(x), "of": int(population)}
        if population is not None and population > len(x)
        else None
    )
    report["alarms"] = _alarms(classifier, x, y, report, curves, seed=seed, jit_compile=jit_compile)
    report["alarms"] += reporting.epsilon_mixup_alarm(training_epsilons or {}, epsilons)
    for alarm in report["alarms"]:
        logging.warning("evaluation alarm: %s", alarm)
    if reference == "art":
        report["reference"] = art_reference(
            classifier,
            x,
            y,
            names=[name for name, _ in runs],
            epsilons=epsilons,
            apgd_steps=apgd_steps,
            restarts=restarts,
            batch_size=batch_size,
            seed=seed,
            ours=entries,
        )

    descriptions = {name: attack.description for name, attack in runs}
    write_outputs(workdir, report, curves, descriptions, tensorboard=tensorboard)
    records.finish()
    return report


def run_from_config(config) -> dict:
    """`--mode=eval`: the suite on the test split for the SavedModel at `config.model`.

    Uses `eval_epsilon_linf` / `eval_epsilon_l2`, `eval_batch_size`, `eval_examples` (a subset
    chosen by `seed`), `seed`, `jit_compile` and `verbose`; writes into `config.workdir`.

    Returns:
      The report plus `table`, its markdown (not part of report.json).

    Raises:
      ValueError: the model is not a serving SavedModel, or the dataset cannot be loaded.
    """
    strategy = None
    if not config.tpu and not distribute.is_multi_worker():
        # The local devices, as training would use them (all GPUs, or --num_cpu_replicas).
        strategy = distribute.make_strategy(num_cpu_replicas=config.num_cpu_replicas)
    return run_on_export(config, config.model, config.workdir, strategy=strategy)


def run_on_export(config, path: str, workdir: str, strategy=None) -> dict:
    """The suite of `run_from_config` on the SavedModel at `path`, written into `workdir`.

    With a multi-replica `MirroredStrategy` the model is loaded under its scope (one copy of the
    weights per device) and the batches are spread over the replicas.
    """
    from generalist_tf import data, export, learners

    strategy = distribute.eval_strategy(strategy)
    with contextlib.nullcontext() if strategy is None else strategy.scope():
        model = export.load_serving(path)
    arrays = data.load(config.dataset, data_dir=config.data_dir, require_train=False)
    x, y = arrays.x_test, arrays.y_test
    if config.eval_examples is not None and config.eval_examples < len(x):
        index = np.sort(
            np.random.default_rng(data.EVAL_SUBSET_SEED).permutation(len(x))[: config.eval_examples]
        )
        x, y = x[index], y[index]
    population = len(arrays.x_test)
    # Checked before the first attack: data the model (or the surrogate) cannot take.
    export.check_fits(model, x, y, flag="--model", dataset=config.dataset)
    surrogate = export.load_serving(config.surrogate) if config.surrogate else None
    if surrogate is not None:
        export.check_fits(surrogate, x, y, flag="--surrogate", dataset=config.dataset)
    trained = {norm for task in config.learners for norm in learners.TRAINING_NORMS.get(task, ())}
    budgets = {"linf": config.linf_attack, "l2": config.l2_attack}
    report = evaluate_model(
        model,
        x,
        y,
        workdir=workdir,
        population=population,
        training_epsilons={norm: budgets[norm].epsilon for norm in sorted(trained)},
        epsilon_linf=config.eval_attack.epsilon,
        epsilon_l2=config.eval_epsilon_l2,
        batch_size=config.eval_batch_size,
        seed=config.seed,
        restarts=config.eval_restarts,
        square_queries=config.eval_square_queries,
        apgd_steps=config.eval_apgd_steps,
        attacks=config.eval_attacks,
        reference=config.reference,
        surrogate=surrogate,
        jit_compile=config.jit_compile,
        verbose=min(config.verbose, 1),
        strategy=strategy,
    )
    with open(os.path.join(workdir, REPORT_MD)) as f:
        return dict(report, table=f.read())


def expand_attacks(attacks) -> list[str]:
    """The attack names of `attacks`: None (the default list), a name of `ATTACK_SETS`, or names."""
    if attacks is None:
        return list(DEFAULT_ATTACKS)
    if isinstance(attacks, str):
        attacks = [attacks]
    attacks = list(attacks)
    if len(attacks) == 1 and attacks[0] in ATTACK_SETS:
        return list(ATTACK_SETS[attacks[0]])
    return attacks


def _selected_attacks(
    suite, names, *, num_classes: int, transfer: bool
) -> list[tuple[str, Attack]]:
    """The attacks to run, in `ATTACK_NAMES` order, then the transfer attack if asked."""
    left_out = [name for name in TARGETED_DLR_ATTACKS if name in names and num_classes < 4]
    for name in left_out:
        logging.warning("%s left out: targeted DLR needs >= 4 classes, got %d", name, num_classes)
    runs = [(name, suite[name]) for name in ATTACK_NAMES if name in names and name not in left_out]
    if transfer:
        runs.append((TRANSFER_ATTACK, suite[TRANSFER_ATTACK]))
    return runs


def write_outputs(
    workdir: str, report: dict, curves: dict, descriptions: dict, *, tensorboard: bool = True
) -> None:
    """Writes report.json, report.md, the curves (JSON and PNGs) and the TensorBoard scalars."""
    files.write_json(os.path.join(workdir, REPORT_JSON), report, indent=2)
    files.write_text(os.path.join(workdir, REPORT_MD), markdown_report(report, descriptions))
    files.write_json(os.path.join(workdir, CURVE_JSON), curves, indent=2)
    for norm, curve in curves.items():
        plot_epsilon_curve(curve, norm, os.path.join(workdir, curve_png(norm)))
    if tensorboard:
        write_summaries(report, curves, os.path.join(workdir, SUMMARY_DIR))


def _epsilon_curve(
    model,
    x,
    y,
    pgd20,
    epsilon,
    fractions,
    clean,
    masks,
    *,
    batch_size,
    seed,
    progress,
    strategy,
    records=None,
):
    """PGD-20 accuracy at `fractions` x epsilon; reuses the nominal run when it exists."""
    accuracies = []
    for fraction in fractions:
        if fraction == 0.0:
            mask = clean
        elif fraction == 1.0 and pgd20.name in masks:
            mask = masks[pgd20.name]
        else:
            mask = run_attack(
                model,
                x,
                y,
                pgd20,
                epsilon=fraction * epsilon,
                batch_size=batch_size,
                seed=seed,
                stream=STREAM_ORDER.index(pgd20.name),
                progress=progress if fraction != 1.0 else None,
                strategy=strategy,
                records=records,
                record_as=f"{pgd20.name}_x{fraction:g}",
            )
        accuracies.append(float(np.mean(mask)))
    return {
        "attack": pgd20.name,
        "fractions": list(fractions),
        "epsilons": [fraction * epsilon for fraction in fractions],
        "accuracies": accuracies,
    }


def summarise(clean: np.ndarray, masks: dict, entries: dict) -> dict:
    """The report's numbers; worst case and union from per-example masks, x itself included.

    Args:
      clean: per example, classified correctly without attack.
      masks: attack name -> per example, classified correctly under that attack.
      entries: attack name -> its report entry (at least `norm`).

    Returns:
      The report without alarms: `clean_accuracy`, `num_examples`, `attacks` (= `entries`),
      `worst_case` per norm (robust to x and every attack of that norm; the clean accuracy for a
      norm without attacks) and `union_accuracy` (robust to x and every attack).
    """
    worst_case = {}
    for norm in NORMS:
        robust = clean.copy()
        for name, entry in entries.items():
            if entry["norm"] == norm:
                robust &= masks[name]
        # With no attack of this norm the worst case is over {x} only: the clean accuracy.
        worst_case[norm] = float(np.mean(robust))
    union = clean.copy()
    for mask in masks.values():
        union &= mask
    return {
        "clean_accuracy": float(np.mean(clean)),
        "num_examples": int(len(clean)),
        "attacks": entries,
        "worst_case": worst_case,
        "union_accuracy": float(np.mean(union)),
    }


def _alarms(model, x, y, report, curves, *, seed, jit_compile) -> list[str]:
    """Every gradient-masking check of `alarms` that the attacks run make possible."""
    subset = slice(0, min(len(x), ALARM_EXAMPLES))
    found = alarms.gradient_health(model, x[subset], y[subset], seed=seed)
    found += alarms.unbounded_attack(model, x[subset], y[subset], jit_compile=jit_compile)
    clean = report["clean_accuracy"]
    for norm, curve in curves.items():
        found += alarms.epsilon_curve(
            norm, curve["epsilons"], curve["accuracies"], clean_accuracy=clean
        )
    accuracies = {name: entry["accuracy"] for name, entry in report["attacks"].items()}
    for norm in NORMS:
        whitebox = [
            accuracy
            for name, accuracy in accuracies.items()
            if name not in NON_GRADIENT_ATTACKS and report["attacks"][name]["norm"] == norm
        ]
        if whitebox and f"square_{norm}" in accuracies:
            found += alarms.black_box(norm, min(whitebox), accuracies[f"square_{norm}"])
        if norm == "linf" and whitebox and TRANSFER_ATTACK in accuracies:
            found += alarms.transfer("linf", min(whitebox), accuracies[TRANSFER_ATTACK])
    pairs = []
    for norm in NORMS:
        pairs += [(f"pgd20_{norm}", f"pgd100_{norm}"), (f"pgd20_{norm}", f"apgd_ce_{norm}")]
    found += alarms.more_iterations(accuracies, pairs)
    found += alarms.robust_above_clean(clean, accuracies)
    return found


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


def _new_axes(title: str, xlabel: str, ylabel: str):
    # A Figure with its own Agg canvas: no pyplot, no global backend state, safe in threads.
    figure = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def plot_epsilon_curve(curve: dict, norm: str, path: str) -> None:
    """Writes the accuracy-vs-epsilon curve of one norm as a PNG."""
    figure, axes = _new_axes(
        f"{curve['attack']}: accuracy vs epsilon ({norm})", "epsilon", "accuracy (%)"
    )
    axes.plot(curve["epsilons"], [100 * a for a in curve["accuracies"]], marker="o")
    axes.set_ylim(0, 100)
    with files.staged(path) as staging:
        figure.savefig(staging)


def plot_tradeoff(
    points: dict[str, tuple[float, float]],
    path: str,
    *,
    robust: str = "robust accuracy",
    spread: dict[str, tuple[float, float]] | None = None,
) -> None:
    """Writes a natural-vs-robust accuracy scatter of several models as a PNG.

    Args:
      points: model name -> (clean accuracy, robust accuracy), fractions in [0, 1].
      path: the PNG to write.
      robust: what the robust accuracy is (the x axis label).
      spread: model name -> (clean, robust) standard deviations, fractions; drawn as error bars.
    """
    if not points:
        raise ValueError("plot_tradeoff needs at least one model")
    figure, axes = _new_axes(f"Natural vs {robust}", f"{robust} (%)", "clean accuracy (%)")
    for name, (clean, robust_accuracy) in points.items():
        clean_std, robust_std = (spread or {}).get(name, (0.0, 0.0))
        axes.errorbar(
            [100 * robust_accuracy],
            [100 * clean],
            xerr=[100 * robust_std],
            yerr=[100 * clean_std],
            fmt="o",
            capsize=3,
            label=name,
        )
    # A legend beside the axes, not labels beside the points: close points would print over
    # each other, and a legend inside the axes would hide some.
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    with files.staged(path) as staging:
        figure.savefig(staging, bbox_inches="tight")


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


# Our attacks that the reference cross-check mirrors, with ART's class and norm for each.
_ART_MIRRORS = {
    "pgd20_linf": ("ProjectedGradientDescent", "inf"),
    "pgd20_l2": ("ProjectedGradientDescent", 2),
    "apgd_ce_linf": ("AutoProjectedGradientDescent", "inf"),
    "apgd_ce_l2": ("AutoProjectedGradientDescent", 2),
}


def _import_art():
    """The `art` package.

    Raises:
      RuntimeError: ART is not installed (with the command that installs it).
    """
    try:
        import art
        import art.attacks.evasion
        import art.estimators.classification
    except ImportError as e:
        raise RuntimeError(
            "reference='art' needs the Adversarial Robustness Toolbox: "
            f"pip install -r requirements-art.txt ({e})"
        ) from None
    return art


def art_estimator(model, x):
    """`model` (images in [0, 1] -> logits) as ART's `TensorFlowV2Classifier`, shaped after `x`:
    the pixel box as its clip values, cross-entropy on logits as its loss.

    Raises:
      RuntimeError: ART is not installed (with the command that installs it).
    """
    return _import_art().estimators.classification.TensorFlowV2Classifier(
        model=model,
        nb_classes=int(model(x[:1]).shape[-1]),
        input_shape=tuple(x.shape[1:]),
        loss_object=keras.losses.CategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )


def art_reference(
    model, x, y, *, names, epsilons, apgd_steps, restarts, batch_size, seed, ours
) -> dict:
    """Runs ART's PGD and APGD-CE on the same examples, with every parameter explicit.

    ART's defaults differ from the protocol (e.g. eps 0.3, eps_step 0.1, 5 random inits for
    APGD), so each is set: PGD-20 with eps_step epsilon/4 and one random start per restart; APGD
    with eps_step 2 * epsilon (its initial step), `max_iter=apgd_steps`, `nb_random_init=
    restarts` and the cross-entropy loss; always the true labels. ART draws its random starts
    from NumPy's global generator: it is seeded here and restored afterwards.

    Returns:
      {"library", "version", "labels", "attacks": {art_<ours>: {"class", "parameters",
      "accuracy", "ours", "ours_accuracy", "difference", "seconds"}}}.

    Raises:
      RuntimeError: ART is not installed (with the command that installs it).
    """
    art = _import_art()
    evasion = art.attacks.evasion
    classifier = art_estimator(model, x)
    results = {}
    state = np.random.get_state()
    try:
        for name in names:
            if name not in _ART_MIRRORS:
                continue
            class_name, art_norm = _ART_MIRRORS[name]
            epsilon = epsilons["linf" if art_norm == "inf" else "l2"]
            if class_name == "ProjectedGradientDescent":
                parameters = dict(
                    norm=art_norm,
                    eps=epsilon,
                    eps_step=STEP_FRACTION * epsilon,
                    max_iter=20,
                    num_random_init=restarts,
                    targeted=False,
                    batch_size=batch_size,
                )
            else:
                parameters = dict(
                    norm=art_norm,
                    eps=epsilon,
                    eps_step=2.0 * epsilon,
                    max_iter=apgd_steps,
                    nb_random_init=restarts,
                    loss_type="cross_entropy",
                    targeted=False,
                    batch_size=batch_size,
                )
            np.random.seed(seed)
            started = time.perf_counter()
            attack = getattr(evasion, class_name)(classifier, verbose=False, **parameters)
            x_adv = attack.generate(x, y=y).astype(np.float32)
            _check_threat_model(
                f"ART {class_name}", x_adv, x, "linf" if art_norm == "inf" else "l2", epsilon
            )
            accuracy = float(np.mean(_predict(model, x_adv) == y))
            results[f"art_{name}"] = {
                "class": f"art.attacks.evasion.{class_name}",
                "parameters": parameters,
                "accuracy": accuracy,
                "ours": name,
                "ours_accuracy": ours[name]["accuracy"],
                "difference": ours[name]["accuracy"] - accuracy,
                "seconds": round(time.perf_counter() - started, 3),
            }
            logging.info(
                "ART %s: accuracy %.4f (ours %s: %.4f)",
                class_name,
                accuracy,
                name,
                ours[name]["accuracy"],
            )
    finally:
        np.random.set_state(state)
    return {
        "library": "adversarial-robustness-toolbox",
        "version": art.__version__,
        "labels": "true labels y",
        "attacks": results,
    }
