"""Gradient-masking alarms: the sanity checks of Carlini et al. 2019, "On Evaluating Adversarial
Robustness" (arXiv 1902.06705, Sec. 5), each returning a list of human-readable alarm strings.

An empty list means the check saw nothing wrong. Each alarm starts with its kind (one of
`KINDS`) and a colon, then says what was measured and why it is suspicious. The checks on
numbers (`epsilon_curve`, `black_box`, ...) are pure functions; `gradient_health` and
`unbounded_attack` run the model.
"""

from __future__ import annotations

import tensorflow as tf

from generalist_tf import attacks
from generalist_tf.evaluation import suite

ZERO_GRADIENT = "zero_gradient"
FINITE_DIFFERENCES = "finite_differences"
UNBOUNDED = "unbounded_epsilon"
LARGE_EPSILON = "large_epsilon"
NOT_MONOTONE = "not_monotone_in_epsilon"
BLACK_BOX = "black_box_stronger"
TRANSFER = "transfer_stronger"
MORE_STEPS = "more_iterations_weaker"
ROBUST_ABOVE_CLEAN = "robust_above_clean"
KINDS = (
    ZERO_GRADIENT,
    FINITE_DIFFERENCES,
    UNBOUNDED,
    LARGE_EPSILON,
    NOT_MONOTONE,
    BLACK_BOX,
    TRANSFER,
    MORE_STEPS,
    ROBUST_ABOVE_CLEAN,
)

# Share of examples whose cross-entropy input gradient is all zero or not finite: a fitted,
# unmasked model has essentially none (its softmax saturates only beyond a logit margin of ~90).
MAX_ZERO_GRADIENT_SHARE = 0.1
# Central finite differences along a random unit l_2 direction, step 1e-3: for a model that is
# differentiable almost everywhere they match autodiff to a few percent; a piecewise-constant
# model (quantised input) jumps while its gradient is zero.
FINITE_DIFFERENCE_STEP = 1e-3
FINITE_DIFFERENCE_RTOL = 0.2
FINITE_DIFFERENCE_ATOL = 1e-2
MAX_DISAGREEMENT_SHARE = 0.1
# Carlini et al. Sec. 5.3: with an unbounded budget an attack must succeed on (nearly) every
# example. Epsilon 1 in l_inf covers the whole [0, 1] pixel box.
UNBOUNDED_EPSILON = 1.0
UNBOUNDED_STEPS = 50
UNBOUNDED_STEP_SIZE = 0.1
MAX_UNBOUNDED_ACCURACY = 0.05
# At the largest epsilon of the accuracy-vs-epsilon curve (4x the nominal one) accuracy should
# be near zero; keeping more than half of the clean accuracy there is suspicious.
MAX_LARGE_EPSILON_SHARE_OF_CLEAN = 0.5
# Differences in accuracy (fractions) below these are noise on a few hundred examples.
MONOTONE_TOLERANCE = 0.02
ITERATIONS_TOLERANCE = 0.02
BLACK_BOX_TOLERANCE = 0.05
TRANSFER_TOLERANCE = 0.05
CLEAN_TOLERANCE = 0.0


def _percent(value: float) -> str:
    return f"{100.0 * value:.1f}%"


def gradient_statistics(model, x, y, *, seed: int = 0) -> dict[str, float]:
    """Health of the cross-entropy input gradients on a batch.

    Args:
      model: `model(images, training=False) -> logits` (see `attacks.as_classifier`).
      x, y: a batch of images in [0, 1] and labels.
      seed: seed of the random finite-difference directions.

    Returns:
      `zero_share` (all-zero gradient), `nonfinite_share` (a NaN/inf entry) and
      `disagreement_share` (finite differences disagree with the autodiff directional
      derivative beyond `FINITE_DIFFERENCE_RTOL`/`_ATOL`), each a fraction of the examples.
    """
    model = attacks.as_classifier(model)
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.convert_to_tensor(y)
    axes = list(range(1, x.shape.rank))

    def loss(images):
        return attacks.attack_loss(model(images, training=False), y, "ce")

    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        objective = tf.reduce_sum(loss(x))
    gradient = tape.gradient(objective, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    finite = tf.reduce_all(tf.math.is_finite(gradient), axis=axes)
    zero = tf.reduce_all(tf.equal(gradient, 0.0), axis=axes)

    direction = tf.random.stateless_normal(tf.shape(x), [seed, 0])
    direction /= tf.norm(tf.reshape(direction, [tf.shape(x)[0], -1]), axis=1)[:, None, None, None]
    autodiff = tf.reduce_sum(gradient * direction, axis=axes)
    h = FINITE_DIFFERENCE_STEP
    finite_difference = (loss(x + h * direction) - loss(x - h * direction)) / (2.0 * h)
    tolerance = FINITE_DIFFERENCE_ATOL + FINITE_DIFFERENCE_RTOL * tf.maximum(
        tf.abs(autodiff), tf.abs(finite_difference)
    )
    # A non-finite value on either side counts as a disagreement (the comparison is False).
    agree = tf.abs(finite_difference - autodiff) <= tolerance

    def share(mask):
        return float(tf.reduce_mean(tf.cast(mask, tf.float32)))

    return {
        "zero_share": share(zero & finite),
        "nonfinite_share": share(~finite),
        "disagreement_share": share(~agree),
    }


def gradient_health(model, x, y, *, seed: int = 0) -> list[str]:
    """Alarms for vanishing, exploding or wrong input gradients (Carlini et al. Sec. 5.2).

    Fires when more than `MAX_ZERO_GRADIENT_SHARE` of the examples have an all-zero or
    non-finite cross-entropy gradient (saturated softmax, non-differentiable preprocessing), or
    when finite differences disagree with autodiff on more than `MAX_DISAGREEMENT_SHARE`.
    """
    stats = gradient_statistics(model, x, y, seed=seed)
    alarms = []
    masked = stats["zero_share"] + stats["nonfinite_share"]
    if masked > MAX_ZERO_GRADIENT_SHARE:
        alarms.append(
            f"{ZERO_GRADIENT}: {_percent(stats['zero_share'])} of the examples have an all-zero "
            f"and {_percent(stats['nonfinite_share'])} a non-finite cross-entropy input gradient "
            f"(> {_percent(MAX_ZERO_GRADIENT_SHARE)}): gradient attacks cannot move them "
            f"(saturated logits or non-differentiable preprocessing?)"
        )
    if stats["disagreement_share"] > MAX_DISAGREEMENT_SHARE:
        alarms.append(
            f"{FINITE_DIFFERENCES}: on {_percent(stats['disagreement_share'])} of the examples "
            f"the finite-difference derivative (step {FINITE_DIFFERENCE_STEP}) disagrees with "
            f"the autodiff gradient (> {_percent(MAX_DISAGREEMENT_SHARE)}): the gradient does "
            f"not describe the loss (quantisation, shattered gradients?)"
        )
    return alarms


def unbounded_accuracy(model, x, y, *, jit_compile="auto") -> float:
    """Accuracy under l_inf PGD-CE with epsilon 1 (the whole pixel box), from x itself."""
    model = attacks.as_classifier(model)
    x_adv = attacks.pgd(
        model,
        x,
        y,
        norm="linf",
        epsilon=UNBOUNDED_EPSILON,
        step_size=UNBOUNDED_STEP_SIZE,
        num_steps=UNBOUNDED_STEPS,
        random_start=False,
        jit_compile=jit_compile,
    )
    predictions = tf.argmax(model(x_adv, training=False), axis=-1)
    return float(tf.reduce_mean(tf.cast(tf.equal(predictions, tf.cast(y, tf.int64)), tf.float32)))


def unbounded_attack(model, x, y, *, jit_compile="auto") -> list[str]:
    """Alarm when PGD with an unbounded budget leaves accuracy above ~0% (Carlini et al. 5.3)."""
    accuracy = unbounded_accuracy(model, x, y, jit_compile=jit_compile)
    if accuracy <= MAX_UNBOUNDED_ACCURACY:
        return []
    return [
        f"{UNBOUNDED}: PGD-{UNBOUNDED_STEPS} (cross-entropy) at l_inf epsilon "
        f"{UNBOUNDED_EPSILON} (any image) leaves {_percent(accuracy)} accuracy "
        f"(> {_percent(MAX_UNBOUNDED_ACCURACY)}): the attack is not working"
    ]


def epsilon_curve(
    norm: str, epsilons, accuracies, *, clean_accuracy: float, attack: str = "PGD-20"
) -> list[str]:
    """Alarms on an accuracy-vs-epsilon curve: it must not rise, and must fall at large epsilon.

    Args:
      norm: the curve's norm (for the message).
      epsilons: increasing radii; the largest should be several times the nominal epsilon.
      accuracies: the attack's accuracy at each radius.
      clean_accuracy: accuracy without attack.
      attack: the attack's name (for the message).
    """
    epsilons, accuracies = list(map(float, epsilons)), list(map(float, accuracies))
    if len(epsilons) != len(accuracies) or sorted(epsilons) != epsilons:
        raise ValueError(
            f"need increasing epsilons, one per accuracy, got {epsilons}, {accuracies}"
        )
    alarms = []
    for i in range(1, len(epsilons)):
        if accuracies[i] > accuracies[i - 1] + MONOTONE_TOLERANCE:
            alarms.append(
                f"{NOT_MONOTONE}: {attack} {norm} accuracy rises from "
                f"{_percent(accuracies[i - 1])} at epsilon {epsilons[i - 1]:g} to "
                f"{_percent(accuracies[i])} at {epsilons[i]:g}: a larger ball contains the smaller"
            )
    if epsilons and accuracies[-1] > MAX_LARGE_EPSILON_SHARE_OF_CLEAN * clean_accuracy:
        alarms.append(
            f"{LARGE_EPSILON}: {attack} {norm} accuracy stays at {_percent(accuracies[-1])} at "
            f"epsilon {epsilons[-1]:g} (clean {_percent(clean_accuracy)}): accuracy should "
            f"approach 0% as epsilon grows"
        )
    return alarms


def black_box(
    norm: str, whitebox_accuracy: float, blackbox_accuracy: float, *, attack: str = "Square"
) -> list[str]:
    """Alarm when a black-box (score-based) attack beats the best white-box attack (Sec. 5.4)."""
    if blackbox_accuracy >= whitebox_accuracy - BLACK_BOX_TOLERANCE:
        return []
    return [
        f"{BLACK_BOX}: black-box {attack} ({norm}) leaves {_percent(blackbox_accuracy)} accuracy, "
        f"below the best white-box attack's {_percent(whitebox_accuracy)}: gradients are masked"
    ]


def transfer(norm: str, whitebox_accuracy: float, transfer_accuracy: float) -> list[str]:
    """Alarm when PGD on a surrogate model beats white-box attacks on the model (Sec. 5.4)."""
    if transfer_accuracy >= whitebox_accuracy - TRANSFER_TOLERANCE:
        return []
    return [
        f"{TRANSFER}: adversarial examples transferred from the surrogate ({norm}) leave "
        f"{_percent(transfer_accuracy)} accuracy, below the best white-box attack's "
        f"{_percent(whitebox_accuracy)}: gradients are masked"
    ]


def more_iterations(accuracies: dict[str, float], pairs: list[tuple[str, str]]) -> list[str]:
    """Alarm when a stronger configuration (more steps, restarts) does worse (Sec. 5.1).

    Args:
      accuracies: attack name -> accuracy.
      pairs: (baseline, stronger) names, e.g. ("pgd20_linf", "pgd100_linf"); pairs with a name
        missing from `accuracies` are skipped.
    """
    alarms = []
    for weaker, stronger in pairs:
        if weaker not in accuracies or stronger not in accuracies:
            continue
        if accuracies[stronger] > accuracies[weaker] + ITERATIONS_TOLERANCE:
            alarms.append(
                f"{MORE_STEPS}: {stronger} leaves {_percent(accuracies[stronger])} accuracy, "
                f"above {weaker}'s {_percent(accuracies[weaker])}: more iterations or restarts "
                f"must not help the model"
            )
    return alarms


def robust_above_clean(clean_accuracy: float, accuracies: dict[str, float]) -> list[str]:
    """Alarm for an attack whose accuracy exceeds clean accuracy (x itself is in the ball)."""
    return [
        f"{ROBUST_ABOVE_CLEAN}: {name} leaves {_percent(accuracy)} accuracy, above the clean "
        f"{_percent(clean_accuracy)}: the attack moved examples towards their true class"
        for name, accuracy in sorted(accuracies.items())
        if accuracy > clean_accuracy + CLEAN_TOLERANCE + 1e-9
    ]


def kind_of(alarm: str) -> str:
    """The kind (one of `KINDS`) an alarm string starts with."""
    kind = alarm.split(":", 1)[0]
    if kind not in KINDS:
        raise ValueError(f"not an alarm of this module: {alarm!r}")
    return kind


def kinds(alarms) -> set[str]:
    """The set of kinds of a list of alarm strings."""
    return {kind_of(alarm) for alarm in alarms}


# Gradient-health and unbounded-attack alarms run on at most this many examples.
ALARM_EXAMPLES = 256


def suite_alarms(model, x, y, report, curves, *, seed, jit_compile) -> list[str]:
    """Every gradient-masking check of `alarms` that the attacks run make possible."""
    subset = slice(0, min(len(x), ALARM_EXAMPLES))
    found = gradient_health(model, x[subset], y[subset], seed=seed)
    found += unbounded_attack(model, x[subset], y[subset], jit_compile=jit_compile)
    clean = report["clean_accuracy"]
    for norm, curve in curves.items():
        found += epsilon_curve(norm, curve["epsilons"], curve["accuracies"], clean_accuracy=clean)
    accuracies = {name: entry["accuracy"] for name, entry in report["attacks"].items()}
    for norm in attacks.NORMS:
        whitebox = [
            accuracy
            for name, accuracy in accuracies.items()
            if name not in suite.NON_GRADIENT_ATTACKS and report["attacks"][name]["norm"] == norm
        ]
        if whitebox and f"square_{norm}" in accuracies:
            found += black_box(norm, min(whitebox), accuracies[f"square_{norm}"])
        if norm == "linf" and whitebox and suite.TRANSFER_ATTACK in accuracies:
            found += transfer("linf", min(whitebox), accuracies[suite.TRANSFER_ATTACK])
    pairs = []
    for norm in attacks.NORMS:
        pairs += [(f"pgd20_{norm}", f"pgd100_{norm}"), (f"pgd20_{norm}", f"apgd_ce_{norm}")]
    found += more_iterations(accuracies, pairs)
    found += robust_above_clean(clean, accuracies)
    return found
