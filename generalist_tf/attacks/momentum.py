"""Momentum iterative method (Dong et al., CVPR 2018), l_inf, on the cross-entropy."""

from __future__ import annotations

import tensorflow as tf

from generalist_tf.attacks import budget, geometry, losses
from generalist_tf.attacks.compile import compiled, scalar


def _mim(model, x, y, epsilon, step_size, num_steps, decay):
    """Momentum iterative method (Dong et al. 2018, Algorithm 1) in l_inf, from x itself."""
    x = tf.convert_to_tensor(x, tf.float32)
    l1_axes = list(range(1, x.shape.rank))
    accumulated = tf.zeros_like(x)
    x_adv = x
    for _ in tf.range(num_steps):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x_adv)
            objective = tf.reduce_sum(losses.attack_loss(model(x_adv, training=False), y, "ce"))
        gradient = geometry.finite_or_zero(
            tape.gradient(objective, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO),
            x_adv,
        )
        # g_{t+1} = mu * g_t + grad / ||grad||_1 (Eq. 6); TINY keeps a zero gradient at zero.
        l1 = tf.reduce_sum(tf.abs(gradient), axis=l1_axes, keepdims=True)
        accumulated = decay * accumulated + gradient / (l1 + losses.TINY)
        x_adv = geometry.feasible(
            x, x_adv + step_size * tf.sign(accumulated), norm="linf", epsilon=epsilon
        )
        x_adv = tf.stop_gradient(x_adv)
    return x_adv


_MIM = compiled(_mim)


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
      jit_compile: compile policy (see `compile.resolve_jit_compile`).

    Returns:
      Adversarial images inside the l_inf ball and [0, 1], without gradient.

    Raises:
      ValueError: an argument outside its range (the message names it and the value).
    """
    budget.check_budget(norm="linf", epsilon=epsilon, step_size=step_size, num_steps=num_steps)
    if not decay >= 0:
        raise ValueError(f"decay must be >= 0, got {decay}")
    return _MIM(
        jit_compile, model, x, y, scalar(epsilon), scalar(step_size), num_steps, scalar(decay)
    )
