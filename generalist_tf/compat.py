"""Workarounds for Keras / TensorFlow behaviour that the algorithm should not have to know about.

Each entry names the upstream code it works around and has a test in `tests/test_compat.py`
that reproduces the upstream behaviour on a plain Keras model, so the test fails (and says to
delete the workaround) once upstream changes.
"""

from __future__ import annotations

import tensorflow as tf


def first_replica_batch(iterator, strategy: tf.distribute.Strategy):
    """The first batch of a Keras epoch iterator, as replica 0 sees it.

    Works around Keras 3 `TensorFlowTrainer._maybe_symbolic_build`
    (keras/src/backend/tensorflow/trainer.py, seen in 3.15): before `evaluate` / `fit` it takes
    the first distributed batch and merges it with `strategy.reduce("MEAN", ..., axis=None)`,
    which adds the replicas' slices elementwise. When that batch does not split evenly (a
    partial last batch that is also the first one: an evaluation split smaller than the
    evaluation batch, 127 examples on 2 replicas) the slices differ in shape (64 vs 63) and
    `AddN` fails. The symbolic build needs only the batch's structure and per-example shapes,
    which replica 0's slice has (it is never empty when the batch is not).
    """
    for _, _, it in iterator:
        batch = next(it)
        break
    else:
        return None

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return tf.nest.map_structure(local, batch)
