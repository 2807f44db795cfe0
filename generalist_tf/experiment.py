"""One experiment from a config: strategy, data, networks, the Generalist, checkpoints, callbacks.

`build_experiment(config)` is the one place a run is assembled; `train` (the command line), the
bench, the tests and Python users (`gtf.build_experiment`) all go through it:

    exp = gtf.build_experiment(config)           # strategy, data, model; restores the workdir
    exp.model.fit(exp.train_data(), epochs=..., steps_per_epoch=exp.steps_per_epoch,
                  validation_data=exp.validation_data(), callbacks=exp.callbacks())

The dataset is loaded once here and handed on (validation, the test table, the final suite).
The pieces are public for code that needs only a part: `make_strategy`, `network_builder`,
`build_model` (the bench times models built by `build_model` on synthetic batches).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from generalist_tf import api, checkpoints, data, distribute, init_from, models, timing
from generalist_tf.algorithm import generalist
from generalist_tf.config import Config

TENSORBOARD = "tensorboard"


def make_strategy(config: Config) -> tf.distribute.Strategy:
    """The run's strategy, with the batch checked against its replica count.

    `main` calls it before the workdir is accepted, so a bad `--tpu`, `TF_CONFIG` or batch
    split is refused before any file of the run is written.

    Raises:
      ValueError: the TPU cannot be reached, or `--batch_size` does not split over the replicas.
    """
    strategy = distribute.make_strategy(
        num_cpu_replicas=config.runtime.num_cpu_replicas, tpu=config.runtime.tpu
    )
    replicas = strategy.num_replicas_in_sync
    if config.optimisation.batch_size % replicas:
        raise ValueError(
            f"--batch_size={config.optimisation.batch_size} does not split evenly over the "
            f"{replicas} replicas (--num_cpu_replicas or the local GPUs); use a multiple of {replicas}"
        )
    return strategy


def network_builder(config: Config, arrays: data.Arrays) -> Callable[[], keras.Model]:
    """A function that builds a fresh network of the run's architecture (`--model`), with the
    training split's per-channel statistics when `--normalize`."""
    mean = std = None
    if config.model.normalize:
        x = arrays.x_train.astype(np.float32) / (255.0 if arrays.x_train.dtype == np.uint8 else 1.0)
        mean = x.mean(axis=(0, 1, 2)).tolist()
        std = np.maximum(x.std(axis=(0, 1, 2)), 1e-3).tolist()

    def build():
        return models.build(
            config.model.model,
            arrays.image_shape,
            arrays.num_classes,
            mean=mean,
            std=std,
            bn_moving_variance=config.model.bn_moving_variance,
            argument="--model",
            **config.model.model_kwargs,
        )

    return build


def build_model(config: Config, build_network, steps_per_epoch: int) -> generalist.Generalist:
    """The config's compiled Generalist through the public API (`api.build_generalist`: one code
    path for the command line and Python users); call inside `strategy.scope()`."""
    try:
        model = api.build_generalist(
            build_network,
            epochs=config.optimisation.epochs,
            steps_per_epoch=steps_per_epoch,
            variant=config.algorithm.variant,
            tasks=config.algorithm.learners if config.algorithm.variant == "custom" else None,
            mixing=config.algorithm.mixing,
            linf_attack=config.attacks.linf_attack,
            l2_attack=config.attacks.l2_attack,
            eval_attack=config.evaluation.eval_attack,
            learning_rate=config.optimisation.learning_rate,
            momentum=config.optimisation.momentum,
            natural_weight_decay=config.optimisation.natural_weight_decay,
            natural_lr_scale=config.optimisation.natural_lr_scale,
            robust_weight_decay=config.optimisation.robust_weight_decay,
            trades_beta=config.algorithm.trades_beta,
            ema_decay=config.algorithm.ema_decay,
            communication=config.algorithm.communication,
            select_metric=config.evaluation.select_metric,
            select_clean_floor=config.evaluation.select_clean_floor,
            init=config.model.init_from,
            seed=config.runtime.seed,
            jit_compile=config.runtime.jit_compile,
            clean_accuracy=config.evaluation.train_clean_accuracy,
        )
    except init_from.InitError as e:
        # The library names its argument (`init=`); the command line names the flag.
        message = str(e)
        if message.startswith("init="):
            message = "--init_from=" + message[len("init=") :]
        raise init_from.InitError(message) from None
    model.compile(steps_per_execution=config.runtime.steps_per_execution)
    return model


def steps_per_epoch(config: Config, num_train: int) -> int:
    """`--steps_per_epoch`, or the whole batches of the training split.

    Raises:
      ValueError: the batch exceeds the split, or `--steps_per_execution` does not divide it.
    """
    batch = config.optimisation.batch_size
    if num_train < batch:
        raise ValueError(f"--batch_size={batch} exceeds the {num_train} training examples")
    steps = config.optimisation.steps_per_epoch or num_train // batch
    check_whole_executions(config, steps, offset=0)
    return steps


def check_whole_executions(config: Config, steps: int, offset: int) -> None:
    """Every `fit` must run whole executions (`Generalist.make_train_function`).

    Raises:
      ValueError: the epoch, or the rest of a resumed epoch, is not a multiple of N.
    """
    n = config.runtime.steps_per_execution
    if steps % n:
        raise ValueError(
            f"--steps_per_execution={n} must divide the {steps} steps of an epoch "
            f"(training examples // --batch_size={config.optimisation.batch_size})"
        )
    if offset % n:
        raise ValueError(
            f"--steps_per_execution={n}: the checkpoint in {config.runtime.workdir} stopped "
            f"{offset} steps into an epoch; resume with the steps_per_execution it was written with"
        )


@dataclasses.dataclass
class Experiment:
    """Everything a run needs, built once from its config (`build_experiment`).

    `manager` is None when built with `checkpointing=False`; `start_step` is the restored step
    (0 for a fresh run).
    """

    config: Config
    strategy: tf.distribute.Strategy
    arrays: data.Arrays
    build_network: Callable[[], keras.Model]
    model: generalist.Generalist
    steps_per_epoch: int
    manager: checkpoints.Manager | None
    start_step: int

    @property
    def chief(self) -> bool:
        return distribute.is_chief(self.strategy)

    def train_data(self, first_step: int | None = None) -> tf.data.Dataset:
        """The shuffled training stream from `first_step` (default: the restored step), sharded
        by DATA: under MultiWorkerMirroredStrategy the workers split every global batch."""
        return distribute.shard_by_data(
            data.train_dataset(
                self.arrays,
                batch_size=self.config.optimisation.batch_size,
                seed=self.config.runtime.seed,
                start_step=self.start_step if first_step is None else first_step,
            )
        )

    def validation_data(self) -> tf.data.Dataset:
        """`--val_examples` of the validation split: a fixed subset (not the run seed), so every
        run validates on the same examples."""
        return self._eval_data(
            self.arrays.x_val, self.arrays.y_val, self.config.evaluation.val_examples
        )

    def test_data(self) -> tf.data.Dataset:
        """`--table_examples` of the test split (the results table's)."""
        return self._eval_data(
            self.arrays.x_test, self.arrays.y_test, self.config.evaluation.table_examples
        )

    def _eval_data(self, x, y, num_examples) -> tf.data.Dataset:
        return distribute.shard_by_data(
            data.eval_dataset(
                x, y, batch_size=self.config.evaluation.eval_batch_size, num_examples=num_examples
            )
        )

    def callbacks(self, *extra: keras.callbacks.Callback) -> list[keras.callbacks.Callback]:
        """`fit`'s callbacks besides the algorithm's own (which `Generalist.fit` runs first, so an
        epoch-end checkpoint holds the epoch's best G): the checkpoint writer, `extra`, and on the
        chief TensorBoard logs in `<workdir>/tensorboard`."""
        out = [self.manager.callback(self.start_step)] if self.manager else []
        out += extra
        if self.chief:
            out.append(
                keras.callbacks.TensorBoard(os.path.join(self.config.runtime.workdir, TENSORBOARD))
            )
        return out


def build_experiment(
    config: Config,
    strategy: tf.distribute.Strategy | None = None,
    *,
    arrays: data.Arrays | None = None,
    build_network: Callable[[], keras.Model] | None = None,
    checkpointing: bool = True,
    phases: timing.Phases | None = None,
) -> Experiment:
    """Builds `config`'s experiment: strategy, data, the Generalist, and (with `checkpointing`)
    the checkpoint manager, restored from `<workdir>` if it holds a checkpoint.

    Args:
      strategy: default `make_strategy(config)`.
      arrays: an already loaded dataset (default: `data.load` of `--dataset`).
      build_network: your own network builder (default: `--model`'s, `network_builder`).
      checkpointing: False builds no manager and restores nothing (tests, the bench).
      phases: where the "data" and "build and restore" times go (`train` passes `timing.RUN`,
        the run's report); default: nowhere.

    Raises:
      data.DataError, ValueError: bad dataset or configuration (one-line messages).
    """
    strategy = strategy or make_strategy(config)
    phases = timing.Phases() if phases is None else phases
    if arrays is None:
        with phases.phase("data"):
            arrays = data.load(
                config.data.dataset,
                data_dir=config.data.data_dir,
                train_examples=config.data.train_examples,
            )
    steps = steps_per_epoch(config, len(arrays.x_train))
    build_network = build_network or network_builder(config, arrays)
    with phases.phase("build and restore"):
        with strategy.scope():
            model = build_model(config, build_network, steps)
        manager, start_step = None, 0
        if checkpointing:
            manager = checkpoints.Manager(
                config.runtime.workdir,
                model,
                strategy=strategy,
                keep=config.runtime.keep_checkpoints,
                every_steps=config.runtime.checkpoint_every_steps,
                restart=config.runtime.restart,
                chief=distribute.is_chief(strategy),
            )
            start_step = manager.restore_or_initialize()
        check_whole_executions(config, steps, offset=start_step % steps)
    model.set_evaluated(best=False, emas=config.evaluation.val_emas)
    return Experiment(config, strategy, arrays, build_network, model, steps, manager, start_step)
