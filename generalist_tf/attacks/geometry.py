"""The threat model's geometry shared by every attack: balls, steps, random starts, the box.

All functions work on batches of images (B, H, W, C) with per-example norms; `epsilon` may be a
Python number or a float32 tensor.
"""

from __future__ import annotations

import tensorflow as tf

# Added under the square root of an l_2 norm, so a zero gradient normalises to zero, not NaN.
_NORM_EPSILON = 1e-12


def batch_shape(x: tf.Tensor) -> list[int]:
    """Shape that broadcasts a per-example value against images of `x`'s rank."""
    return [-1] + [1] * (x.shape.rank - 1)


def per_example_norm(v: tf.Tensor) -> tf.Tensor:
    """l_2 norm over all but the batch axis, shaped to broadcast against `v`."""
    axes = list(range(1, v.shape.rank))
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes, keepdims=True) + _NORM_EPSILON)


def project(delta: tf.Tensor, *, norm: str, epsilon) -> tf.Tensor:
    """Projects a perturbation onto the `norm` ball of radius `epsilon`.

    The l_2 case scales down only perturbations outside the ball (clip to the ball, do not
    normalise onto its surface).
    """
    if norm == "linf":
        return tf.clip_by_value(delta, -epsilon, epsilon)
    return delta * tf.minimum(1.0, epsilon / per_example_norm(delta))


def feasible(x: tf.Tensor, candidate: tf.Tensor, *, norm: str, epsilon) -> tf.Tensor:
    """Projects onto the `norm` ball around `x`, then onto [0, 1].

    Clipping to [0, 1] moves every coordinate towards x (which lies in the box), so the result
    never leaves the ball again.
    """
    candidate = x + project(candidate - x, norm=norm, epsilon=epsilon)
    return tf.clip_by_value(candidate, 0.0, 1.0)


def ascent_direction(gradient: tf.Tensor, *, norm: str) -> tf.Tensor:
    """The steepest-ascent direction of unit `norm` for a gradient: sign, or l_2-normalised."""
    if norm == "linf":
        return tf.sign(gradient)
    return gradient / per_example_norm(gradient)


def finite_or_zero(gradient: tf.Tensor | None, like: tf.Tensor) -> tf.Tensor:
    """A gradient with missing or non-finite entries as zero (a masked model gives no NaN image)."""
    if gradient is None:
        return tf.zeros_like(like)
    return tf.where(tf.math.is_finite(gradient), gradient, tf.zeros_like(gradient))


def uniform(shape, low, high, dtype, seed):
    if seed is None:
        return tf.random.uniform(shape, low, high, dtype=dtype)
    return tf.random.stateless_uniform(shape, seed, low, high, dtype=dtype)


def normal(shape, dtype, seed):
    if seed is None:
        return tf.random.normal(shape, dtype=dtype)
    return tf.random.stateless_normal(shape, seed, dtype=dtype)


def random_init(x: tf.Tensor, *, norm: str, epsilon, seed=None) -> tf.Tensor:
    """A random perturbation: uniform in the l_inf cube, or uniform in the l_2 ball.

    Args:
      seed: None (stateful TF random ops) or a shape-[2] integer tensor: then the perturbation is
        a pure function of the seed (what makes a resumed training run bit-identical).
    """
    if norm == "linf":
        return uniform(tf.shape(x), -epsilon, epsilon, x.dtype, seed)
    sub = (
        (None, None)
        if seed is None
        else (
            tf.random.experimental.stateless_fold_in(seed, 1),
            tf.random.experimental.stateless_fold_in(seed, 2),
        )
    )
    direction = normal(tf.shape(x), x.dtype, sub[0])
    direction /= per_example_norm(direction)
    dim = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), x.dtype)
    radius = uniform(tf.shape(x)[:1], 0.0, 1.0, x.dtype, sub[1]) ** (1.0 / dim)
    return direction * epsilon * tf.reshape(radius, batch_shape(x))
