"""Checkpoints that resume a run exactly: every learner, optimizer, EMA, G, best G and counter.

Each object is tracked explicitly under a stable name (`network_<task>`, `optimizer_<task>`,
`ema_<task>`, `global`, `best`, ...): `tf.train.Checkpoint(model=parent)` alone would follow
Keras' tracking, which saves nothing for sub-models held in Python lists.

A checkpoint is numbered by the global step it was taken after. Saving is a commit: the data
files are written first, then the `checkpoint` state file is replaced atomically. A crash in
between leaves the previous checkpoint as the latest, never a half-written one.

The data order (a pure function of seed and step, `data.train_dataset`) and the attacks' random
starts (stateless, seeded by seed, step and replica) need no state beyond the step.
"""

from __future__ import annotations

import errno
import os
import signal
import time

import keras
import tensorflow as tf
from absl import logging

from generalist_tf import distribute, files

CHECKPOINTS = "checkpoints"
# Fault injection for the resume tests: "kill_in_save:N" SIGKILLs this process during its N-th
# save, after the data files are written and before the save is committed; "kill_after_step:N"
# SIGKILLs it right after global step N (not a checkpoint step in general); "disk_full_in_save:N"
# makes the N-th save fail as a full disk does, after its data files are written.
FAULT_ENV = "GENERALIST_TF_FAULT"


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
    """Saves every epoch (and every `every_steps` steps), keeps the last N, restores the latest.

    Args:
      workdir: the run directory (checkpoints go to `<workdir>/checkpoints`).
      model: the `generalist.Generalist`.
      strategy: the strategy the model was built under.
      keep: number of checkpoints kept.
      every_steps: also save every this many steps (0: only at epoch ends).
      restart: move existing checkpoints aside and start over.
      chief: whether this process writes. Under `MultiWorkerMirroredStrategy` every worker must
        take part in a save; the others write to a scratch directory that is deleted. Every
        worker restores from the chief's directory (a shared file system), so a restarted job
        resumes all workers from the same step.
    """

    def __init__(
        self, workdir, model, *, strategy, keep=3, every_steps=0, restart=False, chief=True
    ):
        self.keep = keep
        self.every_steps = every_steps
        self.restart = restart
        self.chief = chief
        self.directory = self.shared_directory = os.path.join(workdir, CHECKPOINTS)
        if not chief:
            # Named by task, not process: a worker restarted after a kill reuses and then
            # deletes the scratch of its killed predecessor.
            scratch = f".worker-scratch-{distribute.task_name()}"
            self.directory = os.path.join(workdir, scratch)
        with strategy.scope():
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.checkpoint = tf.train.Checkpoint(step=self.step, **tracked_objects(model))
        # `restore` creates the checkpoint's save counter, `write` never does: create it now so
        # that a written checkpoint matches a restoring one object for object.
        self.checkpoint.save_counter  # noqa: B018
        self.saves = 0

    def restore_or_initialize(self) -> int:
        """Restores the latest checkpoint (unless restarting); returns the global step to resume at.

        Raises:
          ValueError: the latest checkpoint cannot be read or does not match the model.
        """
        if self.restart and self.chief and os.path.isdir(self.directory):
            kept = f"{self.directory}.before-restart-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(self.directory, kept)
            logging.warning("--restart: previous checkpoints moved to %s", kept)
        if not self.chief and tf.io.gfile.exists(self.directory):
            tf.io.gfile.rmtree(self.directory)
        os.makedirs(self.directory, exist_ok=True)
        # With --restart a worker does not restore: the chief may not have moved the old files yet.
        restart_worker = self.restart and not self.chief
        latest = None if restart_worker else tf.train.latest_checkpoint(self.shared_directory)
        if latest is None:
            return 0
        # All or nothing: a checkpoint of another network (a shape differs: ValueError, or a
        # variable is missing: AssertionError) or a damaged one (OpError) is refused in one line.
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as e:
            _silence_unrestored_value_warnings()
            reason = (
                f"it is damaged ({type(e).__name__})"
                if isinstance(e, tf.errors.OpError)
                else "it does not match this model (another --model, width, depth or learners "
                "wrote it)"
            )
            raise ValueError(
                f"checkpoint {latest} cannot be restored: {reason}; pass --restart to start over "
                "(the old checkpoints are kept aside)"
            ) from None
        logging.info("resumed from %s at step %d", latest, int(self.step.numpy()))
        return int(self.step.numpy())

    def _committed(self, prefix: str) -> bool:
        state = tf.train.get_checkpoint_state(self.directory)
        names = [os.path.basename(p) for p in state.all_model_checkpoint_paths] if state else []
        return os.path.basename(prefix) in names

    def save(self, step: int) -> str:
        """Saves the state after global `step` and commits it; drops checkpoints beyond `keep`."""
        self.step.assign(step)
        prefix = os.path.join(self.directory, f"ckpt-{step}")
        self.saves += 1
        try:
            path = self.checkpoint.write(prefix)
            _maybe_fault("disk_full_in_save", self.saves)
        except (tf.errors.OpError, OSError) as e:
            # Nothing of an uncommitted checkpoint stays: neither TensorFlow's `<prefix>_temp`
            # staging directory nor data files of this step that the state file does not name.
            # The committed checkpoints before it are untouched.
            leftovers = tf.io.gfile.glob(prefix + "_temp*")
            if not self._committed(prefix):
                leftovers += tf.io.gfile.glob(prefix + ".*")
            for leftover in leftovers:
                if tf.io.gfile.isdir(leftover):
                    tf.io.gfile.rmtree(leftover)
                else:
                    tf.io.gfile.remove(leftover)
            if files.is_disk_full(e):
                raise files.DiskFullError(prefix) from None
            raise
        _maybe_fault("kill_in_save", self.saves)
        # Names relative to the directory: a moved or copied workdir still resumes from its own
        # files, not from the place it was written in.
        name = os.path.basename(path)
        state = tf.train.get_checkpoint_state(self.directory)
        previous = [os.path.basename(p) for p in state.all_model_checkpoint_paths] if state else []
        names = [p for p in previous if p != name] + [name]
        kept, dropped = names[-self.keep :], names[: -self.keep]
        _write_state(self.directory, name, kept)
        for old in dropped:
            for f in tf.io.gfile.glob(os.path.join(self.directory, old) + ".*"):
                tf.io.gfile.remove(f)
        return path

    def callback(self, start_step: int) -> keras.callbacks.Callback:
        """A callback that saves at every epoch end and every `every_steps` steps."""
        return _Saver(self, start_step)

    def cleanup(self) -> None:
        """Deletes a non-chief worker's scratch directory."""
        if not self.chief:
            tf.io.gfile.rmtree(self.directory) if tf.io.gfile.exists(self.directory) else None


def _write_state(directory: str, latest: str, kept: list[str]) -> None:
    """Commits `latest` (and the `kept` list) in `<directory>/checkpoint`, atomically.

    The file is TensorFlow's `CheckpointState` in protobuf text format, which
    `tf.train.latest_checkpoint` and `tf.train.get_checkpoint_state` read; written here because
    TensorFlow's writer (`tf.compat.v1.train.update_checkpoint_state`) is deprecated. Staged in a
    temporary file and renamed over the old state, so a crash leaves the previous commit.
    """
    lines = [f'model_checkpoint_path: "{latest}"']
    lines += [f'all_model_checkpoint_paths: "{name}"' for name in kept]
    path = os.path.join(directory, "checkpoint")
    staging = f"{path}.tmp{os.getpid()}"
    with tf.io.gfile.GFile(staging, "w") as f:
        f.write("\n".join(lines) + "\n")
    tf.io.gfile.rename(staging, path, overwrite=True)


def _maybe_fault(point: str, count: int) -> None:
    fault = os.environ.get(FAULT_ENV, "")
    if fault != f"{point}:{count}":
        return
    if point == "disk_full_in_save":
        raise OSError(errno.ENOSPC, "No space left on device (fault injection)")
    logging.warning("fault injection %s: killing this process", fault)
    os.kill(os.getpid(), signal.SIGKILL)


# What TensorFlow logs when a partly restored checkpoint object is garbage-collected (often at
# exit, after our one-line error): the restore error already says it all.
_UNRESTORED_WARNINGS = (
    "Detecting that an object or model or tf.train.Checkpoint is being deleted",
    "Value in checkpoint could not be found in the restored object",
    "An attribute in the restored object could not be found in the checkpoint",
)


def _silence_unrestored_value_warnings() -> None:
    """Drops TensorFlow's deferred unrestored-value warnings from here on (a failed restore)."""
    tf.get_logger().addFilter(
        lambda record: not str(record.getMessage()).startswith(_UNRESTORED_WARNINGS)
    )


class _Saver(keras.callbacks.Callback):
    """Counts global steps; saves after every `every_steps` steps and after every epoch.

    A step that ends an epoch is saved only in `on_epoch_end`, after validation and the choice of
    the best G, so a run resumed from it repeats nothing and skips nothing. With
    `steps_per_execution` N > 1, Keras calls `on_train_batch_end` once per N steps (with the last
    step's index): the count follows that index, and a save falls on the first call at or after
    each multiple of `every_steps`.
    """

    def __init__(self, manager: Manager, start_step: int):
        super().__init__()
        self.manager = manager
        self.global_step = start_step
        self._steps_this_epoch = 0
        self._done_this_epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._steps_this_epoch = self.params.get("steps") or 0
        self._done_this_epoch = 0

    def on_train_batch_end(self, batch, logs=None):
        previous = self.global_step
        self.global_step += batch + 1 - self._done_this_epoch
        self._done_this_epoch = batch + 1
        for step in range(previous + 1, self.global_step + 1):
            _maybe_fault("kill_after_step", step)
        every = self.manager.every_steps
        last_of_epoch = batch + 1 == self._steps_this_epoch
        if every and self.global_step // every > previous // every and not last_of_epoch:
            self.manager.save(self.global_step)

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(self.global_step)
