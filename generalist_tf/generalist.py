"""The Generalist parent model: owns the base learners and the global learner G.

One `fit()` drives every learner (the Keras GAN/distiller pattern): `train_step` runs each
learner's own `train_step` on the same global batch. The weight mixing itself (EMAs, G,
redistribution) is done by `callbacks.GeneralistCallback` through `update_global` and
`redistribute`, compiled functions called in cross-replica context. `test_step` evaluates G and
every learner's EMA on clean and PGD inputs; `call` is G, the only network that is served.

With `steps_per_execution` N > 1 Keras runs N train steps in one compiled loop and calls the
callback once per N steps, too late for a per-step EMA. Then (`mix_in_step`) the callback
only sets the epoch's coefficients and communication flag (`set_mixing`) and `train_step` itself
runs the same `update_global` / `redistribute` arithmetic after every step, in cross-replica
context through `merge_call`: the same numbers as N = 1.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf
from keras.src.backend.tensorflow import trainer as keras_trainer

from generalist_tf import callbacks as callbacks_lib
from generalist_tf import compat, mixing
from generalist_tf.learners import BaseLearner, per_example_ce

GLOBAL = "global"
BEST = "best"


class Generalist(keras.Model):
    """Base learners + global learner.

    Args:
      learners: the base learners, built in the same strategy scope, all starting from the same
        weights as `global_network`.
      global_network: G, same architecture.
      best_network: same architecture; holds G at its best validation score.
      eval_attack: the attack of `test_step` (a `learners.Attack`).
      ema_alpha: the EMA decay ceiling (official 0.999); 0 disables averaging.
      jit_compile: compile policy of the evaluation attack.
      seed: seed of the evaluation attack's random start.
    """

    def __init__(
        self,
        learners: Sequence[BaseLearner],
        global_network: keras.Model,
        best_network: keras.Model,
        *,
        eval_attack,
        ema_alpha: float = 0.999,
        jit_compile="auto",
        seed: int = 0,
    ):
        super().__init__(name="generalist")
        self.learner_names = tuple(learner.name for learner in learners)
        if len(set(self.learner_names)) != len(self.learner_names):
            raise ValueError(f"learner names must be unique, got {self.learner_names}")
        # One attribute per learner: tf.train.Checkpoint follows attributes, while learners kept
        # only in a Python list attribute would be saved as nothing, silently.
        for learner in learners:
            setattr(self, f"learner_{learner.name}", learner)
        self.global_network = global_network
        self.best_network = best_network
        self.best_network.trainable = False
        self.global_network.trainable = False
        self.eval_attack = eval_attack
        self.ema_alpha = float(ema_alpha)
        self.jit_compile = jit_compile
        self.seed = int(seed)
        self.ema_updates = keras.Variable(0, dtype="int64", trainable=False, name="ema_updates")
        self.best_score = keras.Variable(-1.0, dtype="float32", trainable=False, name="best_score")
        self.best_epoch = keras.Variable(0, dtype="int64", trainable=False, name="best_epoch")
        # The epoch's mixing weights and communication flag for in-step mixing; the callback
        # sets them at every epoch start, so they need no checkpoint.
        self._coefficients = tf.Variable(
            tf.zeros([len(learners)]), trainable=False, name="mixing_coefficients"
        )
        self._communicating = tf.Variable(False, trainable=False, name="communicating")
        self._evaluate_best = False
        self._evaluate_emas = True
        self._eval_metrics = {}
        for prefix in [BEST] + self.evaluated_names():
            self._eval_metrics[prefix] = {
                "loss": keras.metrics.Mean(name=f"{prefix}_eval_loss"),
                "clean_accuracy": keras.metrics.SparseCategoricalAccuracy(name=f"{prefix}_clean"),
                "pgd_accuracy": keras.metrics.SparseCategoricalAccuracy(name=f"{prefix}_pgd"),
            }
        self._update_global = tf.function(self._update_global_fn)
        self._redistribute = tf.function(self._redistribute_fn)
        self._save_best = tf.function(self._save_best_fn)
        # Every network was built by its functional constructor; nothing is left to build.
        self.built = True

    # --- the algorithm's settings and the Keras entry points users call ------------------------
    def configure_algorithm(
        self,
        *,
        build_network,
        mixing,
        communication,
        epochs: int,
        select_metric: str = "clean_plus_pgd",
        select_clean_floor: float = 0.0,
    ) -> None:
        """What `fit` needs to attach the algorithm's callbacks (`api.build_generalist` calls it).

        Args:
          build_network: builds a fresh network of the architecture (for `global_model`).
          mixing: per-learner weight schedules of G; communication: `schedules.Communication`
            or None; epochs: the training length the schedules are fractions of.
          select_metric, select_clean_floor: the best-G rule (`callbacks_lib.selection_score`).
        """
        self.build_network = build_network
        self._algorithm = (mixing, communication, epochs, select_metric, select_clean_floor)

    def algorithm_callbacks(self) -> list:
        """The mixing (Alg. 1) and best-G callbacks, in the order they must run."""
        mixing, communication, epochs, select_metric, floor = self._algorithm
        return [
            callbacks_lib.GeneralistCallback(mixing, communication, epochs),
            callbacks_lib.BestGlobalCallback(select_metric, floor),
            callbacks_lib.NaNGuard(),
        ]

    def compile(self, steps_per_execution: int = 1, **kwargs):
        """Keras' compile for the parent model: the learners hold their own optimizers (given
        at `build_generalist`), so no optimizer or loss is taken here."""
        unexpected = sorted(set(kwargs) - {"optimizer", "jit_compile"})
        if unexpected or kwargs.get("optimizer") is not None:
            raise ValueError(
                f"Generalist.compile takes only steps_per_execution (the learners' optimizers "
                f"are set by build_generalist), got {unexpected or ['optimizer']}"
            )
        super().compile(optimizer=None, jit_compile=False, steps_per_execution=steps_per_execution)

    def fit(self, x=None, *args, callbacks=None, validation_data=None, **kwargs):
        """`keras.Model.fit` with the algorithm's callbacks first, then the user's.

        The best G is chosen on `validation_data`; without it nothing is selected.

        Checks the first training batch before any work: images in [0, 1] and labels below
        the number of classes of the network.
        """
        if isinstance(x, tf.data.Dataset):
            _check_batch(x, self.global_network, "x")
        empty = isinstance(validation_data, tf.data.Dataset) and (
            next(iter(validation_data.take(1)), None) is None
        )
        if empty:
            raise ValueError("validation_data is empty: the best G would be chosen on nothing")
        ours = self.algorithm_callbacks() if hasattr(self, "_algorithm") else []
        if validation_data is None:
            # No validation, no selection: `best_model()` then refuses (a timing run, say).
            ours = [c for c in ours if not isinstance(c, callbacks_lib.BestGlobalCallback)]
        ours_types = {type(c) for c in ours}
        theirs = [c for c in callbacks or [] if type(c) not in ours_types]
        return super().fit(
            x, *args, callbacks=ours + theirs, validation_data=validation_data, **kwargs
        )

    def global_model(self) -> keras.Model:
        """G after the last step, as a new plain `keras.Model` sharing nothing with the learners."""
        return self._copy(self.global_network)

    def best_model(self) -> keras.Model:
        """G of the best validated epoch (the exported one), as a new plain `keras.Model`.

        Raises:
          ValueError: no epoch was validated (`fit` without `validation_data`).
        """
        if int(self.best_epoch.numpy()) == 0:
            raise ValueError(
                "best_model: no validated epoch yet; fit with validation_data (or use "
                "global_model() for G after the last step)"
            )
        return self._copy(self.best_network)

    def _copy(self, network) -> keras.Model:
        copy = self.build_network()
        copy.set_weights(network.get_weights())
        return copy

    @property
    def mix_in_step(self) -> bool:
        """Whether `train_step` mixes after every step: `compile(steps_per_execution=N > 1)`,
        where the callback runs once per N steps and only calls `set_mixing` each epoch."""
        return self.steps_per_execution > 1

    @property
    def learners(self) -> list[BaseLearner]:
        return [getattr(self, f"learner_{name}") for name in self.learner_names]

    def evaluated_names(self) -> list[str]:
        """Prefixes of the evaluated networks: `global`, then `<learner>_ema` for each learner."""
        return [GLOBAL] + [f"{name}_ema" for name in self.learner_names]

    def set_evaluated(self, *, best: bool, emas: bool) -> None:
        """Which networks `test_step` evaluates besides G: the best G (prefix `best`, for the
        final report) and each learner's EMA (skipped by `--noval_emas` during training)."""
        if (best, emas) != (self._evaluate_best, self._evaluate_emas):
            self._evaluate_best, self._evaluate_emas = best, emas
            self.test_function = None  # Keras re-traces the test step on the next evaluate().

    def evaluated_networks(self) -> dict[str, keras.Model]:
        """The networks `test_step` evaluates, by metric prefix."""
        networks = {BEST: self.best_network} if self._evaluate_best else {}
        networks[GLOBAL] = self.global_network
        if self._evaluate_emas:
            for learner in self.learners:
                networks[f"{learner.name}_ema"] = learner.ema_network
        return networks

    def call(self, x, training=False):
        return self.global_network(x, training=False)

    @property
    def metrics(self):
        learner_metrics = [m for learner in self.learners for m in learner.metrics]
        eval_metrics = [m for group in self._eval_metrics.values() for m in group.values()]
        return learner_metrics + eval_metrics

    def train_step(self, data):
        """Every learner takes one step on the same batch (Generalist, Alg. 1: inner loop)."""
        logs = {}
        for learner in self.learners:
            for key, value in learner.train_step(data).items():
                logs[f"{learner.name}/{key}"] = value
        if self.mix_in_step:
            # After the learners' updates, as the callback's on_train_batch_end would.
            tf.distribute.get_replica_context().merge_call(lambda _: self._mix_step_fn())
        return logs

    def make_train_function(self, force=False):
        """Keras' train function; with `steps_per_execution` N > 1, N steps unrolled in one call.

        Keras 3.15's own N-step loop (a `tf.while_loop` over a `tf.cond` around `strategy.run`)
        fails under a multi-replica `MirroredStrategy` with "You must feed a value for
        placeholder tensor 'while/cond/Placeholder'" for any model (keras-team/keras#19246;
        reproduced here with a one-layer model on 2 logical CPUs), and with an infinite dataset
        it runs N steps in the last call of an epoch even when fewer remain. This loop calls the
        same one-step function N times with no control flow around it; `train.py` requires the
        steps of every `fit` to be a multiple of N.
        """
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

    def evaluate(self, *args, return_dict=False, **kwargs):
        """`keras.Model.evaluate`, one batch per call, each number over the whole split.

        Keras' N-step evaluation loop hits keras-team/keras#19246 under `MirroredStrategy`;
        evaluation (validation included, which `fit` runs through here) is cheap next to
        training, so it keeps Keras' one-step path.

        Keras returns the mean over replicas of each replica's own running result, which
        weighs the replicas equally: wrong when a batch splits unevenly (a partial last batch,
        64 + 63 examples). The metrics' state is summed over replicas when read in
        cross-replica context, so their results, read here, are the one-device numbers.
        """
        logs = self._evaluate_one_step(*args, return_dict=True, **kwargs)
        for prefix in self.evaluated_networks():
            for key, metric in self._eval_metrics[prefix].items():
                logs[f"{prefix}/{key}"] = float(metric.result())
        return logs if return_dict else self._flatten_metrics_in_order(logs)

    def _evaluate_one_step(self, *args, **kwargs):
        saved, self.steps_per_execution = self.steps_per_execution, 1
        # `fit` builds its validation iterator (Keras' private `_eval_epoch_iterator`) with N
        # before calling here; left at N it would hand one batch per N to a one-step function.
        cached = getattr(self, "_eval_epoch_iterator", None)
        if cached is not None:
            cached.steps_per_execution = 1
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.steps_per_execution = saved

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' pre-loop build, from replica 0's slice of the first batch (`compat`)."""
        if iterator is not None and self._distribute_strategy is not None:
            data_batch = compat.first_replica_batch(iterator, self.distribute_strategy)
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def test_step(self, data):
        """Loss, clean and PGD accuracy of G and of each learner's EMA (inference mode)."""
        x, y = data
        logs = {}
        for prefix, network in self.evaluated_networks().items():
            metrics = self._eval_metrics[prefix]
            logits = network(x, training=False)
            x_adv = self.eval_attack(
                network, x, y, jit_compile=self.jit_compile, seed=self._eval_seed()
            )
            # Per example, so the loss is the split's mean however its batches are cut.
            metrics["loss"].update_state(per_example_ce(y, logits))
            metrics["clean_accuracy"].update_state(y, logits)
            metrics["pgd_accuracy"].update_state(y, network(x_adv, training=False))
            for key, metric in metrics.items():
                logs[f"{prefix}/{key}"] = metric.result()
        return logs

    def _eval_seed(self):
        """A fixed stateless seed per replica: evaluation is deterministic given --seed."""
        context = tf.distribute.get_replica_context()
        replica = 0 if context is None else context.replica_id_in_sync_group
        seed = tf.constant([self.seed, 0x5EED], tf.int64)
        return tf.random.experimental.stateless_fold_in(seed, tf.cast(replica, tf.int64))

    # --- weight mixing, called by the callback in cross-replica context ------------------------
    def update_global(self, coefficients: Sequence[float]) -> None:
        """EMA of every learner, then G <- d*G + (1-d) * sum_i w_i EMA_i (one call per step)."""
        self._update_global(tf.constant(coefficients, tf.float32))

    def redistribute(self) -> None:
        """theta_i <- G for every learner: weights and BN statistics; optimizer state is kept."""
        self._redistribute()

    def set_mixing(self, coefficients: Sequence[float], communicating: bool) -> None:
        """The epoch's weights w_i(e) and whether it redistributes every step (in-step mixing)."""
        self._coefficients.assign(tf.constant(coefficients, tf.float32))
        self._communicating.assign(bool(communicating))

    def save_best(self, score: float, epoch: int) -> None:
        """Copies G into `best_network` and records its validation score and (1-indexed) epoch."""
        self._save_best(tf.constant(score, tf.float32), tf.constant(epoch, tf.int64))

    def _update_global_fn(self, coefficients):
        decay = mixing.ema_decay(self.ema_updates, self.ema_alpha)
        ema_lists = []
        for learner in self.learners:
            emas = mixing.mixable_weights(learner.ema_network)
            mixing.ema_update(emas, mixing.mixable_weights(learner.network), decay)
            ema_lists.append(emas)
        mixed = mixing.interpolate(ema_lists, coefficients)
        mixing.ema_update(mixing.mixable_weights(self.global_network), mixed, decay)
        self.ema_updates.assign_add(1)

    def _mix_step_fn(self):
        """One step's mixing in cross-replica context: EMA and G, then redistribution if on."""
        self._update_global_fn(tf.convert_to_tensor(self._coefficients))

        def redistribute():
            self._redistribute_fn()
            return tf.constant(True)

        tf.cond(tf.convert_to_tensor(self._communicating), redistribute, lambda: tf.constant(False))

    def _redistribute_fn(self):
        global_weights = mixing.mixable_weights(self.global_network)
        for learner in self.learners:
            mixing.copy_weights(mixing.mixable_weights(learner.network), global_weights)

    def _save_best_fn(self, score, epoch):
        mixing.copy_weights(
            mixing.mixable_weights(self.best_network), mixing.mixable_weights(self.global_network)
        )
        self.best_score.assign(score)
        self.best_epoch.assign(epoch)


def _check_batch(dataset: tf.data.Dataset, network: keras.Model, argument: str) -> None:
    """One-line errors for a training pipeline that does not fit the network (first batch)."""
    element = next(iter(dataset.take(1)))
    if not isinstance(element, (tuple, list)) or len(element) < 2:
        raise ValueError(f"{argument} must yield (images, labels) batches")
    images, labels = element[0], element[1]
    if images.dtype.is_floating:
        low, high = float(tf.reduce_min(images)), float(tf.reduce_max(images))
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{argument}: images must be floats in [0, 1] (normalise inside the network), "
                f"got values in [{low:.4g}, {high:.4g}]"
            )
    classes = int(network.output_shape[-1])
    top = int(tf.reduce_max(labels))
    if top >= classes or int(tf.reduce_min(labels)) < 0:
        raise ValueError(
            f"{argument}: labels must lie in [0, {classes}) for a network with {classes} logits, "
            f"got label {top}"
        )
