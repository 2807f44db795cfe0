"""Checkpoints that resume a run: every learner, optimizer, EMA, G, best G and counter.

Each object is tracked explicitly under a stable name (`learner_<task>`, `optimizer_<task>`,
`network_<task>`, `ema_<task>`, `global`, `best`, ...): `tf.train.Checkpoint(model=parent)`
alone would follow Keras' tracking, which saves nothing for sub-models held in Python lists.
"""

from __future__ import annotations

import os
import time

import keras
import tensorflow as tf
from absl import logging

CHECKPOINTS = "checkpoints"


def tracked_objects(model) -> dict:
    """Everything a resumed run needs, by checkpoint key."""
    objects = {
        "global": model.global_network,
        "best": model.best_network,
        "ema_updates": model.ema_updates,
        "best_score": model.best_score,
        "best_epoch": model.best_epoch,
    }
    for learner in model.learners:
        objects[f"network_{learner.name}"] = learner.network
        objects[f"ema_{learner.name}"] = learner.ema_network
        objects[f"optimizer_{learner.name}"] = learner.optimizer
    return objects


class Manager:
    """Saves at the end of every epoch, keeps the last N, restores the latest on start.

    Args:
      config: the run's `Config` (workdir, restart, keep_checkpoints).
      model: the `generalist.Generalist`.
      strategy: the strategy the model was built under.
      chief: whether this process writes (only the chief writes; other workers write to a
        scratch directory that is deleted, as multi-worker saving requires every worker to save).
    """

    def __init__(self, config, model, *, strategy, chief: bool = True):
        self.config = config
        self.chief = chief
        with strategy.scope():
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.checkpoint = tf.train.Checkpoint(epoch=self.epoch, **tracked_objects(model))
        self.directory = os.path.join(config.workdir, CHECKPOINTS)
        if not chief:
            self.directory = os.path.join(config.workdir, f".worker-scratch-{os.getpid()}")
        self.manager = None

    def restore_or_initialize(self) -> int:
        """Restores the latest checkpoint (unless --restart) and returns the epoch to start at."""
        if self.config.restart and self.chief and os.path.isdir(self.directory):
            kept = f"{self.directory}.before-restart-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(self.directory, kept)
            logging.warning("--restart: previous checkpoints moved to %s", kept)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.directory, max_to_keep=self.config.keep_checkpoints
        )
        latest = self.manager.latest_checkpoint
        if latest is None:
            return 0
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as e:
            raise ValueError(
                f"checkpoint {latest} cannot be restored ({type(e).__name__}); fix it, or pass "
                "--restart to start over (old checkpoints are kept aside)"
            ) from None
        logging.info("resumed from %s at epoch %d", latest, int(self.epoch.numpy()))
        return int(self.epoch.numpy())

    def save(self, epoch: int) -> None:
        """Saves the state at the end of 1-indexed `epoch`."""
        self.epoch.assign(epoch)
        self.manager.save(checkpoint_number=epoch)

    def callback(self) -> keras.callbacks.Callback:
        return _SaveEveryEpoch(self)


class _SaveEveryEpoch(keras.callbacks.Callback):
    def __init__(self, manager: Manager):
        super().__init__()
        self.manager = manager

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(epoch + 1)
