"""Keras callbacks of Generalist training: the weight mixing and the choice of the best G.

Keras epochs are 0-indexed; the paper's schedules are in 1-indexed epochs, so epoch `e` below is
always `keras_epoch + 1`.
"""

from __future__ import annotations

import math

import keras
from absl import logging

from generalist_tf import schedules


class GeneralistCallback(keras.callbacks.Callback):
    """Mixes the learners into the global learner and redistributes it (Generalist, Alg. 1).

    Contract:
      * Hooks: `on_epoch_begin` fixes the epoch's mixing weights w_i(e) and whether it is a
        communication epoch; `on_train_batch_end` (after every step with
        `steps_per_execution=1`, see below) calls `model.update_global(w)`, which updates every
        learner's EMA and then G <- d*G + (1-d) * sum_i w_i EMA_i, with d = min(alpha, (k+1)/(k+10));
        in a communication epoch it then calls `model.redistribute()` (mode `every_batch`), or
        once at `on_epoch_end` (mode `once_per_period`).
      * Reads: all floating weights of every learner's network, BatchNorm moving statistics
        included. Writes: the EMA networks, G and, when redistributing, the learners' networks
        (their optimizer state is kept).
      * Assumes: `model` is a `generalist.Generalist` whose networks share one architecture and
        variable order; the arithmetic runs in compiled cross-replica functions.
      * Logs: `mixing/<learner>` weights, `communication/redistributions` per epoch and the
        `learning_rate`, added to the epoch logs so TensorBoard records them.
      * With `steps_per_execution` > 1 (`model.mix_in_step`): `on_epoch_begin` hands the weights
        and the communication flag to `model.set_mixing`, and `train_step` mixes after every step
        (mode `every_batch`; `once_per_period` still redistributes here at the epoch's end).

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
        self._redistributions = 0

    def on_epoch_begin(self, epoch, logs=None):
        e = epoch + 1
        self._weights = schedules.mixing_weights(
            self.mixing, self.model.learner_names, e, self.epochs
        )
        self._communicating = self.communication is not None and (
            self.communication.is_communication_epoch(e, self.epochs)
        )
        self._redistributions = 0
        self._every_batch = self._communicating and self.communication.mode == "every_batch"
        if self.model.mix_in_step:
            self.model.set_mixing(self._weights, self._every_batch)

    def on_train_batch_end(self, batch, logs=None):
        if self.model.mix_in_step:
            # train_step mixed after each of the steps up to `batch` (this epoch's fit).
            self._redistributions = batch + 1 if self._every_batch else 0
            return
        self.model.update_global(self._weights)
        if self._every_batch:
            self.model.redistribute()
            self._redistributions += 1

    def on_epoch_end(self, epoch, logs=None):
        if self._communicating and self.communication.mode == "once_per_period":
            self.model.redistribute()
            self._redistributions += 1
        if logs is not None:
            for name, weight in zip(self.model.learner_names, self._weights):
                logs[f"mixing/{name}"] = weight
            logs["communication/redistributions"] = self._redistributions
            optimizer = self.model.learners[0].optimizer
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))


CLEAN_KEY = "val_global/clean_accuracy"
PGD_KEY = "val_global/pgd_accuracy"


def selection_score(logs: dict, rule: str, clean_floor: float = 0.0) -> float | None:
    """The score of an epoch under a selection rule; None when the epoch was not validated.

    `clean_plus_pgd` is the official rule: clean + PGD accuracy of G. With a floor, an epoch
    whose clean accuracy reaches it scores 2 more than the rule's value (at most 2), so it beats
    every epoch below the floor, while a run in which no epoch reaches it (a baseline under a
    floor set for Generalist) still keeps its best epoch instead of none.
    """
    if CLEAN_KEY not in logs and rule not in logs:
        return None
    if rule == "clean_plus_pgd":
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
        if self.rule != "clean_plus_pgd" and self.rule not in logs:
            raise ValueError(
                f"--select_metric: {self.rule!r} is not in the epoch logs; available: {sorted(logs)}"
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
