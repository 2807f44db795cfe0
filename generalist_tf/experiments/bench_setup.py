"""What the bench times, built from flagfiles: configs, strategies, trainers and mixing-only steps."""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from typing import Callable

import keras
import tensorflow as tf

from generalist_tf import (
    cli,
    compat,
    config,
    experiment,
)
from generalist_tf.algorithm import callbacks


# --- building what is timed ---------------------------------------------------------------------
def make_config(flagfile: str, **overrides) -> config.Config:
    """The validated Config of a flagfile (relative to the repository root) plus overrides."""
    # The bench writes nothing; a config needs a --workdir all the same.
    workdir = os.path.join(tempfile.gettempdir(), "generalist_tf_bench")
    return cli.config_from_flagfile(flagfile, **{"workdir": workdir, **overrides})


def replica_devices() -> list[str]:
    """The devices replicas run on: the GPUs if any, else the (logical) CPUs."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [d.name for d in devices]


def make_strategy(devices: list[str]) -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy with collective keys no earlier strategy of this process used."""
    return compat.mirrored_strategy(devices)


@dataclasses.dataclass
class Trainer:
    """A Generalist model, its compiled distributed step, and two epochs' schedule values.

    `schedule` is a non-communication epoch's (weights w_i(e), redistributing) and
    `schedule_communication` a communication epoch's (None if the run has none), as
    `callbacks.GeneralistCallback` hands them to the model at the start of such an epoch.
    """

    model: keras.Model
    step: Callable[[], object]
    schedule: tuple[list[float], bool]
    schedule_communication: tuple[list[float], bool] | None


def make_trainer(
    cfg: config.Config, build_network, strategy, batch, steps_per_epoch: int
) -> Trainer:
    """Builds `cfg`'s Generalist under `strategy` and a step on a constant distributed batch.

    The step is `strategy.run(model.train_step)` in one `tf.function`, as `fit` compiles it; the
    batch is a repeated constant, so the step time excludes the input pipeline (timed apart).
    """
    with strategy.scope():
        model = experiment.build_model(cfg, build_network, steps_per_epoch)
    stream = tf.data.Dataset.from_tensors(batch).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(stream))

    @tf.function
    def step_on(it):
        return strategy.run(model.train_step, (next(it),))

    callback = callbacks.GeneralistCallback(
        cfg.algorithm.mixing, cfg.algorithm.communication, cfg.optimisation.epochs
    )
    by_epoch = [
        callback.schedule(e, model.learner_names) for e in range(1, cfg.optimisation.epochs + 1)
    ]

    def first(communicating: bool):
        """The schedule of the first (non-)communication epoch, None if there is none."""
        return next(((w, every) for w, c, every in by_epoch if c == communicating), None)

    return Trainer(model, functools.partial(step_on, iterator), first(False), first(True))


def with_mixing(trainer: Trainer, schedule) -> Callable[[], object]:
    """The train step with steps 2-4 of Alg. 1 on under `schedule` (as in an epoch of `fit`),
    or, with `schedule=None`, step 1 alone (the learners' steps, no EMA, G or redistribution).

    The schedule is handed over before every call (three variable assigns, well under 1 ms),
    because the interleaved variants share one model.
    """

    def run():
        if schedule is None:
            trainer.model.stop_mixing()
        else:
            trainer.model.set_schedule(*schedule)
        return trainer.step()

    return run


def mixing_only(trainer: Trainer, schedule) -> Callable[[], None]:
    """Steps 2-4 alone (`Generalist.mix`: the EMAs, G, + the redistribution when on)."""

    def run():
        trainer.model.mix(*schedule)

    return run
