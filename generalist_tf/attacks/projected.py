"""The PGD family: PGD (Madry et al. 2018) in l_inf and l_2, FGSM, TRADES' KL-PGD and MSD.

These are the training attacks (and PGD-20 is the per-epoch validation attack). Each is a pure
function of its arguments: the model runs in inference mode (`training=False`, so BatchNorm
neither updates nor uses batch statistics while attacking), gradients are taken with respect to
the input only, shapes are static and there is no numpy, so the loops compile under XLA and run
inside `strategy.run` (see `compile.py` for the per-device policy).
"""

from __future__ import annotations

import tensorflow as tf

from generalist_tf.attacks import budget, geometry, losses
from generalist_tf.attacks.compile import compiled, scalar


def _pgd(model, x, y, norm, epsilon, step_size, num_steps, random_start, loss, seed):
    x = tf.convert_to_tensor(x, tf.float32)
    delta = (
        geometry.random_init(x, norm=norm, epsilon=epsilon, seed=seed)
        if random_start
        else tf.zeros_like(x)
    )
    x_adv = tf.clip_by_value(x + delta, 0.0, 1.0)
    for _ in tf.range(num_steps):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x_adv)
            # Summed, not averaged: each example's step does not depend on the batch size.
            objective = tf.reduce_sum(losses.attack_loss(model(x_adv, training=False), y, loss))
        gradient = tape.gradient(objective, x_adv)
        x_adv = x_adv + step_size * geometry.ascent_direction(gradient, norm=norm)
        x_adv = tf.stop_gradient(geometry.feasible(x, x_adv, norm=norm, epsilon=epsilon))
    return x_adv


def _trades_pgd(model, x, epsilon, step_size, num_steps, seed):
    """TRADES inner maximisation (Zhang et al. 2019, Alg. 1): l_inf PGD on KL(f(x) || f(x'))."""
    x = tf.convert_to_tensor(x, tf.float32)
    clean_probs = tf.stop_gradient(tf.nn.softmax(tf.cast(model(x, training=False), tf.float32)))
    # TRADES starts from a tiny Gaussian, not a uniform point of the ball: at x itself the KL
    # and its gradient are exactly zero.
    x_adv = tf.clip_by_value(x + 0.001 * geometry.normal(tf.shape(x), x.dtype, seed), 0.0, 1.0)
    for _ in tf.range(num_steps):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x_adv)
            log_probs = tf.nn.log_softmax(tf.cast(model(x_adv, training=False), tf.float32))
            objective = tf.reduce_sum(losses.kl_divergence(clean_probs, log_probs))
        gradient = tape.gradient(objective, x_adv)
        x_adv = x_adv + step_size * tf.sign(gradient)
        x_adv = tf.stop_gradient(geometry.feasible(x, x_adv, norm="linf", epsilon=epsilon))
    return x_adv


def _msd(model, x, y, norms, epsilons, step_sizes, num_steps):
    """Multi steepest descent (Maini et al. 2020): per step and example, the best norm's step."""
    x = tf.convert_to_tensor(x, tf.float32)
    delta = tf.zeros_like(x)
    shape = geometry.batch_shape(x)
    for _ in tf.range(num_steps):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(delta)
            objective = tf.reduce_sum(losses.attack_loss(model(x + delta, training=False), y, "ce"))
        gradient = tape.gradient(objective, delta)
        best_delta, best_loss = delta, tf.fill(tf.shape(x)[:1], float("-inf"))
        for norm, epsilon, step_size in zip(norms, epsilons, step_sizes):
            candidate = delta + step_size * geometry.ascent_direction(gradient, norm=norm)
            candidate = geometry.project(candidate, norm=norm, epsilon=epsilon)
            candidate = tf.clip_by_value(x + candidate, 0.0, 1.0) - x
            loss = losses.attack_loss(model(x + candidate, training=False), y, "ce")
            better = tf.reshape(loss > best_loss, shape)
            best_delta = tf.where(better, candidate, best_delta)
            best_loss = tf.maximum(loss, best_loss)
        delta = tf.stop_gradient(best_delta)
    return x + delta


_PGD = compiled(_pgd)
_TRADES = compiled(_trades_pgd)
_MSD = compiled(_msd)


def pgd(
    model,
    x,
    y,
    *,
    norm: str,
    epsilon: float,
    step_size: float,
    num_steps: int,
    random_start: bool = True,
    loss: str = "ce",
    jit_compile: str | bool = "auto",
    seed=None,
) -> tf.Tensor:
    """Projected gradient ascent on the loss within the `norm` ball around `x`.

    Args:
      model: a callable `model(images, training=False) -> logits` (a Keras model).
      x: float32 images in [0, 1], shape (B, H, W, C).
      y: int labels, shape (B,).
      norm: `linf` or `l2`.
      epsilon: radius of the ball (0 returns `x`).
      step_size: length of each step in `norm`.
      num_steps: number of gradient steps, exactly (0 returns the random start).
      random_start: start from a uniform random point of the ball.
      loss: `ce` (cross-entropy) or `cw` (Carlini-Wagner margin, kappa 50).
      jit_compile: `auto`, `true` or `false` (see `compile.resolve_jit_compile`).
      seed: None, or a shape-[2] integer tensor making the random start stateless (a pure
        function of the seed; used by training so that a resumed run is bit-identical).

    Returns:
      The adversarial images, float32, same shape as `x`, inside the ball and inside [0, 1],
      with no gradient flowing back to `x` or the model.

    Raises:
      ValueError: an argument outside its range (the message names it and the value).
    """
    if loss not in budget.LOSSES:
        raise ValueError(f"loss must be one of {budget.LOSSES}, got {loss!r}")
    budget.check_budget(norm=norm, epsilon=epsilon, step_size=step_size, num_steps=num_steps)
    return _PGD(
        jit_compile,
        model,
        x,
        y,
        norm,
        scalar(epsilon),
        scalar(step_size),
        int(num_steps),
        bool(random_start),
        loss,
        seed,
    )


def pgd_with(attack: budget.Attack, model, x, y, *, jit_compile="auto", seed=None) -> tf.Tensor:
    """`pgd` with the budget of an `Attack` (how the learners and the validation call it)."""
    return pgd(
        model,
        x,
        y,
        norm=attack.norm,
        epsilon=attack.epsilon,
        step_size=attack.step_size,
        num_steps=attack.num_steps,
        random_start=attack.random_start,
        loss=attack.loss,
        jit_compile=jit_compile,
        seed=seed,
    )


def fgsm(model, x, y, *, epsilon: float, norm: str = "linf", jit_compile="auto") -> tf.Tensor:
    """Fast gradient (sign) method (Goodfellow et al. 2015): one step of length epsilon from x."""
    return pgd(
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


def trades_pgd(
    model,
    x,
    *,
    epsilon: float,
    step_size: float,
    num_steps: int,
    jit_compile: str | bool = "auto",
    seed=None,
) -> tf.Tensor:
    """The TRADES inner maximisation: l_inf PGD on the KL divergence from the clean prediction.

    Args:
      model: `model(images, training=False) -> logits`.
      x: float32 images in [0, 1].
      epsilon, step_size, num_steps: the l_inf ball, step and exact number of steps.
      jit_compile: compile policy (see `compile.resolve_jit_compile`).
      seed: None or a shape-[2] integer tensor for a stateless random start (see `pgd`).

    Returns:
      Adversarial images inside the l_inf ball and [0, 1], without gradient.
    """
    budget.check_budget(norm="linf", epsilon=epsilon, step_size=step_size, num_steps=num_steps)
    return _TRADES(jit_compile, model, x, scalar(epsilon), scalar(step_size), int(num_steps), seed)


def msd(
    model,
    x,
    y,
    *,
    norms: tuple[str, ...] = ("linf", "l2"),
    epsilons: tuple[float, ...],
    step_sizes: tuple[float, ...],
    num_steps: int,
    jit_compile: str | bool = "auto",
) -> tf.Tensor:
    """Multi steepest descent over several norms (Maini et al. 2020), from a zero start.

    Every step takes the steepest-ascent step of each norm from the current perturbation,
    projects it onto that norm's ball and keeps, per example, the one with the highest loss.

    Returns:
      Adversarial images in [0, 1], each inside the ball of one of `norms`.
    """
    if not len(norms) == len(epsilons) == len(step_sizes) or not norms:
        raise ValueError(
            f"msd needs one epsilon and step size per norm, got {norms}, {epsilons}, {step_sizes}"
        )
    for norm, epsilon, step_size in zip(norms, epsilons, step_sizes):
        budget.check_budget(norm=norm, epsilon=epsilon, step_size=step_size, num_steps=num_steps)
    return _MSD(
        jit_compile,
        model,
        x,
        y,
        tuple(norms),
        tuple(scalar(e) for e in epsilons),
        tuple(scalar(s) for s in step_sizes),
        int(num_steps),
    )
