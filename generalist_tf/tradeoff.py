"""The trade-off frontier: every network between a robust and a natural one, scored on validation.

Generalist's global learner G is a weighted interpolation of a robust and a natural learner's
EMAs; the same arithmetic, applied to any two networks of one architecture, traces a curve of
operating points (model soups, Croce et al. CVPR 2023; RiFT, ICCV 2023):

    theta(lambda) = lambda * theta_robust + (1 - lambda) * theta_natural

with every floating-point weight interpolated, BatchNorm moving statistics included, exactly as
G's are (`algorithm.mixing`). The natural end is either a run's own natural learner (its EMA at
the end of the last free window before the final redistribution, kept by
`FreeWindowCallback`), or a natural fine-tune of the robust network (`fine_tune`: the natural
learner's free window as a post-hoc tool).

Every point is scored on the validation split (clean and PGD accuracy), and only those scores
choose anything (`pareto`, `choose`); the test split is measured for the report. The program is
`python -m generalist_tf.experiments.frontier`, the Python entry `gtf.frontier`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from generalist_tf import data, defaults, models
from generalist_tf.algorithm import learners, mixing, optimizers
from generalist_tf.attacks import budget, projected
from generalist_tf.attacks.classifier import as_classifier

DEFAULT_POINTS = 11
OPERATING_KINDS = ("clean", "robust")


@dataclasses.dataclass
class Point:
    """One interpolation weight and its scores (accuracies in [0, 1]; None: not measured)."""

    lam: float
    val_clean: float
    val_pgd: float
    test_clean: float | None = None
    test_pgd: float | None = None
    worst_linf: float | None = None
    pareto: bool = False

    def as_dict(self) -> dict:
        record = dataclasses.asdict(self)
        record["lambda"] = record.pop("lam")
        return record


def grid(points: int) -> list[float]:
    """`points` weights from 0 (natural) to 1 (robust), evenly spaced, both ends included.

    Raises:
      ValueError: fewer than 2 points.
    """
    budget.check_count("points", points, 2)
    return [i / (points - 1) for i in range(points)]


def parse_operating_point(text: str | None) -> tuple[str, float] | None:
    """`clean:0.82` -> ("clean", 0.82); None or "" -> None.

    Raises:
      ValueError: not `clean:A` or `robust:A` with A in (0, 1] (naming the value).
    """
    if not text:
        return None
    kind, _, value = text.partition(":")
    try:
        threshold = float(value)
    except ValueError:
        threshold = math.nan
    if kind not in OPERATING_KINDS or not 0 < threshold <= 1:
        raise ValueError(
            f"operating_point must be clean:A or robust:A with A in (0, 1], got {text!r}"
        )
    return kind, threshold


def check_same_architecture(robust: keras.Model, natural: keras.Model, names=("robust", "natural")):
    """Refuses two networks whose interpolation is undefined (one line naming both).

    Raises:
      ValueError: different numbers, shapes or dtypes of floating-point weights.
    """
    a, b = mixing.mixable_weights(robust), mixing.mixable_weights(natural)
    if len(a) != len(b):
        raise ValueError(
            f"{names[1]} does not share {names[0]}'s architecture: {len(b)} floating-point "
            f"weights against {len(a)}"
        )
    for wa, wb in zip(a, b):
        if tuple(wa.shape) != tuple(wb.shape):
            raise ValueError(
                f"{names[1]} does not share {names[0]}'s architecture: weight {wb.path} has "
                f"shape {tuple(wb.shape)}, {names[0]}'s {wa.path} has {tuple(wa.shape)}"
            )


def copy_network(network: keras.Model) -> keras.Model:
    """A new network of the same architecture holding the same weights."""
    copy = keras.models.clone_model(network)
    copy.set_weights(network.get_weights())
    return copy


def interpolate_into(target: keras.Model, robust: keras.Model, natural: keras.Model, lam: float):
    """Sets `target`'s floating-point weights to lam * robust + (1 - lam) * natural."""
    mixed = mixing.interpolate(
        [mixing.mixable_weights(robust), mixing.mixable_weights(natural)],
        tf.constant([lam, 1.0 - lam], tf.float64),
    )
    mixing.copy_weights(mixing.mixable_weights(target), mixed)


def reestimate_batchnorm(network: keras.Model, x: np.ndarray, *, batch_size: int, batches: int):
    """Replaces every BatchNorm layer's moving statistics by their average over training batches.

    The moving mean and variance are reset and then updated with momentum (k - 1) / k at the
    k-th batch, which makes them the plain mean of the batches' statistics (each layer's own
    variance convention, biased or unbiased, is kept). Returns the number of layers re-estimated
    (0: the network has no BatchNorm, and this is the identity).
    """
    layers = [
        layer
        for layer in models.layers_of(network)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    if not layers:
        return 0
    # A layer updates its statistics only when trainable; the EMAs and G are kept frozen
    # (without this every point of a run's frontier kept the reset values: 0 and 1).
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    for layer in layers:
        layer.trainable = True
        layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
        layer.moving_variance.assign(tf.ones_like(layer.moving_variance))
    order = np.random.default_rng(0).permutation(len(x))
    try:
        for k in range(batches):
            index = order[(k * batch_size) % len(x) :][:batch_size]
            for layer in layers:
                layer.momentum = k / (k + 1)  # the first batch replaces the reset values
            network(data.to_float(np.asarray(x[index])), training=True)
    finally:
        for layer, (momentum, trainable) in zip(layers, saved):
            layer.momentum, layer.trainable = momentum, trainable
    return len(layers)


def accuracy(
    network, x, y, *, attack: budget.Attack | None = None, batch_size: int = 500, seed: int = 0
) -> float:
    """Clean accuracy of `network` on (x, y), or its accuracy under the PGD of `attack`.

    The random start of batch b is seeded by (seed, b): the same examples get the same starts
    for every network scored, so two points differ only by their weights.
    """
    model = as_classifier(network)
    correct = 0
    for b, start in enumerate(range(0, len(x), batch_size)):
        images = data.to_float(np.asarray(x[start : start + batch_size]))
        labels = tf.convert_to_tensor(np.asarray(y[start : start + batch_size]), tf.int64)
        if attack is not None:
            images = projected.pgd_with(
                attack, model, images, labels, seed=tf.constant([seed, b], tf.int64)
            )
        predictions = tf.argmax(model(images), axis=-1)
        correct += int(tf.reduce_sum(tf.cast(predictions == labels, tf.int32)))
    return correct / max(1, len(x))


def check_fine_tune(steps: int, learning_rate: float, *, min_steps: int = 0) -> None:
    """The one check of a natural fine-tune's budget (the library and the command line).

    Raises:
      ValueError: `steps` not an integer >= `min_steps`, or `learning_rate` not > 0, naming
        `natural_steps` / `natural_learning_rate` and the value.
    """
    budget.check_count("natural_steps", steps, min_steps)
    if not learning_rate > 0:
        raise ValueError(f"natural_learning_rate must be > 0, got {learning_rate}")


def fine_tune(
    network: keras.Model,
    dataset: tf.data.Dataset,
    *,
    steps: int,
    learning_rate: float,
    momentum: float = defaults.MOMENTUM,
    weight_decay: float = defaults.NATURAL_WEIGHT_DECAY,
    seed: int = 0,
) -> keras.Model:
    """A copy of `network` trained `steps` steps on clean images: the natural learner's free window.

    The step is the natural base learner's own (`learners.NaturalLearner`: cross-entropy on the
    batch, training-mode BatchNorm) with its optimizer (SGD with momentum and coupled L2 weight
    decay) at a constant learning rate. `network` itself is not changed.

    Raises:
      ValueError: a negative `steps` or a non-positive `learning_rate` (`check_fine_tune`).
    """
    check_fine_tune(steps, learning_rate)
    copy = copy_network(network)
    if steps == 0:
        return copy
    learner = learners.LEARNERS["natural"](copy, copy_network(network), seed=(seed, 0))
    learner.compile(
        optimizer=optimizers.CoupledSGD(learning_rate, momentum=momentum, l2=weight_decay)
    )
    learner.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return copy


def pareto(
    points: Sequence[Point], clean: str = "val_clean", robust: str = "val_pgd"
) -> list[bool]:
    """Which points no other point beats on both accuracies (>= on both, > on one)."""
    flags = []
    for p in points:
        pc, pr = getattr(p, clean), getattr(p, robust)
        dominated = any(
            getattr(q, clean) >= pc
            and getattr(q, robust) >= pr
            and (getattr(q, clean) > pc or getattr(q, robust) > pr)
            for q in points
        )
        flags.append(not dominated)
    return flags


def choose(points: Sequence[Point], operating_point: tuple[str, float]) -> Point:
    """The operating point, on validation scores only.

    `("clean", a)`: the most robust point (validation PGD) whose validation clean accuracy is at
    least a; `("robust", a)`: the most accurate point whose validation PGD accuracy is at least a.
    Ties go to the larger lambda (the more robust network).

    Raises:
      ValueError: no point reaches the threshold (naming it and the best reached).
    """
    kind, threshold = operating_point
    key, other = ("val_clean", "val_pgd") if kind == "clean" else ("val_pgd", "val_clean")
    eligible = [p for p in points if getattr(p, key) >= threshold]
    if not eligible:
        best = max(getattr(p, key) for p in points)
        raise ValueError(
            f"operating_point={kind}:{threshold:g}: no point reaches validation {kind} "
            f"accuracy {threshold:g} (the best reaches {best:.4f})"
        )
    return max(eligible, key=lambda p: (getattr(p, other), p.lam))


def sweep(
    robust: keras.Model,
    natural: keras.Model,
    *,
    validation: tuple[np.ndarray, np.ndarray],
    attack: budget.Attack,
    lambdas: Sequence[float],
    batch_size: int = 500,
    reestimate: tuple[np.ndarray, int, int] | None = None,
    on_point=None,
) -> list[Point]:
    """Scores theta(lambda) for every lambda on the validation split (clean and PGD accuracy).

    Args:
      robust, natural: networks of one architecture (`check_same_architecture`).
      validation: (x, y) of the validation split.
      attack: the PGD budget of the robust score.
      lambdas: the interpolation weights (1: the robust network, 0: the natural one).
      reestimate: None (BatchNorm statistics interpolated like every weight), or
        (x_train, batch_size, batches) to re-estimate them at every point (`reestimate_batchnorm`).
      on_point: optional `f(point)` called after each point (a progress line).

    Returns:
      The points, in the order of `lambdas`, with `pareto` set on the validation scores.
    """
    check_same_architecture(robust, natural)
    target = copy_network(robust)
    scored = as_classifier(target)  # one wrapper: the compiled attack is traced once
    x_val, y_val = validation
    points = []
    for lam in lambdas:
        at(target, robust, natural, lam, reestimate)
        point = Point(
            lam=float(lam),
            val_clean=accuracy(scored, x_val, y_val, batch_size=batch_size),
            val_pgd=accuracy(scored, x_val, y_val, attack=attack, batch_size=batch_size),
        )
        points.append(point)
        if on_point:
            on_point(point)
    for point, optimal in zip(points, pareto(points)):
        point.pareto = optimal
    return points


def at(target, robust, natural, lam, reestimate=None) -> keras.Model:
    """`target` set to theta(lambda), its BatchNorm statistics re-estimated when asked."""
    interpolate_into(target, robust, natural, lam)
    if reestimate is not None:
        x_train, batch, batches = reestimate
        reestimate_batchnorm(target, x_train, batch_size=batch, batches=batches)
    return target


def gain_at(curve: Sequence[tuple[float, float]], reference: Sequence[tuple[float, float]], robust):
    """Clean accuracy of `curve` minus `reference`'s at robust accuracy `robust`.

    Each is a list of (clean, robust) points; see `clean_at`. None when `robust` is beyond
    either curve's most robust point.
    """
    a, b = clean_at(curve, robust), clean_at(reference, robust)
    return None if a is None or b is None else a - b


# Accuracies recorded in float32 and recomputed in float64 differ by ~1e-8.
_TOLERANCE = 1e-6


def clean_at(points: Sequence[tuple[float, float]], robust: float) -> float | None:
    """The frontier's clean accuracy at robust accuracy `robust`.

    The best clean accuracy of a point at least that robust, linearly interpolated between
    consecutive Pareto points (the upper-left envelope); below the envelope's least robust
    point, that point's clean accuracy. None above the most robust point.
    """
    envelope = _envelope(points)
    if not envelope or robust > envelope[-1][1] + _TOLERANCE:
        return None
    if robust <= envelope[0][1]:
        return envelope[0][0]
    for (c0, r0), (c1, r1) in zip(envelope, envelope[1:]):
        if r0 <= robust <= r1:
            return c0 if r1 == r0 else c0 + (c1 - c0) * (robust - r0) / (r1 - r0)
    return envelope[-1][0]


def _envelope(points):
    """The Pareto points of (clean, robust) pairs, sorted by increasing robust accuracy."""
    envelope = []
    pts = {(float(c), float(r)) for c, r in points}
    for c, r in sorted(pts, key=lambda p: (-p[1], -p[0])):  # most robust first
        if not envelope or c > envelope[-1][0]:
            envelope.append((c, r))
    return sorted(envelope, key=lambda p: p[1])


FRONTIER_JSON = "frontier.json"
FRONTIER_PNG = "frontier.png"
OPERATING_EXPORT = "operating_point"


def run(
    robust: keras.Model,
    natural: keras.Model,
    *,
    validation: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    attack: budget.Attack,
    out: str,
    points: int = DEFAULT_POINTS,
    operating_point: str | None = None,
    reestimate: tuple[np.ndarray, int, int] | None = None,
    worst_case: tuple[np.ndarray, np.ndarray] | None = None,
    apgd_steps: int = defaults.EVAL_APGD_STEPS,
    baselines: dict[str, tuple[float, float]] | None = None,
    batch_size: int = 500,
    provenance: dict | None = None,
    on_point=None,
) -> dict:
    """The whole frontier: sweep on validation, test scores, worst case, files, operating point.

    Args:
      robust, natural: the two ends (one architecture).
      validation, test: (x, y) arrays; only `validation` chooses anything.
      attack: the PGD budget of the robust scores (PGD-20 at the evaluation epsilon).
      out: output directory: `frontier.json`, `frontier.png`, and with `operating_point` the
        SavedModel `operating_point/` with its `operating_point.keras` twin.
      points: grid size (`grid`).
      operating_point: `clean:A` or `robust:A` (`parse_operating_point`), chosen on validation
        before the test split is read.
      reestimate: see `sweep`.
      worst_case: (x, y) of the fixed subset on which the validation-Pareto points get the
        worst case of APGD-CE and APGD-T (l_inf, `apgd_steps` iterations); None skips it.
      baselines: name -> (test clean, test PGD) of other models, drawn on the plot.
      provenance: recorded as is in `frontier.json` (sources, fine-tune settings, ...).

    Returns:
      The `frontier.json` record.

    Raises:
      ValueError: a bad `operating_point` (before any work) or one no point reaches (after the
        validation sweep, before the test split is scored).
    """
    from generalist_tf import export, files
    from generalist_tf.evaluation import runner

    wanted = parse_operating_point(operating_point)
    check_same_architecture(robust, natural)
    lambdas = grid(points)
    swept = sweep(
        robust,
        natural,
        validation=validation,
        attack=attack,
        lambdas=lambdas,
        batch_size=batch_size,
        reestimate=reestimate,
        on_point=on_point,
    )
    chosen = choose(swept, wanted) if wanted else None
    target = copy_network(robust)
    scored = as_classifier(target)
    x_test, y_test = test
    for point in swept:
        at(target, robust, natural, point.lam, reestimate)
        point.test_clean = accuracy(scored, x_test, y_test, batch_size=batch_size)
        point.test_pgd = accuracy(scored, x_test, y_test, attack=attack, batch_size=batch_size)
        if worst_case is not None and point.pareto:
            report = runner.evaluate_model(
                target,
                *worst_case,
                workdir=os.path.join(out, f"worst_case_lambda{point.lam:.2f}"),
                epsilon_linf=attack.epsilon,
                epsilon_l2=1.0,  # not attacked: the list below is l_inf only
                attacks=["apgd_ce_linf", "apgd_t_linf"],
                apgd_steps=apgd_steps,
                epsilon_fractions=(),
                tensorboard=False,
                verbose=0,
            )
            point.worst_linf = float(report["worst_case"]["linf"])
    record = {
        "points": [p.as_dict() for p in swept],
        "attack": dataclasses.asdict(attack),
        "validation_examples": len(validation[0]),
        "test_examples": len(x_test),
        "worst_case_examples": None if worst_case is None else len(worst_case[0]),
        "worst_case_attacks": None if worst_case is None else ["apgd_ce_linf", "apgd_t_linf"],
        "apgd_steps": apgd_steps if worst_case is not None else None,
        "batchnorm": "interpolated" if reestimate is None else "re-estimated",
        "operating_point": None,
        **(provenance or {}),
    }
    os.makedirs(out, exist_ok=True)
    if chosen is not None:
        at(target, robust, natural, chosen.lam, reestimate)
        export.export_saved_model(
            target, lambda: keras.models.clone_model(robust), os.path.join(out, OPERATING_EXPORT)
        )
        record["operating_point"] = {"rule": operating_point, **chosen.as_dict()}
    files.write_json(os.path.join(out, FRONTIER_JSON), record, indent=1)
    plot(record, os.path.join(out, FRONTIER_PNG), baselines=baselines)
    return record


def plot(record: dict, path: str, *, baselines: dict[str, tuple[float, float]] | None = None):
    """Test clean accuracy against test PGD accuracy: the curve, its operating point, baselines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from generalist_tf import files

    figure = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title("Trade-off frontier (test split)")
    axes.set_xlabel(f"PGD-{record['attack']['num_steps']} accuracy (%)")
    axes.set_ylabel("clean accuracy (%)")
    axes.grid(alpha=0.3)
    pts = record["points"]
    axes.plot(
        [100 * p["test_pgd"] for p in pts],
        [100 * p["test_clean"] for p in pts],
        marker="o",
        label="theta(lambda), lambda = 0 (natural) .. 1 (robust)",
    )
    if record.get("operating_point"):
        op = record["operating_point"]
        axes.plot([100 * op["test_pgd"]], [100 * op["test_clean"]], "r*", ms=14, label=op["rule"])
    for name, (clean, robust) in (baselines or {}).items():
        axes.plot([100 * robust], [100 * clean], "s", label=name)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    with files.staged(path) as staging:
        figure.savefig(staging, bbox_inches="tight")
