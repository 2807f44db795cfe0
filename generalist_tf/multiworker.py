"""Multi-worker `fit` on Keras 3.15.1 / TF 2.21: a `MultiWorkerMirroredStrategy` Keras can reduce with.

Under `MultiWorkerMirroredStrategy` (MWMS) Keras' TensorFlow trainer reduces through
`strategy.reduce` (`keras/src/backend/tensorflow/trainer.py`, `reduce_per_replica` and
`_maybe_symbolic_build`); with `MirroredStrategy` it takes a local path instead. Two of those
calls pass values that `Strategy.reduce` rejects, so `fit` fails before its first step:

1. `_maybe_symbolic_build` reduces the first batch, a tuple `(x, y)` of `PerReplica`, with
   `strategy.reduce("MEAN", batch, axis=None)`. `reduce` takes one value, not a nest:
   "Attempt to convert a value (PerReplica:{...}) with an unsupported type (<class
   '...PerReplica'>) to a Tensor".
2. `reduce_per_replica(..., "auto")` reduces every step's logs (scalar metric results) with
   `strategy.reduce("MEAN", v, axis=0)`: "Invalid reduction dimension 0 for input with 0
   dimensions" (tensorflow/tensorflow#72388).

`MultiWorkerMirroredStrategy.reduce` below maps over nests and reduces a rank-0 value across
replicas only (`axis=None`): for scalar logs that is the mean over replicas, what Keras' local
path computes (`tf.reduce_mean(local_results, axis=0)`). It changes only calls that raise
upstream. Delete the class (and use `tf.distribute.MultiWorkerMirroredStrategy` in
`distribute.make_strategy`) once `tests/test_multiworker.py` passes without it.
"""

from __future__ import annotations

import tensorflow as tf


def _scalar_axis(value, axis):
    """`axis`, or None for a rank-0 value (there is no batch axis to reduce within a replica)."""
    if axis is None:
        return None
    components = value.values if isinstance(value, tf.distribute.DistributedValues) else [value]
    if all(getattr(c, "shape", None) is not None and c.shape.rank == 0 for c in components):
        return None
    return axis


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`tf.distribute.MultiWorkerMirroredStrategy` whose `reduce` accepts nests and scalars.

    Keras still recognises it (`isinstance` checks), so every other multi-worker code path of
    `fit`, `evaluate` and `predict` is unchanged. See the module docstring for the two errors.
    """

    def reduce(self, reduce_op, value, axis):
        """`Strategy.reduce` applied to each leaf of `value`; rank-0 leaves use `axis=None`."""
        parent = super().reduce
        return tf.nest.map_structure(
            lambda v: parent(reduce_op, v, axis=_scalar_axis(v, axis)),
            value,
            expand_composites=False,
        )
