"""Auto-PGD (Croce & Hein, ICML 2020): APGD-CE, APGD-DLR and APGD-T, l_inf and l_2.

The iterations are compiled under the project's policy (`compile.py`) and counts are exact:
`num_steps=100` computes 100 gradient steps per run. Gradients that are missing (a
non-differentiable op such as `tf.round`) or non-finite count as zero, so a masked model makes the
attack fail visibly instead of producing NaN images (the alarms in `evaluation/alarms.py` then
say why); the attack returns, per example, the worst case it met (the starting image `x`
included): an adversarial example whenever any iterate, restart or target class fooled the model.
"""

from __future__ import annotations

import math

import tensorflow as tf

from generalist_tf.attacks import budget, geometry, losses
from generalist_tf.attacks.compile import compiled, scalar

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


def _apgd_loss(logits, y, target, loss):
    if loss == "ce":
        return losses.attack_loss(logits, y, "ce")
    return losses.dlr_loss(logits, y, target if loss == "dlr_targeted" else None)


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
    shape = geometry.batch_shape(x)
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
        return per_example, geometry.finite_or_zero(gradient, images), logits

    # The worst case starts at x itself: x lies in the ball, a misclassified x is adversarial.
    clean_logits = tf.cast(model(x, training=False), tf.float32)
    x_out, fooled_out, margin_out = (
        x,
        losses.fooled(clean_logits, y),
        losses.margin(clean_logits, y),
    )

    start = geometry.random_init(x, norm=norm, epsilon=epsilon, seed=seed)
    x_cur = tf.clip_by_value(x + start, 0.0, 1.0)
    f_cur, g_cur, logits = loss_and_gradient(x_cur)
    fooled, gap = losses.fooled(logits, y), losses.margin(logits, y)
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
        z = geometry.feasible(
            x,
            x_cur + tf.reshape(eta, shape) * geometry.ascent_direction(g_cur, norm=norm),
            norm=norm,
            epsilon=epsilon,
        )
        x_next = geometry.feasible(
            x,
            x_cur + alpha * (z - x_cur) + (1.0 - alpha) * (x_cur - x_prev),
            norm=norm,
            epsilon=epsilon,
        )
        f_next, g_next, logits = loss_and_gradient(x_next)

        fooled, gap = losses.fooled(logits, y), losses.margin(logits, y)
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


_APGD = compiled(_apgd_run)


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
      jit_compile: compile policy (see `compile.resolve_jit_compile`).

    Returns:
      Per example the worst point over all runs and iterates (x included): an image that fools
      the model whenever one was found. Inside the ball and [0, 1], without gradient.

    Raises:
      ValueError: an argument outside its range, or DLR with too few classes.
    """
    if loss not in APGD_LOSSES:
        raise ValueError(f"loss must be one of {APGD_LOSSES}, got {loss!r}")
    budget.check_budget(norm=norm, epsilon=epsilon, num_steps=num_steps, min_steps=1)
    budget.check_count("restarts", restarts, 1)
    budget.check_count("target_classes", target_classes, 1)
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
        targets = losses.likely_wrong_classes(clean_logits, y, target_classes)
        runs = [targets[:, t] for t in range(targets.shape[-1])]
    else:
        runs = [tf.zeros_like(y)]  # Unused by untargeted losses.
    checkpoints = apgd_checkpoints(num_steps)
    best = None
    for run, target in enumerate(runs):
        for restart in range(restarts):
            run_seed = tf.constant([seed, run * restarts + restart], tf.int64)
            result = _APGD(
                jit_compile,
                model,
                x,
                y,
                target,
                norm,
                scalar(epsilon),
                num_steps,
                loss,
                checkpoints,
                run_seed,
            )
            if best is None:
                best = result
                continue
            better = _better(result[1], result[2], best[1], best[2])
            best = (
                tf.where(tf.reshape(better, geometry.batch_shape(x)), result[0], best[0]),
                best[1] | result[1],
                tf.where(better, result[2], best[2]),
            )
    return best[0]
