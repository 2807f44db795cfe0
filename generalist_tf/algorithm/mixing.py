"""The weight arithmetic of Generalist: EMA, interpolation and redistribution (pure functions).

Every function works on lists of variables of networks with the same architecture, in the same
order (`mixable_weights`), and updates them in place with `assign`: no variable is created while
training. Called in cross-replica context, an assign to a mirrored variable updates every
replica with the same value (inside `strategy.run` it would let the replicas diverge silently).
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf


def mixable_weights(network: keras.Model) -> list:
    """All floating-point weights of a network: trainable ones and BatchNorm moving statistics.

    Integer state (dropout seed generators) is left out: it is not a parameter to average.
    """
    return [w for w in network.weights if tf.as_dtype(w.dtype).is_floating]


def ema_decay(count: tf.Tensor, alpha: float) -> tf.Tensor:
    """The official EMA decay with warm-up, `min(alpha, (k + 1) / (k + 10))`, k updates so far."""
    k = tf.cast(count, tf.float32)
    return tf.minimum(tf.constant(alpha, tf.float32), (k + 1.0) / (k + 10.0))


def ema_update(averages: Sequence, values: Sequence, decay: tf.Tensor) -> None:
    """`a <- d * a + (1 - d) * v` for every pair (Generalist, Alg. 1: the EMA of each learner)."""
    for average, value in zip(averages, values, strict=True):
        d = tf.cast(decay, average.dtype)
        average.assign(d * average + (1.0 - d) * tf.convert_to_tensor(value, average.dtype))


def interpolate(weight_lists: Sequence[Sequence], coefficients: tf.Tensor) -> list[tf.Tensor]:
    """`sum_i c_i * W_i`, variable by variable (Generalist: the weighted mix of the learners).

    Every coefficient is applied, zero and one included: a weight of 0 contributes exactly 0 and
    a weight of 1 passes the learner through exactly (the official code skipped a learner whose
    weight was falsy, which is a different function at beta = 0).
    """
    mixed = []
    for group in zip(*weight_lists, strict=True):
        total = 0.0
        for i, variable in enumerate(group):
            total += tf.cast(coefficients[i], variable.dtype) * tf.convert_to_tensor(variable)
        mixed.append(total)
    return mixed


def copy_weights(targets: Sequence, sources: Sequence) -> None:
    """`t <- s` for every pair (Generalist: redistribution of the global weights)."""
    for target, source in zip(targets, sources, strict=True):
        target.assign(tf.convert_to_tensor(source, target.dtype))
