"""Keras callbacks of Generalist training: the mixing schedule, the choice of the best G, NaNs.

Keras epochs are 0-indexed; the paper's schedules are in 1-indexed epochs, so epoch `e` below is
always `keras_epoch + 1`.
"""

from __future__ import annotations

import math
import os

import keras
from absl import logging

from generalist_tf import names
from generalist_tf.algorithm import schedules


class GeneralistCallback(keras.callbacks.Callback):
    """Hands the epoch's schedule values to the model's per-step mixing and logs them (Alg. 1).

    Contract:
      * `on_epoch_begin` computes the epoch's mixing weights w_i(e) and whether it is a
        communication epoch, and hands them to `model.set_schedule`; every `train_step` of the
        epoch then runs the EMA of each learner, the interpolation into G and, in a
        communication epoch with mode `every_batch`, the redistribution (`generalist`: steps
        2-4, for any `steps_per_execution`). With mode `once_per_period` the redistribution
        runs once, at `on_epoch_end`. `on_train_end` turns the per-step mixing off again.
      * Logs: `mixing/<learner>` weights, `communication/redistributions` per epoch and the
        `learning_rate`, added to the epoch logs so TensorBoard records them.
      * Assumes: `model` is a `generalist.Generalist`.

    Args:
      mixing: per-learner weight schedules (`schedules.PiecewiseLinear`), summing to 1.
      communication: when to redistribute (`schedules.Communication`); None never does
        (single-learner baselines).
      epochs: total number of epochs.
    """

    def __init__(self, mixing, communication: schedules.Communication | None, epochs: int):
        super().__init__()
        self.mixing = mixing
        self.communication = communication
        self.epochs = epochs
        self._weights = None
        self._communicating = False
        self._every_batch = False
        self._steps = 0

    def schedule(self, epoch: int, learner_names) -> tuple[list[float], bool, bool]:
        """The schedule values of 1-indexed `epoch`: the weights w_i(e), whether it is a
        communication epoch, and whether every one of its steps redistributes (`every_batch`)."""
        weights = schedules.mixing_weights(self.mixing, learner_names, epoch, self.epochs)
        communicating = self.communication is not None and (
            self.communication.is_communication_epoch(epoch, self.epochs)
        )
        every_batch = communicating and self.communication.mode == "every_batch"
        return weights, communicating, every_batch

    def on_epoch_begin(self, epoch, logs=None):
        self._weights, self._communicating, self._every_batch = self.schedule(
            epoch + 1, self.model.learner_names
        )
        self._steps = 0
        self.model.set_schedule(self._weights, self._every_batch)

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution N, Keras reports once per N steps with the last step's index.
        self._steps = batch + 1

    def on_epoch_end(self, epoch, logs=None):
        redistributions = self._steps if self._every_batch else 0
        if self._communicating and self.communication.mode == "once_per_period":
            self.model.redistribute()
            redistributions = 1
        if logs is not None:
            for name, weight in zip(self.model.learner_names, self._weights):
                logs[f"mixing/{name}"] = weight
            logs["communication/redistributions"] = redistributions
            optimizer = self.model.learners[0].optimizer
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))

    def on_train_end(self, logs=None):
        self.model.stop_mixing()


CLEAN_KEY = names.metric_key(names.GLOBAL, "clean_accuracy")
PGD_KEY = names.metric_key(names.GLOBAL, "pgd_accuracy")


def selection_score(logs: dict, rule: str, clean_floor: float = 0.0) -> float | None:
    """The score of an epoch under a selection rule; None when the epoch was not validated.

    `clean_plus_pgd` is the official rule: clean + PGD accuracy of G. With a floor, an epoch
    whose clean accuracy reaches it scores 2 more than the rule's value (at most 2), so it beats
    every epoch below the floor, while a run in which no epoch reaches it (a baseline under a
    floor set for Generalist) still keeps its best epoch instead of none.
    """
    if CLEAN_KEY not in logs and rule not in logs:
        return None
    if rule == names.CLEAN_PLUS_PGD:
        value = float(logs[CLEAN_KEY]) + float(logs[PGD_KEY])
    else:
        value = float(logs[rule])
    clean = float(logs.get(CLEAN_KEY, 1.0))
    return value + (2.0 if clean >= clean_floor else 0.0)


class BestGlobalCallback(keras.callbacks.Callback):
    """Keeps G of the epoch with the best validation score in `model.best_network`.

    The score is a validation-split metric (never the test split; `selection_score`); epochs
    that were not validated (`--val_every`) are skipped, and ties keep the earlier epoch.

    Args:
      rule: `clean_plus_pgd` or a key of the epoch logs, e.g. `val_global/pgd_accuracy`.
      clean_floor: the clean-accuracy floor of `selection_score`.
    """

    def __init__(self, rule: str, clean_floor: float = 0.0):
        super().__init__()
        self.rule = rule
        self.clean_floor = clean_floor

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not any(key.startswith("val_") for key in logs):
            return  # not a validated epoch
        if self.rule != names.CLEAN_PLUS_PGD and self.rule not in logs:
            raise ValueError(
                f"select_metric {self.rule!r} is not in the epoch logs; available: {sorted(logs)}"
            )
        score = selection_score(logs, self.rule, self.clean_floor)
        if math.isfinite(score) and score > float(self.model.best_score.numpy()):
            self.model.save_best(score, epoch + 1)
            logging.info("epoch %d: new best %s = %.4f", epoch + 1, self.rule, score)


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; training stopped before the next checkpoint."""


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite learner loss, before anything else is saved.

    Raising from `on_train_batch_end` ends `fit` mid-epoch, so the epoch-end checkpoint and the
    exports are not written: the last good checkpoint stays the latest.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        for key, value in (logs or {}).items():
            if key.endswith("/loss") and not math.isfinite(float(value)):
                raise TrainingDivergedError(
                    f"{key} is {float(value)} at epoch {self._epoch + 1} step {batch + 1}; "
                    "training stopped and the last good checkpoint is kept"
                )


FREE_WINDOW = "free_window"
# Beside the `.keras` files: the window's last epoch and the learners' names.
FREE_WINDOW_META = "epoch.json"


class FreeWindowCallback(keras.callbacks.Callback):
    """Keeps every learner's EMA as it stands at the end of each free window.

    Contract:
      * `on_epoch_begin` of a communication epoch that follows a free one (no redistribution in
        the epoch before) writes each learner's EMA to `<directory>/<learner>.keras` and the
        window's last epoch to `<directory>/FREE_WINDOW_META`, replacing the previous window's. Runs
        before the epoch's first step, so before its redistribution: when training ends, the
        files hold the last free window before the final redistribution (at the end of training
        the learners equal G, so their final EMAs are one network, not two).
      * Reads: `model.learners` and their `ema_network`s. Writes only files.
      * The frontier (`generalist_tf.tradeoff`) interpolates between these networks.

    Args:
      directory: where the `.keras` files go (created).
      communication: the run's `schedules.Communication` (None: never fires).
      epochs: total number of epochs.
    """

    def __init__(self, directory: str, communication, epochs: int):
        super().__init__()
        self.directory = directory
        self.communication = communication
        self.epochs = epochs

    def _communicates(self, epoch: int) -> bool:
        return epoch >= 1 and self.communication.is_communication_epoch(epoch, self.epochs)

    def on_epoch_begin(self, epoch, logs=None):
        e = epoch + 1
        if self.communication is None or not self._communicates(e) or self._communicates(e - 1):
            return
        from generalist_tf import files

        os.makedirs(self.directory, exist_ok=True)
        for learner in self.model.learners:
            path = os.path.join(self.directory, f"{learner.name}.keras")
            with files.staged(path) as staging:  # a finished file is replaced only by a whole one
                learner.ema_network.save(staging, overwrite=True)
        files.write_json(
            os.path.join(self.directory, FREE_WINDOW_META),
            {"last_free_epoch": e - 1, "learners": list(self.model.learner_names)},
        )
