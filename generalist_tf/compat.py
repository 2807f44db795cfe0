"""Workarounds for Keras / TensorFlow behaviour that the algorithm should not have to know about.

Every Keras/TF workaround of the package lives here (Keras 3.15.1, TF 2.21):
  * `KerasLoopFixes`: a `keras.Model` mixin: N training steps per call without Keras' N-step
    loop (keras-team/keras#19246), evaluation one step per call, Keras' pre-loop build from
    replica 0's slice of the first batch (`first_replica_batch`).
  * `MultiWorkerMirroredStrategy`: a strategy whose `reduce` takes what Keras passes it
    (tensorflow/tensorflow#72388).
  * `mirrored_strategy` / `fresh_collective_keys`: several MirroredStrategies in one process
    (tests, the bench) without reusing a collective key at another shape.

Each names the upstream code it works around and has a test (`tests/test_compat.py`,
`tests/test_multiworker.py`) that reproduces the upstream behaviour on a plain Keras model, so
the test fails (and says to delete the workaround) once upstream changes; except the collective
keys, whose upstream behaviour aborts the process that shows it (it is exercised by every
two-replica test instead).
"""

from __future__ import annotations

import tensorflow as tf
from keras.src.backend.tensorflow import trainer as keras_trainer


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


class KerasLoopFixes:
    """Mixin (before `keras.Model` in the bases) for models trained under `MirroredStrategy`.

    * `make_train_function`: with `steps_per_execution` N > 1, N steps unrolled in one call.
      Keras' own N-step loop (a `tf.while_loop` over a `tf.cond` around `strategy.run`) fails
      under a multi-replica `MirroredStrategy` with "You must feed a value for placeholder
      tensor 'while/cond/Placeholder'" for any model (keras-team/keras#19246), and with an
      infinite dataset it runs N steps in the last call of an epoch even when fewer remain.
      This loop calls the same one-step function N times with no control flow around it; the
      steps of every `fit` must be a multiple of N (`train.py` checks).
    * `evaluate_one_step`: Keras' `evaluate` with `steps_per_execution` 1 (the same upstream
      bug), also when `fit` validates through it.
    * `_maybe_symbolic_build`: Keras' pre-loop build from replica 0's slice of the first batch
      (`first_replica_batch`), and none at all once everything is built: Keras 3.15 runs it
      before every `fit` and `evaluate`, drawing a batch from a new distributed iterator even
      when its own test then finds nothing to build (30 validations of the quickstart paid for
      30 such iterators).
    """

    def make_train_function(self, force=False):
        if self.steps_per_execution == 1:
            return super().make_train_function(force)
        if self.train_function is not None and not force:
            return self.train_function
        strategy = self.distribute_strategy
        steps = int(self.steps_per_execution)

        def one_step(data):
            logs = strategy.run(self.train_step, args=(data,))
            return keras_trainer.reduce_per_replica(logs, strategy, reduction="auto")

        @tf.function
        def multi_step(iterator):
            for _ in range(steps):
                logs = one_step(next(iterator))
            return logs

        self.train_function = multi_step
        return multi_step

    def evaluate_one_step(self, *args, **kwargs):
        """`keras.Model.evaluate` with one step per call, whatever `steps_per_execution` is."""
        saved, self.steps_per_execution = self.steps_per_execution, 1
        # `fit` builds its validation iterator (Keras' private `_eval_epoch_iterator`) with N
        # before calling evaluate; left at N it would hand one batch per N to a one-step function.
        cached = getattr(self, "_eval_epoch_iterator", None)
        if cached is not None:
            cached.steps_per_execution = 1
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.steps_per_execution = saved

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._nothing_to_build():
            return  # Keras would still draw a batch from a new distributed iterator to check.
        if iterator is not None and self._distribute_strategy is not None:
            data_batch = first_replica_batch(iterator, self.distribute_strategy)
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _nothing_to_build(self) -> bool:
        """Keras' own test in `Trainer._symbolic_build` (3.15): every layer, the compiled
        metrics and loss and the optimizer are built, so its symbolic pass would do nothing."""
        built = getattr(self, "optimizer", None) is None or self.optimizer.built
        for name in ("_compile_metrics", "_compile_loss"):
            part = getattr(self, name, None)
            built = built and (part is None or part.built)
        return built and all(layer.built for layer in self._flatten_layers())


# --- multi-worker `fit` ----------------------------------------------------------------------
# Under `MultiWorkerMirroredStrategy` (MWMS) Keras' TensorFlow trainer reduces through
# `strategy.reduce` (`keras/src/backend/tensorflow/trainer.py`, `reduce_per_replica` and
# `_maybe_symbolic_build`); with `MirroredStrategy` it takes a local path instead. Two of those
# calls pass values that `Strategy.reduce` rejects, so `fit` fails before its first step:
#
# 1. `_maybe_symbolic_build` reduces the first batch, a tuple `(x, y)` of `PerReplica`, with
#    `strategy.reduce("MEAN", batch, axis=None)`. `reduce` takes one value, not a nest:
#    "Attempt to convert a value (PerReplica:{...}) with an unsupported type (<class
#    '...PerReplica'>) to a Tensor".
# 2. `reduce_per_replica(..., "auto")` reduces every step's logs (scalar metric results) with
#    `strategy.reduce("MEAN", v, axis=0)`: "Invalid reduction dimension 0 for input with 0
#    dimensions" (tensorflow/tensorflow#72388).
#
# `MultiWorkerMirroredStrategy.reduce` below maps over nests and reduces a rank-0 value across
# replicas only (`axis=None`): for scalar logs that is the mean over replicas, what Keras' local
# path computes (`tf.reduce_mean(local_results, axis=0)`). It changes only calls that raise
# upstream. Delete the class (and use `tf.distribute.MultiWorkerMirroredStrategy` in
# `distribute.make_strategy`) once `tests/test_multiworker.py` passes without it.


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


def fresh_collective_keys() -> None:
    """Moves `MirroredStrategy`'s collective key base past every key an earlier strategy used.

    Every MirroredStrategy numbers its collective ops from the same key base and TF remembers a
    key's tensor shape for the whole process: a second strategy in one process (a test, a bench
    group) that reuses a key with another shape aborts every collective of the process. TF's own
    tests move the base the same way (`tensorflow/python/distribute/mirrored_strategy_test.py`).
    """
    tf.distribute.MirroredStrategy._collective_key_base += 100_000


def mirrored_strategy(devices) -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy on `devices` whose collective keys no earlier strategy used."""
    fresh_collective_keys()
    return tf.distribute.MirroredStrategy(list(devices))


# --- private names --------------------------------------------------------------------------
# Every Keras / TensorFlow private name the package reads, and the version each was checked
# against. Only this module touches them (`tests/test_compat.py` scans the package for a private
# attribute used anywhere else, and checks that each one below still exists where it is read).
PRIVATE_NAMES = {
    "keras.layers.Layer._flatten_layers": "3.15.1",
    "keras.layers.BatchNormalization._moments": "3.15.1",
    "keras.layers.BatchNormalization._reduction_axes": "3.15.1 (set by build)",
    "keras.Model._flatten_metrics_in_order": "3.15.1",
    "keras.Model._distribute_strategy": "3.15.1 (set by the trainer)",
    "keras.Model._maybe_symbolic_build": "3.15.1",
    "keras.Model._eval_epoch_iterator": "3.15.1 (set by fit)",
    "keras.Model._compile_metrics": "3.15.1 (set by compile)",
    "keras.Model._compile_loss": "3.15.1 (set by compile)",
    "keras.optimizers.Optimizer._get_variable_index": "3.15.1",
    "keras.src.backend.tensorflow.trainer.reduce_per_replica": "3.15.1",
    "tf.distribute.MirroredStrategy._collective_key_base": "TF 2.21.0",
}


def all_layers(layer) -> list:
    """`layer` and every layer inside it, however nested (attributes included, not only the
    functional graph's `layers`): Keras' private `Layer._flatten_layers`."""
    return list(layer._flatten_layers(include_self=True, recursive=True))


def batch_moments(batch_norm, x):
    """Mean and biased variance of `x` over a BatchNormalization layer's reduction axes, reduced
    over every replica when the layer is `synchronized` (Keras' private `_moments`)."""
    return batch_norm._moments(x, None)


def reduction_axes(batch_norm) -> list[int]:
    """The axes a built BatchNormalization layer reduces over (Keras' private attribute)."""
    return batch_norm._reduction_axes


def flatten_logs(model, logs: dict):
    """Keras' list form of `evaluate`'s logs (`return_dict=False`): its private ordering."""
    return model._flatten_metrics_in_order(logs)


def variable_index(optimizer, variable) -> int:
    """The slot index of `variable` in a Keras optimizer (its private `_get_variable_index`)."""
    return optimizer._get_variable_index(variable)
