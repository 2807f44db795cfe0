"""The robustness evaluation: every attack of the suite on the same examples, a report, alarms.

`evaluate_model` runs the attacks named in `suite.ATTACK_NAMES` (or a subset) and writes, under
its work directory (`writers`):
  * `report.json`: clean accuracy, per-attack accuracy and budget, per-norm worst case and the
    union over all attacks (both from per-example masks), the gradient-masking alarms, and,
    when asked, a third-party reference run;
  * `report.md`: the same as a paper-style table;
  * `accuracy_vs_epsilon_<norm>.png` (+ `accuracy_vs_epsilon.json`): PGD-20 accuracy at
    `suite.EPSILON_FRACTIONS` times the nominal epsilon;
  * TensorBoard scalars under `eval/`.

Accuracy conventions: an attack's accuracy is the accuracy on its adversarial examples (with
restarts, an example counts as correct only if every restart failed); the worst case and the
union also count an example misclassified without attack as not robust, since x lies in every
ball.
"""

from __future__ import annotations

import functools
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from generalist_tf import defaults, distribute, precision, timing
from generalist_tf.attacks import budget
from generalist_tf.attacks.classifier import as_classifier
from generalist_tf.evaluation import (
    alarms,
    per_example,
    references,
    reporting,
    resume,
    suite,
    writers,
)


def _to_float_images(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32)


def in_float32(evaluate):
    """`evaluate(model, ..., surrogate=..., compute_dtype="float32")`: Keras models (the model
    and the surrogate) compute in float32 during the evaluation, whatever their dtype policy
    (`precision.float32_compute`); `compute_dtype=None` attacks them as they are."""

    @functools.wraps(evaluate)
    def wrapper(model, *args, compute_dtype: str | None = "float32", **kwargs):
        if compute_dtype not in ("float32", None):
            raise ValueError(f"compute_dtype must be 'float32' or None, got {compute_dtype!r}")
        networks = [m for m in (model, kwargs.get("surrogate")) if isinstance(m, keras.Model)]
        with precision.float32_compute(networks if compute_dtype else []):
            return evaluate(model, *args, **kwargs)

    return wrapper


@in_float32
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
    apgd_steps: int = defaults.EVAL_APGD_STEPS,
    attacks=None,
    reference: str | None = None,
    surrogate=None,
    jit_compile="auto",
    tensorboard: bool = True,
    epsilon_fractions=suite.EPSILON_FRACTIONS,
    verbose: int = 1,
    strategy: tf.distribute.Strategy | None = None,
    population: int | None = None,
    training_epsilons: dict[str, float] | None = None,
) -> dict:
    """Evaluates a classifier under the attack suite and writes the report, plots and summaries.

    Args:
      model: a Keras model or a callable `images -> logits` (e.g. `export.load_serving(path)`).
        A Keras model trained in bf16/fp16 is attacked in float32 (half-precision gradients
        blunt attacks); `compute_dtype=None` attacks it in its own policy instead.
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
      attacks: names from `suite.ATTACK_NAMES` to run, or one name of `suite.ATTACK_SETS` (None:
        `suite.DEFAULT_ATTACKS`). APGD-T is left out, with a warning, for fewer than 4 classes (its DLR
        loss is undefined there).
      reference: None, or "art" to cross-check PGD-20 and APGD-CE with the Adversarial
        Robustness Toolbox (`pip install -r requirements-art.txt`).
      surrogate: optional model (same input) for a transfer attack, `suite.TRANSFER_ATTACK`.
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
    names = suite.expand_attacks(attacks)
    suite.check_arguments(
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
    classifier = as_classifier(model)
    epsilons = {"linf": float(epsilon_linf), "l2": float(epsilon_l2)}
    by_name = suite.attack_suite(
        restarts=restarts,
        apgd_steps=apgd_steps,
        square_queries=square_queries,
        jit_compile=jit_compile,
    )
    runs = suite.selected_attacks(
        by_name, names, num_classes=int(classifier(x[:1]).shape[-1]), transfer=surrogate is not None
    )
    surrogate_classifier = None if surrogate is None else as_classifier(surrogate)
    fractions = tuple(float(f) for f in epsilon_fractions)
    curve_norms = [
        norm
        for norm in budget.NORMS
        if fractions and any(attack.norm == norm for _, attack in runs)
    ]
    batches = per_example.num_batches(len(x), batch_size)
    sweeps = sum(1 for f in fractions if f not in (0.0, 1.0)) * len(curve_norms)
    # A live bar on a terminal; written to a file or a pipe, one log line per finished attack.
    live = timing.progress_verbosity(verbose) == 1
    progress = keras.utils.Progbar(
        batches * (len(runs) + sweeps), unit_name="batch", verbose=1 if live else 0
    )

    strategy = distribute.eval_strategy(strategy)
    surrogate_logits = None if surrogate_classifier is None else surrogate_classifier(x[:8])
    records = resume.Progress(
        workdir,
        resume.fingerprint(
            np.concatenate(
                [np.asarray(classifier(x[: resume.FINGERPRINT_EXAMPLES]))]
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
        xb, yb = per_example.batch(x, y, index, batch_size)
        return tf.constant(suite.predict_labels(classifier, xb) == yb)

    clean = np.concatenate(
        distribute.map_batches(strategy, clean_batch, per_example.num_batches(len(x), batch_size))
    ).astype(bool)
    masks, entries = {}, {}
    for name, attack in runs:
        started = time.perf_counter()
        is_transfer = name == suite.TRANSFER_ATTACK
        masks[name] = per_example.run_attack(
            surrogate_classifier if is_transfer else classifier,
            x,
            y,
            attack,
            epsilon=epsilons[attack.norm],
            batch_size=batch_size,
            seed=seed,
            stream=suite.STREAM_ORDER.index(name),
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
        logging.info(
            "%s: accuracy %.4f in %.1f s (%s)",
            name,
            entries[name]["accuracy"],
            seconds,
            attack.description,
        )

    curves = {}
    for norm in curve_norms:
        curves[norm] = per_example.epsilon_curve(
            classifier,
            x,
            y,
            by_name[f"pgd20_{norm}"],
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
        suite.STANDARD_ATTACKS,
        iterations=apgd_steps,
        square_queries=square_queries,
        standard_iterations=suite.STANDARD_ITERATIONS,
        standard_queries=suite.STANDARD_SQUARE_QUERIES,
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
    report["alarms"] = alarms.suite_alarms(
        classifier, x, y, report, curves, seed=seed, jit_compile=jit_compile
    )
    report["alarms"] += reporting.epsilon_mixup_alarm(training_epsilons or {}, epsilons)
    for alarm in report["alarms"]:
        logging.warning("evaluation alarm: %s", alarm)
    if reference == "art":
        report["reference"] = references.art_reference(
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
    writers.write_outputs(workdir, report, curves, descriptions, tensorboard=tensorboard)
    records.finish()
    return report


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
    for norm in budget.NORMS:
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
