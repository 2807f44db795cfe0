"""Attacks of the robustness evaluation beyond PGD: FGSM, MIM, APGD (CE and targeted DLR), Square.

Every attack is a pure function of its arguments in TensorFlow: the model runs in inference mode
(`model(images, training=False) -> logits`), shapes are static, there is no numpy, and the
iterations are compiled with `tf.function` under the project's XLA policy
(`attacks.resolve_jit_compile`). Iteration counts are exact: `num_steps=100` computes 100
gradient steps, `num_queries=5000` queries the model 5000 times per example.

Two conventions make the evaluation honest against gradient masking:
  * gradients that are missing (a non-differentiable op such as `tf.round`) or non-finite count
    as zero, so a masked model makes the attack fail visibly instead of producing NaN images
    (the alarms in `evaluation/alarms.py` then say why);
  * APGD returns, per example, the worst case it met (the starting image `x` included): an
    adversarial example whenever any iterate, restart or target class fooled the model.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from generalist_tf import attacks

APGD_LOSSES = ("ce", "dlr", "dlr_targeted")
# Croce & Hein 2020, Sec. 3.2: momentum weight alpha and the threshold rho of condition 1.
APGD_MOMENTUM = 0.75
APGD_RHO = 0.75
# The checkpoint schedule p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
APGD_FIRST_CHECKPOINT = 0.22
APGD_CHECKPOINT_DECAY = 0.03
APGD_MIN_CHECKPOINT_GAP = 0.06
# AutoAttack's APGD-T attacks the 9 most likely wrong classes (all of them on 10 classes).
APGD_TARGET_CLASSES = 9
# Square Attack (Andriushchenko et al. 2020, Sec. 4 and their code): p is halved at these
# iterations of a 10,000-query budget; other budgets rescale the iteration to that scale.
SQUARE_SCHEDULE_QUERIES = 10_000
SQUARE_HALVING_ITERATIONS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# Denominators of the DLR losses and of gradient normalisations: a zero denominator must give a
# finite value, and 1e-12 is far below any logit gap or gradient norm that matters.
_TINY = 1e-12


class Classifier:
    """A model as the attacks call it: `classifier(images, training=False) -> float32 logits`.

    Wraps a Keras model or any callable `images -> logits` (an exported SavedModel's serving
    function). The logits get `0 * sum(images)` added: a model with a non-differentiable op on
    its input path (`tf.round`, as in input quantisation) otherwise has a None input gradient,
    which crashes a gradient attack; with it the gradient is an honest zero, the attack fails
    and the alarms report the masking.
    """

    def __init__(self, model):
        self.model = model
        self._takes_training = isinstance(model, keras.Model)

    def __call__(self, images, training=False):
        del training  # Attacks and evaluation always run the model in inference mode.
        images = tf.convert_to_tensor(images, tf.float32)
        logits = self.model(images, training=False) if self._takes_training else self.model(images)
        logits = tf.cast(logits, tf.float32)
        axes = list(range(1, images.shape.rank))
        return logits + 0.0 * tf.reduce_sum(images, axis=axes)[:, None]


def as_classifier(model) -> Classifier:
    """`model` wrapped as a `Classifier` (returned unchanged if it already is one)."""
    return model if isinstance(model, Classifier) else Classifier(model)


def _check_epsilon(epsilon):
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")


def check_square_budget(epsilon, num_queries, p_init) -> None:
    """Raises ValueError for a Square Attack budget outside its range (either norm)."""
    _check_epsilon(epsilon)
    _check_count("num_queries", num_queries, 1)
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")


def _check_count(name, value, minimum):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _scalar(value) -> tf.Tensor:
    return tf.constant(float(value), tf.float32)


def _batch_shape(x: tf.Tensor) -> list[int]:
    """Shape that broadcasts a per-example value against images of `x`'s rank."""
    return [-1] + [1] * (x.shape.rank - 1)


def _finite_or_zero(gradient: tf.Tensor | None, like: tf.Tensor) -> tf.Tensor:
    """A gradient with non-finite entries set to zero (a masked model must not give NaN images)."""
    if gradient is None:
        return tf.zeros_like(like)
    return tf.where(tf.math.is_finite(gradient), gradient, tf.zeros_like(gradient))


def _feasible(x: tf.Tensor, candidate: tf.Tensor, norm: str, epsilon: float) -> tf.Tensor:
    """Projects onto the `norm` ball around `x`, then onto [0, 1] (which keeps it in the ball)."""
    candidate = x + attacks.project(candidate - x, norm=norm, epsilon=epsilon)
    return tf.clip_by_value(candidate, 0.0, 1.0)


def margin(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Per-example margin of the best wrong class over the true class: > 0 means fooled.

    The true class is masked with -inf (not by subtracting a constant), so it stays correct for
    saturated logits.
    """
    logits = tf.cast(logits, tf.float32)
    true_mask = tf.one_hot(
        tf.cast(y, tf.int32), tf.shape(logits)[-1], on_value=True, off_value=False
    )
    true_logit = tf.reduce_sum(tf.where(true_mask, logits, 0.0), axis=-1)
    best_other = tf.reduce_max(tf.where(true_mask, float("-inf"), logits), axis=-1)
    return best_other - true_logit


def _fooled(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    return tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(y, tf.int32))


def dlr_loss(logits: tf.Tensor, y: tf.Tensor, target: tf.Tensor | None = None) -> tf.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, Eqs. 6 and 7), per example, to maximise.

    Untargeted: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3); targeted at class t:
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), with z_pi the logits sorted in decreasing order.
    Both are invariant to shifting and scaling the logits, so saturation cannot mask them.

    Args:
      logits: (B, K) logits; K >= 3 untargeted, K >= 4 targeted.
      y: (B,) true labels.
      target: None (untargeted) or (B,) target classes.

    Raises:
      ValueError: too few classes for the loss (the denominator needs the 3rd / 4th logit).
    """
    logits = tf.cast(logits, tf.float32)
    num_classes = logits.shape[-1]
    needed = 3 if target is None else 4
    if num_classes is not None and num_classes < needed:
        kind = "untargeted" if target is None else "targeted"
        raise ValueError(f"{kind} DLR needs at least {needed} classes, got {num_classes}")
    ranked = tf.math.top_k(logits, k=needed).values
    if target is None:
        # -(z_y - max_{i != y} z_i) is the margin of the best wrong class.
        return margin(logits, y) / (ranked[:, 0] - ranked[:, 2] + _TINY)
    true_logit = tf.gather(logits, tf.cast(y, tf.int32), batch_dims=1)
    target_logit = tf.gather(logits, tf.cast(target, tf.int32), batch_dims=1)
    denominator = ranked[:, 0] - 0.5 * (ranked[:, 2] + ranked[:, 3])
    return -(true_logit - target_logit) / (denominator + _TINY)


def _apgd_loss(logits, y, target, loss):
    if loss == "ce":
        return attacks.attack_loss(logits, y, "ce")
    return dlr_loss(logits, y, target if loss == "dlr_targeted" else None)


def apgd_checkpoints(num_steps: int) -> tuple[int, ...]:
    """The iterations w_j = ceil(p_j * num_steps) at which APGD may halve its step size.

    Croce & Hein 2020, Sec. 3.2: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
    0.06), for all p_j <= 1. For 100 steps: 0, 22, 41, 57, 70, 80, 87, 93, 99.
    """
    points = [0.0, APGD_FIRST_CHECKPOINT]
    while True:
        gap = max(points[-1] - points[-2] - APGD_CHECKPOINT_DECAY, APGD_MIN_CHECKPOINT_GAP)
        # Rounded so that 0.99999999 is not taken for 1 - a float artefact of the sums.
        following = round(points[-1] + gap, 10)
        if following > 1.0:
            break
        points.append(following)
    checkpoints = []
    for p in points:
        w = math.ceil(round(p * num_steps, 8))
        if not checkpoints or w > checkpoints[-1]:
            checkpoints.append(w)
    return tuple(checkpoints)


def _better(fooled_new, margin_new, fooled_old, margin_old):
    """Per example: the new point is worse for the model (fooled first, then larger margin)."""
    return (fooled_new & ~fooled_old) | (
        tf.equal(fooled_new, fooled_old) & (margin_new > margin_old)
    )


def _apgd_run(model, x, y, target, norm, epsilon, num_steps, loss, checkpoints, seed):
    """One APGD run (Croce & Hein 2020, Algorithm 1) from a random point of the ball.

    Returns the per-example worst point met (the clean image included), its `fooled` flag and
    margin. The algorithm's own state (x_max, f_max, step size eta) follows the paper; the
    returned point is tracked apart so that an iterate that fooled the model is never lost.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    shape = _batch_shape(x)
    num_examples = tf.shape(x)[0]
    is_checkpoint = [False] * (num_steps + 1)
    interval = [0.0] * (num_steps + 1)
    for previous, current in zip(checkpoints[:-1], checkpoints[1:]):
        is_checkpoint[current] = True
        interval[current] = float(current - previous)
    is_checkpoint = tf.constant(is_checkpoint)
    interval = tf.constant(interval)

    def loss_and_gradient(images):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(images)
            logits = tf.cast(model(images, training=False), tf.float32)
            per_example = _apgd_loss(logits, y, target, loss)
            # Summed: each example's gradient is its own loss's gradient.
            objective = tf.reduce_sum(tf.where(tf.math.is_finite(per_example), per_example, 0.0))
        gradient = tape.gradient(
            objective, images, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return per_example, _finite_or_zero(gradient, images), logits

    # The worst case starts at x itself: x lies in the ball, a misclassified x is adversarial.
    clean_logits = tf.cast(model(x, training=False), tf.float32)
    x_out, fooled_out, margin_out = x, _fooled(clean_logits, y), margin(clean_logits, y)

    start = attacks.random_init(x, norm=norm, epsilon=epsilon, seed=seed)
    x_cur = tf.clip_by_value(x + start, 0.0, 1.0)
    f_cur, g_cur, logits = loss_and_gradient(x_cur)
    fooled, gap = _fooled(logits, y), margin(logits, y)
    better = _better(fooled, gap, fooled_out, margin_out)
    x_out = tf.where(tf.reshape(better, shape), x_cur, x_out)
    fooled_out, margin_out = fooled_out | fooled, tf.where(better, gap, margin_out)

    x_prev, x_best, f_best, g_best = x_cur, x_cur, f_cur, g_cur
    # Step size 2 * epsilon at the start (Sec. 3.2), one per example.
    eta = tf.fill([num_examples], 2.0 * tf.cast(epsilon, tf.float32))
    eta_at_checkpoint, f_best_at_checkpoint = eta, f_best
    successes = tf.zeros([num_examples])
    for k in tf.range(num_steps):
        # The first step has no momentum (x^(1) = P(x^(0) + eta * step)).
        alpha = tf.where(k == 0, 1.0, APGD_MOMENTUM)
        z = _feasible(
            x,
            x_cur + tf.reshape(eta, shape) * attacks.ascent_direction(g_cur, norm=norm),
            norm,
            epsilon,
        )
        x_next = _feasible(
            x, x_cur + alpha * (z - x_cur) + (1.0 - alpha) * (x_cur - x_prev), norm, epsilon
        )
        f_next, g_next, logits = loss_and_gradient(x_next)

        fooled, gap = _fooled(logits, y), margin(logits, y)
        better = _better(fooled, gap, fooled_out, margin_out)
        x_out = tf.where(tf.reshape(better, shape), x_next, x_out)
        fooled_out, margin_out = fooled_out | fooled, tf.where(better, gap, margin_out)

        # Condition 1 counts the steps that raised the loss over the previous iterate.
        successes += tf.cast(f_next > f_cur, tf.float32)
        improved = f_next > f_best
        x_best = tf.where(tf.reshape(improved, shape), x_next, x_best)
        g_best = tf.where(tf.reshape(improved, shape), g_next, g_best)
        f_best = tf.where(improved, f_next, f_best)
        x_prev, x_cur, f_cur, g_cur = x_cur, x_next, f_next, g_next

        if is_checkpoint[k + 1]:
            # Halve eta where (1) fewer than rho of the steps since the last checkpoint raised the
            # loss, or (2) neither eta nor the best loss changed since then; those examples
            # restart from their best point x_max, with no momentum carried over.
            condition_1 = successes < APGD_RHO * interval[k + 1]
            condition_2 = tf.equal(eta_at_checkpoint, eta) & tf.equal(f_best_at_checkpoint, f_best)
            reduce = condition_1 | condition_2
            eta = tf.where(reduce, 0.5 * eta, eta)
            restart = tf.reshape(reduce, shape)
            x_cur = tf.where(restart, x_best, x_cur)
            x_prev = tf.where(restart, x_best, x_prev)
            g_cur = tf.where(restart, g_best, g_cur)
            f_cur = tf.where(reduce, f_best, f_cur)
            successes = tf.zeros_like(successes)
            eta_at_checkpoint, f_best_at_checkpoint = eta, f_best
    return tf.stop_gradient(x_out), fooled_out, margin_out


def _mim(model, x, y, epsilon, step_size, num_steps, decay):
    """Momentum iterative method (Dong et al. 2018, Algorithm 1) in l_inf, from x itself."""
    x = tf.convert_to_tensor(x, tf.float32)
    l1_axes = list(range(1, x.shape.rank))
    accumulated = tf.zeros_like(x)
    x_adv = x
    for _ in tf.range(num_steps):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x_adv)
            objective = tf.reduce_sum(attacks.attack_loss(model(x_adv, training=False), y, "ce"))
        gradient = _finite_or_zero(
            tape.gradient(objective, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO),
            x_adv,
        )
        # g_{t+1} = mu * g_t + grad / ||grad||_1 (Eq. 6); _TINY keeps a zero gradient at zero.
        l1 = tf.reduce_sum(tf.abs(gradient), axis=l1_axes, keepdims=True)
        accumulated = decay * accumulated + gradient / (l1 + _TINY)
        x_adv = _feasible(x, x_adv + step_size * tf.sign(accumulated), "linf", epsilon)
        x_adv = tf.stop_gradient(x_adv)
    return x_adv


def square_p(iteration: tf.Tensor, num_queries: int, p_init: float) -> tf.Tensor:
    """The fraction p of pixels a Square Attack window covers at `iteration` (0-indexed).

    Andriushchenko et al. 2020: p starts at `p_init` and is halved at iterations 10, 50, 200,
    500, 1000, 2000, 4000, 6000 and 8000 of a 10,000-query run; other budgets are rescaled.
    """
    scaled = tf.math.floordiv(
        tf.cast(iteration, tf.int64) * SQUARE_SCHEDULE_QUERIES, tf.cast(num_queries, tf.int64)
    )
    halvings = tf.reduce_sum(
        tf.cast(scaled > tf.constant(SQUARE_HALVING_ITERATIONS, tf.int64), tf.float32)
    )
    return p_init / tf.pow(2.0, halvings)


def _square(model, x, y, epsilon, num_queries, p_init, seed):
    """Square Attack, l_inf (Andriushchenko et al. 2020, Algorithm 1), vectorised over the batch.

    Score-based: it reads only the logits (the margin loss z_y - max_{i != y} z_i, minimised) and
    never a gradient. Each iteration proposes, for every example still classified correctly, a
    random square window set to +-epsilon per channel and keeps it if the margin decreases.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    _, height, width, channels = x.shape
    num_examples = tf.shape(x)[0]
    seed = tf.cast(seed, tf.int64)

    def margin_of(images):
        return -margin(model(images, training=False), y)

    def random_sign(shape, stream):
        draw = tf.random.stateless_uniform(shape, stream, 0, 2, dtype=tf.int32)
        return tf.cast(2 * draw - 1, tf.float32) * epsilon

    # Initialisation with vertical stripes of width 1 at +-epsilon (Sec. 3.1 of the paper).
    stripes = random_sign([num_examples, 1, width, channels], tf.stack([seed, -1]))
    x_best = tf.clip_by_value(x + stripes, 0.0, 1.0)
    margin_best = margin_of(x_best)
    rows = tf.reshape(tf.range(height), [1, height, 1, 1])
    cols = tf.reshape(tf.range(width), [1, 1, width, 1])
    for i in tf.range(num_queries - 1):
        active = margin_best > 0.0
        if not tf.reduce_any(active):
            break
        stream = tf.stack([seed, tf.cast(i, tf.int64)])
        p = square_p(i, num_queries, p_init)
        # Side s = round(sqrt(p * H * W)), between 1 and min(H, W) - 1 as in the paper's code.
        side = tf.cast(tf.round(tf.sqrt(p * float(height * width))), tf.int32)
        side = tf.clip_by_value(side, 1, max(min(height, width) - 1, 1))
        corner_streams = tf.random.experimental.stateless_split(stream, 3)
        top = tf.random.stateless_uniform(
            [num_examples], corner_streams[0], 0, height - side + 1, dtype=tf.int32
        )
        left = tf.random.stateless_uniform(
            [num_examples], corner_streams[1], 0, width - side + 1, dtype=tf.int32
        )
        top, left = tf.reshape(top, [-1, 1, 1, 1]), tf.reshape(left, [-1, 1, 1, 1])
        window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        signs = random_sign([num_examples, 1, 1, channels], corner_streams[2])
        # The current perturbation with the window set to +-epsilon (per channel).
        proposal = tf.clip_by_value(x + tf.where(window, signs, x_best - x), 0.0, 1.0)
        # A proposal equal to the current image wastes a query; the paper's code resamples. The
        # opposite signs always change the window (clip(x + e) != clip(x - e) for e > 0).
        changed = tf.reduce_any(tf.abs(proposal - x_best) > 1e-7, axis=[1, 2, 3])
        signs = tf.where(tf.reshape(changed, [-1, 1, 1, 1]), signs, -signs)
        proposal = tf.clip_by_value(x + tf.where(window, signs, x_best - x), 0.0, 1.0)
        margin_proposal = margin_of(proposal)
        accept = active & (margin_proposal < margin_best)
        x_best = tf.where(tf.reshape(accept, [-1, 1, 1, 1]), proposal, x_best)
        margin_best = tf.where(accept, margin_proposal, margin_best)
    return x_best


_APGD_GRAPH = tf.function(_apgd_run, jit_compile=False)
_APGD_XLA = tf.function(_apgd_run, jit_compile=True)
_MIM_GRAPH = tf.function(_mim, jit_compile=False)
_MIM_XLA = tf.function(_mim, jit_compile=True)
_SQUARE_GRAPH = tf.function(_square, jit_compile=False)
_SQUARE_XLA = tf.function(_square, jit_compile=True)


def fgsm(model, x, y, *, epsilon: float, norm: str = "linf", jit_compile="auto") -> tf.Tensor:
    """Fast gradient (sign) method (Goodfellow et al. 2015): one step of length epsilon from x.

    Returns:
      Adversarial images inside the `norm` ball and [0, 1].
    """
    return attacks.pgd(
        model,
        x,
        y,
        norm=norm,
        epsilon=epsilon,
        step_size=epsilon if epsilon > 0 else 1.0,
        num_steps=1,
        random_start=False,
        jit_compile=jit_compile,
    )


def mim(
    model,
    x,
    y,
    *,
    epsilon: float,
    step_size: float,
    num_steps: int,
    decay: float = 1.0,
    jit_compile="auto",
) -> tf.Tensor:
    """Momentum iterative method, l_inf (Dong et al. 2018), on the cross-entropy, from x.

    Args:
      model: `model(images, training=False) -> logits`.
      x: float32 images in [0, 1], (B, H, W, C).
      y: int labels, (B,).
      epsilon: l_inf radius.
      step_size: length of each sign step.
      num_steps: exact number of gradient steps.
      decay: momentum factor mu (1.0 in the paper).
      jit_compile: compile policy (see `attacks.resolve_jit_compile`).

    Returns:
      Adversarial images inside the l_inf ball and [0, 1], without gradient.

    Raises:
      ValueError: an argument outside its range (the message names it and the value).
    """
    _check_epsilon(epsilon)
    _check_count("num_steps", num_steps, 0)
    if num_steps > 0 and not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if not decay >= 0:
        raise ValueError(f"decay must be >= 0, got {decay}")
    compiled = _MIM_XLA if attacks.resolve_jit_compile(jit_compile) else _MIM_GRAPH
    # Budgets as tensors: one trace serves every epsilon (only `num_steps` shapes the graph).
    return compiled(model, x, y, _scalar(epsilon), _scalar(step_size), num_steps, _scalar(decay))


def apgd(
    model,
    x,
    y,
    *,
    norm: str,
    epsilon: float,
    num_steps: int = 100,
    loss: str = "ce",
    target_classes: int = APGD_TARGET_CLASSES,
    restarts: int = 1,
    seed: int = 0,
    jit_compile="auto",
) -> tf.Tensor:
    """Auto-PGD (Croce & Hein 2020): APGD-CE, APGD-DLR, or APGD-T on the targeted DLR loss.

    Each run starts from a random point of the ball with step size 2 * epsilon, takes momentum
    steps (alpha 0.75) and, at the checkpoints of `apgd_checkpoints`, halves the step size of the
    examples that progress too little and moves them back to their best point. `loss=
    "dlr_targeted"` runs once per target class: the `target_classes` most likely wrong classes at
    x (capped at num_classes - 1), as APGD-T does; every run is repeated `restarts` times.

    DLR needs the 3rd (untargeted) or 3rd and 4th (targeted) largest logit, so it is defined only
    for at least 3 / 4 classes: with fewer, this raises ValueError rather than silently
    attacking another loss; use `loss="ce"` there.

    Args:
      model: `model(images, training=False) -> logits`.
      x: float32 images in [0, 1], (B, H, W, C).
      y: int labels, (B,).
      norm: `linf` or `l2` (sign or l_2-normalised steps, projection on that ball).
      epsilon: radius of the ball.
      num_steps: exact number of iterations (gradient steps) per run.
      loss: `ce`, `dlr` or `dlr_targeted`.
      target_classes: number of target classes of `dlr_targeted`.
      restarts: random starts per (target) run.
      seed: the random starts are a pure function of it.
      jit_compile: compile policy (see `attacks.resolve_jit_compile`).

    Returns:
      Per example the worst point over all runs and iterates (x included): an image that fools
      the model whenever one was found. Inside the ball and [0, 1], without gradient.

    Raises:
      ValueError: an argument outside its range, or DLR with too few classes.
    """
    if norm not in attacks.NORMS:
        raise ValueError(f"norm must be one of {attacks.NORMS}, got {norm!r}")
    if loss not in APGD_LOSSES:
        raise ValueError(f"loss must be one of {APGD_LOSSES}, got {loss!r}")
    _check_epsilon(epsilon)
    _check_count("num_steps", num_steps, 1)
    _check_count("restarts", restarts, 1)
    _check_count("target_classes", target_classes, 1)
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(tf.convert_to_tensor(y), tf.int32)
    clean_logits = tf.cast(model(x, training=False), tf.float32)
    num_classes = int(clean_logits.shape[-1])
    needed = {"ce": 2, "dlr": 3, "dlr_targeted": 4}[loss]
    if num_classes < needed:
        raise ValueError(
            f"loss={loss!r} needs at least {needed} classes, got {num_classes}; use loss='ce'"
        )
    if loss == "dlr_targeted":
        # The most likely wrong classes at x, most likely first (the true class masked out).
        wrong = tf.where(tf.one_hot(y, num_classes) > 0, float("-inf"), clean_logits)
        targets = tf.math.top_k(wrong, k=min(target_classes, num_classes - 1)).indices
        runs = [targets[:, t] for t in range(targets.shape[-1])]
    else:
        runs = [tf.zeros_like(y)]  # Unused by untargeted losses.
    compiled = _APGD_XLA if attacks.resolve_jit_compile(jit_compile) else _APGD_GRAPH
    checkpoints = apgd_checkpoints(num_steps)
    best = None
    for run, target in enumerate(runs):
        for restart in range(restarts):
            run_seed = tf.constant([seed, run * restarts + restart], tf.int64)
            result = compiled(
                model, x, y, target, norm, _scalar(epsilon), num_steps, loss, checkpoints, run_seed
            )
            if best is None:
                best = result
                continue
            better = _better(result[1], result[2], best[1], best[2])
            best = (
                tf.where(tf.reshape(better, _batch_shape(x)), result[0], best[0]),
                best[1] | result[1],
                tf.where(better, result[2], best[2]),
            )
    return best[0]


def square(
    model,
    x,
    y,
    *,
    epsilon: float,
    num_queries: int = 5000,
    p_init: float = 0.8,
    seed: int = 0,
    jit_compile="auto",
) -> tf.Tensor:
    """Square Attack, l_inf (Andriushchenko et al. 2020): random search on the margin loss.

    Args:
      model: `model(images, training=False) -> logits`; only its logits are read.
      x: float32 images in [0, 1], (B, H, W, C).
      y: int labels, (B,).
      epsilon: l_inf radius.
      num_queries: queries per example, the stripe initialisation included; the attack stops
        early once every example is misclassified.
      p_init: initial fraction of pixels of a square window (0.8 in the paper for l_inf).
      seed: the random search is a pure function of it.
      jit_compile: compile policy (see `attacks.resolve_jit_compile`).

    Returns:
      Adversarial images inside the l_inf ball and [0, 1].

    Raises:
      ValueError: an argument outside its range.
    """
    check_square_budget(epsilon, num_queries, p_init)
    compiled = _SQUARE_XLA if attacks.resolve_jit_compile(jit_compile) else _SQUARE_GRAPH
    return compiled(
        model, x, y, _scalar(epsilon), num_queries, _scalar(p_init), tf.constant(seed, tf.int64)
    )
