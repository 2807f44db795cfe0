"""Generalist training as a library call: `train(config) -> results`.

Builds the strategy, data, learners and global model; runs `fit` with the mixing callback,
checkpoints and TensorBoard; evaluates on the test split; exports G; writes `results.json`.
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np
from absl import logging

from generalist_tf import (
    api,
    checkpoints,
    data,
    distribute,
    export,
    files,
    model_card,
    models,
    names,
    precision,
    timing,
)
from generalist_tf import fit_timer as fit_timer_lib
from generalist_tf.algorithm import generalist
from generalist_tf.config import Config

RESULTS = "results.json"
EXPORT_BEST = "export"
EXPORT_LAST = "export_last"
TENSORBOARD = "tensorboard"


def network_builder(config: Config, arrays: data.Arrays):
    """A function that builds a fresh network of the run's architecture."""
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
            **config.model.model_kwargs,
        )

    return build


def build_generalist(config: Config, build_network, steps_per_epoch: int) -> generalist.Generalist:
    """The run's Generalist through the public API (`api.build_generalist`: one code path for
    the command line and Python users); call inside `strategy.scope()`."""
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
    model.compile(steps_per_execution=config.runtime.steps_per_execution)
    return model


def _format_table(test: dict, config: Config, best_epoch: int) -> str:
    a = config.evaluation.eval_attack
    header = f"PGD-{a.num_steps} linf eps={a.epsilon:.4g}"
    rows = [f"{'network (test split)':<28}{'natural':>10}{header:>26}"]
    for prefix, label in test["networks"].items():
        clean = test[f"{prefix}/clean_accuracy"]
        robust = test[f"{prefix}/pgd_accuracy"]
        rows.append(f"{label:<28}{100 * clean:>9.2f}%{100 * robust:>25.2f}%")
    rows.append(
        f"(exported G = {selection_rule(config)} on the validation split, epoch {best_epoch})"
    )
    return "\n".join(rows)


def selection_rule(config: Config) -> str:
    """The selection rule in words, as results.json and the table state it."""
    what = (
        "best clean + PGD accuracy of G"
        if config.evaluation.select_metric == names.CLEAN_PLUS_PGD
        else f"best {config.evaluation.select_metric}"
    )
    if config.evaluation.select_clean_floor > 0:
        what += f" among epochs with clean accuracy >= {config.evaluation.select_clean_floor:g}"
    if config.evaluation.val_every > 1:
        what += f" (validated every {config.evaluation.val_every} epochs and the last)"
    return what


def validation_epochs(config: Config) -> list[int]:
    """The 1-indexed epochs that are validated (and so may be selected): every N-th, the last."""
    return sorted(
        {
            e
            for e in range(1, config.optimisation.epochs + 1)
            if e % config.evaluation.val_every == 0
        }
        | {config.optimisation.epochs}
    )


def _labels(model: generalist.Generalist, best_epoch: int, emas: bool) -> dict[str, str]:
    labels = {"best": f"G (exported, epoch {best_epoch})", generalist.GLOBAL: "G (last epoch)"}
    for name in model.learner_names if emas else ():
        labels[f"{name}_ema"] = f"{name} learner EMA"
    return labels


def make_strategy(config: Config):
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
            f"--batch_size={config.optimisation.batch_size} does not split evenly over the {replicas} replicas "
            f"(--num_cpu_replicas or the local GPUs); use a multiple of {replicas}"
        )
    return strategy


def train(config: Config, strategy=None) -> dict:
    """Trains, evaluates and exports one run under the `--precision` dtype policy.

    With bf16/fp16 the networks compute in half precision while their variables, the EMA/G
    mixing, the losses and the attacks' input gradients stay float32; fp16 adds a dynamic loss
    scale per learner optimizer (Keras wraps it in `LossScaleOptimizer` at `compile`).

    Returns:
      The results written to `<workdir>/results.json` plus `table`, a printable summary.

    Raises:
      data.DataError, ValueError: bad dataset or configuration (one-line messages).
    """
    try:
        with precision.dtype_policy(distribute.resolve_precision(config.runtime.precision)):
            return _train(config, strategy or make_strategy(config))
    finally:
        timing.RUN = timing.Phases()  # the next run of this process times itself alone


def _check_steps_per_execution(config: Config, steps_per_epoch: int, offset: int) -> None:
    """Every `fit` must run whole executions (`Generalist.make_train_function`).

    Raises:
      ValueError: the epoch, or the rest of a resumed epoch, is not a multiple of N.
    """
    n = config.runtime.steps_per_execution
    if steps_per_epoch % n:
        raise ValueError(
            f"--steps_per_execution={n} must divide the {steps_per_epoch} steps of an epoch "
            f"(training examples // --batch_size={config.optimisation.batch_size})"
        )
    if offset % n:
        raise ValueError(
            f"--steps_per_execution={n}: the checkpoint in {config.runtime.workdir} stopped {offset} "
            "steps into an epoch; resume with the steps_per_execution it was written with"
        )


def _train(config: Config, strategy) -> dict:
    chief = distribute.is_chief(strategy)
    logging.info(
        "strategy %s with %d replicas", type(strategy).__name__, strategy.num_replicas_in_sync
    )
    phases = timing.RUN
    with phases.phase("data"):
        arrays = data.load(
            config.data.dataset,
            data_dir=config.data.data_dir,
            train_examples=config.data.train_examples,
        )
    steps_per_epoch = (
        config.optimisation.steps_per_epoch or len(arrays.x_train) // config.optimisation.batch_size
    )
    if len(arrays.x_train) < config.optimisation.batch_size:
        raise ValueError(
            f"--batch_size={config.optimisation.batch_size} exceeds the {len(arrays.x_train)} training examples"
        )
    _check_steps_per_execution(config, steps_per_epoch, 0)
    build_network = network_builder(config, arrays)
    with phases.phase("build and restore"):
        with strategy.scope():
            model = build_generalist(config, build_network, steps_per_epoch)
        manager = checkpoints.Manager(
            config.runtime.workdir,
            model,
            strategy=strategy,
            keep=config.runtime.keep_checkpoints,
            every_steps=config.runtime.checkpoint_every_steps,
            restart=config.runtime.restart,
            chief=chief,
        )
        start_step = manager.restore_or_initialize()
    if config.runtime.restart and chief:
        for name in (EXPORT_BEST, EXPORT_LAST):
            if os.path.isdir(os.path.join(config.runtime.workdir, name)):
                logging.warning(
                    "--restart: %s/%s stays until this run finishes, then it is replaced",
                    config.runtime.workdir,
                    name,
                )
    # Sharded by DATA: under MultiWorkerMirroredStrategy the workers split every global batch.
    # A fixed subset (not the run seed): every run validates on the same examples.
    val = distribute.shard_by_data(
        data.eval_dataset(
            arrays.x_val,
            arrays.y_val,
            batch_size=config.evaluation.eval_batch_size,
            num_examples=config.evaluation.val_examples,
        )
    )
    model.set_evaluated(best=False, emas=config.evaluation.val_emas)
    # `fit` runs the algorithm's callbacks (mixing, best-G choice, NaN guard) first, so an
    # epoch-end checkpoint includes the best G.
    fit_timer = fit_timer_lib.FitTimer(phases)
    fit_callbacks = [manager.callback(start_step), fit_timer]
    if chief:
        fit_callbacks.append(
            keras.callbacks.TensorBoard(os.path.join(config.runtime.workdir, TENSORBOARD))
        )

    def fit(first_step: int, epochs: int, initial_epoch: int, steps: int) -> None:
        stream = distribute.shard_by_data(
            data.train_dataset(
                arrays,
                batch_size=config.optimisation.batch_size,
                seed=config.runtime.seed,
                start_step=first_step,
            )
        )
        model.fit(
            stream,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            validation_data=val,
            validation_freq=validation_epochs(config),
            callbacks=fit_callbacks,
            verbose=config.runtime.verbose,
        )

    epoch, offset = divmod(start_step, steps_per_epoch)
    _check_steps_per_execution(config, steps_per_epoch, offset)
    fit_start = time.perf_counter()
    if offset and epoch < config.optimisation.epochs:
        # Resumed inside an epoch: finish it (its remaining steps, then validation and the
        # epoch-end callbacks), then continue with whole epochs.
        fit(start_step, epoch + 1, epoch, steps_per_epoch - offset)
        epoch += 1
    if epoch < config.optimisation.epochs:
        fit(epoch * steps_per_epoch, config.optimisation.epochs, epoch, steps_per_epoch)
    fit_timer.record(fit_start)
    manager.cleanup()
    best_epoch = int(model.best_epoch.numpy())

    # Final evaluation on the test split: the exported (best) G, the last G, each learner's EMA.
    model.set_evaluated(best=True, emas=config.evaluation.val_emas)
    test_data = distribute.shard_by_data(
        data.eval_dataset(
            arrays.x_test,
            arrays.y_test,
            batch_size=config.evaluation.eval_batch_size,
            num_examples=config.evaluation.table_examples,
        )
    )
    # In float32 whatever the training precision (the numbers are measurements, `precision`).
    with (
        phases.phase("final table"),
        precision.float32_compute(model.evaluated_networks().values()),
    ):
        model.test_function = None  # traced anew, in float32
        test = model.evaluate(test_data, return_dict=True, verbose=0)
        validation = model.evaluate(val, return_dict=True, verbose=0)
    test = {k: float(v) for k, v in test.items()}
    validation = {k: float(v) for k, v in validation.items()}
    test["networks"] = _labels(model, best_epoch, config.evaluation.val_emas)
    results = {
        "dataset": config.data.dataset,
        "variant": config.algorithm.variant,
        "learners": list(config.algorithm.learners),
        "epochs": config.optimisation.epochs,
        "best_epoch": best_epoch,
        "select_metric": config.evaluation.select_metric,
        "select_clean_floor": config.evaluation.select_clean_floor,
        "selection": selection_rule(config),
        "validated_epochs": validation_epochs(config),
        "eval_attack": {
            "norm": config.evaluation.eval_attack.norm,
            "epsilon": config.evaluation.eval_attack.epsilon,
            "step_size": config.evaluation.eval_attack.step_size,
            "num_steps": config.evaluation.eval_attack.num_steps,
            "random_start": config.evaluation.eval_attack.random_start,
        },
        "validation": validation,
        "test": test,
        "exports": {
            EXPORT_BEST: f"G with the {selection_rule(config)} on the validation split "
            f"(epoch {best_epoch})",
            EXPORT_LAST: f"G after the last epoch ({config.optimisation.epochs})",
        },
    }
    table = _format_table(test, config, best_epoch)
    splits = {
        "train": len(arrays.x_train),
        "validation": len(arrays.x_val),
        "test": len(arrays.x_test),
    }

    def write_card(name, report=None, report_table=None):
        card = model_card.render(
            config,
            dict(results, table=table),
            export_name=name,
            splits=splits,
            report=report,
            report_table=report_table,
        )
        model_card.write(os.path.join(config.runtime.workdir, name), card)

    if chief:
        with phases.phase("export"):
            export.export_saved_model(
                model.best_network, build_network, os.path.join(config.runtime.workdir, EXPORT_BEST)
            )
            export.export_saved_model(
                model.global_network,
                build_network,
                os.path.join(config.runtime.workdir, EXPORT_LAST),
            )
            write_card(EXPORT_BEST)
            write_card(EXPORT_LAST)
    if chief and config.evaluation.final_eval:
        with phases.phase("attack suite"):
            # The evaluation suite on the exported G (test split), as `--mode=eval` would run it.
            from generalist_tf.evaluation import commands, writers

            report = commands.run_on_export(
                config,
                os.path.join(config.runtime.workdir, EXPORT_BEST),
                config.runtime.workdir,
                strategy=strategy,
                arrays=arrays,
            )
            results["robustness"] = {
                "of": EXPORT_BEST,
                "report": writers.REPORT_JSON,
                "clean_accuracy": report["clean_accuracy"],
                "worst_case": report["worst_case"],
                "union_accuracy": report["union_accuracy"],
                "alarms": report["alarms"],
            }
            write_card(EXPORT_BEST, report, report["table"])
            table += "\n\nAttack suite on the exported G (test split):\n" + report["table"]
    results["timings"] = phases.as_dict()
    logging.info("time: %s", phases.summary())
    if chief:
        files.write_json(os.path.join(config.runtime.workdir, RESULTS), results, indent=2)
    results["table"] = table
    return results
