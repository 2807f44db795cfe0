"""The Generalist parent model: owns the base learners and the global learner G.

One `fit()` drives every learner (the Keras GAN/distiller pattern). `train_step` is the whole
per-step path of Alg. 1, for any `steps_per_execution`:

  1. every base learner takes its own step on the same global batch (`learners`);
  2. the EMA of each learner: EMA_i <- d EMA_i + (1-d) theta_i, d = min(alpha, (k+1)/(k+10));
  3. the interpolation into G: G <- d G + (1-d) sum_i w_i(e) EMA_i;
  4. in a communication epoch, the redistribution: theta_i <- G.

Steps 2-4 run in cross-replica context (`merge_call`), so an assign to a mirrored variable
updates every replica with the same value. The schedule values they read, w_i(e) and whether
this epoch redistributes, are handed over once per epoch by `callbacks.GeneralistCallback`
(`set_schedule`); until then (a bare `train_step`, a timing loop) steps 2-4 are off.
`test_step` evaluates G and every learner's EMA on clean and PGD inputs; `call` is G, the only
network that is served.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import keras
import tensorflow as tf

from generalist_tf import attacks, compat, defaults, names
from generalist_tf.algorithm import callbacks as callbacks_lib
from generalist_tf.algorithm import mixing
from generalist_tf.algorithm.learners import BaseLearner, per_example_ce

GLOBAL = names.GLOBAL
BEST = "best"


@dataclasses.dataclass(frozen=True)
class AlgorithmSettings:
    """What `fit` needs to attach the algorithm's callbacks; a `Generalist` is built with it.

    Attributes:
      build_network: builds a fresh network of the architecture (`global_model`, exports).
      mixing: per-learner weight schedules of G (`schedules.PiecewiseLinear`).
      communication: `schedules.Communication`, or None (never redistributed).
      epochs: the training length the schedules are fractions of.
      select_metric, select_clean_floor: the best-G rule (`callbacks.selection_score`).
    """

    build_network: Callable[[], keras.Model]
    mixing: Mapping
    communication: object
    epochs: int
    select_metric: str = names.CLEAN_PLUS_PGD
    select_clean_floor: float = 0.0


class Generalist(compat.KerasLoopFixes, keras.Model):
    """Base learners + global learner (Keras' loops as fixed by `compat.KerasLoopFixes`).

    Args:
      learners: the base learners, built in the same strategy scope, all starting from the same
        weights as `global_network`.
      global_network: G, same architecture.
      best_network: same architecture; holds G at its best validation score.
      algorithm: the mixing, communication and selection `fit` runs (`AlgorithmSettings`).
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
        algorithm: AlgorithmSettings,
        eval_attack,
        ema_alpha: float = defaults.EMA_DECAY,
        jit_compile="auto",
        seed: int = 0,
    ):
        super().__init__(name="generalist")
        if not isinstance(algorithm, AlgorithmSettings):
            raise TypeError(
                f"algorithm must be an AlgorithmSettings, got {type(algorithm).__name__}"
            )
        self.algorithm = algorithm
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
        self.attack_jit_compile = jit_compile
        self.seed = int(seed)
        self.ema_updates = keras.Variable(0, dtype="int64", trainable=False, name="ema_updates")
        self.best_score = keras.Variable(-1.0, dtype="float32", trainable=False, name="best_score")
        self.best_epoch = keras.Variable(0, dtype="int64", trainable=False, name="best_epoch")
        # The epoch's schedule values read by steps 2-4 of `train_step`; the callback sets them
        # at every epoch start (`set_schedule`), so they need no checkpoint.
        self._mixing_on = tf.Variable(False, trainable=False, name="mixing_on")
        self._coefficients = tf.Variable(
            tf.zeros([len(learners)]), trainable=False, name="mixing_coefficients"
        )
        self._redistributing = tf.Variable(False, trainable=False, name="redistributing")
        self._evaluate_best = False
        self._evaluate_emas = True
        self._eval_metrics = {}
        for prefix in [BEST] + self.evaluated_names():
            loss, clean, pgd = names.EVAL_METRICS
            self._eval_metrics[prefix] = {
                loss: keras.metrics.Mean(name=f"{prefix}_eval_loss"),
                clean: keras.metrics.SparseCategoricalAccuracy(name=f"{prefix}_clean"),
                pgd: keras.metrics.SparseCategoricalAccuracy(name=f"{prefix}_pgd"),
            }
        self._mix = tf.function(self._mix_fn)
        self._redistribute = tf.function(self._redistribute_fn)
        self._save_best = tf.function(self._save_best_fn)
        # Every network was built by its functional constructor; nothing is left to build.
        self.built = True

    # --- the algorithm's settings and the Keras entry points users call ------------------------
    @property
    def build_network(self):
        """Builds a fresh network of G's architecture (`AlgorithmSettings.build_network`)."""
        return self.algorithm.build_network

    def algorithm_callbacks(self) -> list:
        """The mixing (Alg. 1) and best-G callbacks, in the order they must run."""
        a = self.algorithm
        return [
            callbacks_lib.GeneralistCallback(a.mixing, a.communication, a.epochs),
            callbacks_lib.BestGlobalCallback(a.select_metric, a.select_clean_floor),
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
            # A dataset carries its own order (ours: `data.train_dataset`); Keras' default
            # shuffle=True would only warn that it ignores itself.
            kwargs.setdefault("shuffle", False)
        empty = isinstance(validation_data, tf.data.Dataset) and (
            next(iter(validation_data.take(1)), None) is None
        )
        if empty:
            raise ValueError("validation_data is empty: the best G would be chosen on nothing")
        ours = self.algorithm_callbacks()
        if validation_data is None:
            # No validation, no selection: `best_model()` then refuses (a timing run, say).
            ours = [c for c in ours if not isinstance(c, callbacks_lib.BestGlobalCallback)]
        ours_types = {type(c) for c in ours}
        theirs = list(callbacks or [])
        for callback in theirs:
            if type(callback) in ours_types:
                raise ValueError(
                    f"callbacks: {type(callback).__name__} is attached by Generalist.fit itself "
                    "(its settings come from build_generalist: select_metric, mixing, "
                    "communication); remove it from callbacks"
                )
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
        """One step of Alg. 1's inner loop: every learner's step, then the weight updates."""
        logs = {}
        for learner in self.learners:  # step 1: each base learner on the same batch
            for key, value in learner.train_step(data).items():
                logs[f"{learner.name}/{key}"] = value
        # Steps 2-4 after the learners' updates, once per global step, in cross-replica context.
        tf.distribute.get_replica_context().merge_call(lambda _: self._scheduled_mix_fn())
        return logs

    def evaluate(self, *args, return_dict=False, **kwargs):
        """`keras.Model.evaluate`, one batch per call, each number over the whole split.

        One step per call (`compat.KerasLoopFixes.evaluate_one_step`: Keras' N-step loop hits
        keras-team/keras#19246); evaluation, validation included, is cheap next to training.

        Keras returns the mean over replicas of each replica's own running result, which
        weighs the replicas equally: wrong when a batch splits unevenly (a partial last batch,
        64 + 63 examples). The metrics' state is summed over replicas when read in
        cross-replica context, so their results, read here, are the one-device numbers.
        """
        logs = self.evaluate_one_step(*args, return_dict=True, **kwargs)
        for prefix in self.evaluated_networks():
            for key, metric in self._eval_metrics[prefix].items():
                logs[f"{prefix}/{key}"] = float(metric.result())
        return logs if return_dict else compat.flatten_logs(self, logs)

    def test_step(self, data):
        """Loss, clean and PGD accuracy of G and of each learner's EMA (inference mode)."""
        x, y = data
        logs = {}
        for prefix, network in self.evaluated_networks().items():
            metrics = self._eval_metrics[prefix]
            logits = network(x, training=False)
            x_adv = attacks.pgd_with(
                self.eval_attack,
                network,
                x,
                y,
                jit_compile=self.attack_jit_compile,
                seed=self._eval_seed(),
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

    # --- steps 2-4 of Alg. 1: the weight updates after the learners' steps ----------------------
    def set_schedule(self, coefficients: Sequence[float], redistributing: bool) -> None:
        """The epoch's weights w_i(e) and whether each of its steps ends with a redistribution;
        from now on every `train_step` runs steps 2-4 (`callbacks.GeneralistCallback`)."""
        self._coefficients.assign(tf.constant(coefficients, tf.float32))
        self._redistributing.assign(bool(redistributing))
        self._mixing_on.assign(True)

    def stop_mixing(self) -> None:
        """`train_step` runs the learners' steps only (step 1), as before any `set_schedule`."""
        self._mixing_on.assign(False)

    def mix(self, coefficients: Sequence[float], redistribute: bool = False) -> None:
        """Steps 2-4 once, outside `train_step` (tests, tools): EMAs, G, optionally theta_i <- G."""
        self._mix(tf.constant(coefficients, tf.float32), tf.constant(bool(redistribute)))

    def redistribute(self) -> None:
        """Step 4 alone: theta_i <- G for every learner, weights and BN statistics; the
        optimizer state is kept (`--communication_mode=once_per_period` calls it per epoch)."""
        self._redistribute()

    def save_best(self, score: float, epoch: int) -> None:
        """Copies G into `best_network` and records its validation score and (1-indexed) epoch."""
        self._save_best(tf.constant(score, tf.float32), tf.constant(epoch, tf.int64))

    def _scheduled_mix_fn(self):
        """Steps 2-4 with the epoch's schedule values, if a schedule was handed over."""

        def mix():
            self._mix_fn(tf.convert_to_tensor(self._coefficients), self._redistributing)
            return tf.constant(True)

        tf.cond(tf.convert_to_tensor(self._mixing_on), mix, lambda: tf.constant(False))

    def _mix_fn(self, coefficients, redistributing):
        decay = mixing.ema_decay(self.ema_updates, self.ema_alpha)
        ema_lists = []
        for learner in self.learners:  # step 2: the EMA of each learner
            emas = mixing.mixable_weights(learner.ema_network)
            mixing.ema_update(emas, mixing.mixable_weights(learner.network), decay)
            ema_lists.append(emas)
        # Step 3: the interpolation of the EMAs into G, with the same d.
        mixed = mixing.interpolate(ema_lists, coefficients)
        mixing.ema_update(mixing.mixable_weights(self.global_network), mixed, decay)
        self.ema_updates.assign_add(1)

        def redistribute():  # step 4, in a communication epoch
            self._redistribute_fn()
            return tf.constant(True)

        tf.cond(tf.convert_to_tensor(redistributing), redistribute, lambda: tf.constant(False))

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
