"""Generalist training as a library call: `train(config) -> results`.

Builds the run with `experiment.build_experiment` (strategy, data, learners and global model,
checkpoints, TensorBoard); runs `fit`, whose own callback does the mixing; evaluates on the test
split; exports G; writes `results.json`.
"""

from __future__ import annotations

import os
import time

from absl import logging

from generalist_tf import (
    distribute,
    experiment,
    export,
    files,
    model_card,
    names,
    precision,
    timing,
)
from generalist_tf import fit_timer as fit_timer_lib
from generalist_tf.algorithm import callbacks, generalist
from generalist_tf.config import Config

RESULTS = "results.json"
EXPORT_BEST = "export"
EXPORT_LAST = "export_last"


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
            return _train(config, strategy or experiment.make_strategy(config))
    finally:
        timing.RUN = timing.Phases()  # the next run of this process times itself alone


def _train(config: Config, strategy) -> dict:
    logging.info(
        "strategy %s with %d replicas", type(strategy).__name__, strategy.num_replicas_in_sync
    )
    phases = timing.RUN
    exp = experiment.build_experiment(config, strategy, phases=phases)
    model, steps_per_epoch, arrays = exp.model, exp.steps_per_epoch, exp.arrays
    chief = exp.chief
    if config.runtime.restart and chief:
        for name in (EXPORT_BEST, EXPORT_LAST):
            if os.path.isdir(os.path.join(config.runtime.workdir, name)):
                logging.warning(
                    "--restart: %s/%s stays until this run finishes, then it is replaced",
                    config.runtime.workdir,
                    name,
                )
    val = exp.validation_data()
    fit_timer = fit_timer_lib.FitTimer(phases)
    extra = [fit_timer]
    if chief and len(model.learner_names) > 1 and config.algorithm.communication is not None:
        # The natural and robust EMAs of the last free window, the frontier's two ends.
        extra.append(
            callbacks.FreeWindowCallback(
                os.path.join(config.runtime.workdir, callbacks.FREE_WINDOW),
                config.algorithm.communication,
                config.optimisation.epochs,
            )
        )
    fit_callbacks = exp.callbacks(*extra)

    def fit(first_step: int, epochs: int, initial_epoch: int, steps: int) -> None:
        model.fit(
            exp.train_data(first_step),
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            validation_data=val,
            validation_freq=validation_epochs(config),
            callbacks=fit_callbacks,
            verbose=timing.progress_verbosity(config.runtime.verbose),
        )

    start_step = exp.start_step
    epoch, offset = divmod(start_step, steps_per_epoch)
    fit_start = time.perf_counter()
    if offset and epoch < config.optimisation.epochs:
        # Resumed inside an epoch: finish it (its remaining steps, then validation and the
        # epoch-end callbacks), then continue with whole epochs.
        fit(start_step, epoch + 1, epoch, steps_per_epoch - offset)
        epoch += 1
    if epoch < config.optimisation.epochs:
        fit(epoch * steps_per_epoch, config.optimisation.epochs, epoch, steps_per_epoch)
    fit_timer.record(fit_start)
    exp.manager.cleanup()
    best_epoch = int(model.best_epoch.numpy())

    # Final evaluation on the test split: the exported (best) G, the last G, each learner's EMA.
    model.set_evaluated(best=True, emas=config.evaluation.val_emas)
    test_data = exp.test_data()
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
                model.best_network,
                exp.build_network,
                os.path.join(config.runtime.workdir, EXPORT_BEST),
            )
            export.export_saved_model(
                model.global_network,
                exp.build_network,
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
