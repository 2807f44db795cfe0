"""The evaluation's application entry points: `--mode=eval` and the evaluation of an export."""

from __future__ import annotations

import contextlib
import os

import numpy as np

from generalist_tf import distribute
from generalist_tf.evaluation import runner, writers


def run_from_config(config) -> dict:
    """`--mode=eval`: the suite on the test split for the SavedModel at `config.model`.

    Uses `eval_epsilon_linf` / `eval_epsilon_l2`, `eval_batch_size`, `eval_examples` (a subset
    chosen by `seed`), `seed`, `jit_compile` and `verbose`; writes into `config.workdir`.

    Returns:
      The report plus `table`, its markdown (not part of report.json).

    Raises:
      ValueError: the model is not a serving SavedModel, or the dataset cannot be loaded.
    """
    strategy = None
    if not config.tpu and not distribute.is_multi_worker():
        # The local devices, as training would use them (all GPUs, or --num_cpu_replicas).
        strategy = distribute.make_strategy(num_cpu_replicas=config.num_cpu_replicas)
    return run_on_export(config, config.model, config.workdir, strategy=strategy)


def run_on_export(config, path: str, workdir: str, strategy=None) -> dict:
    """The suite of `run_from_config` on the SavedModel at `path`, written into `workdir`.

    With a multi-replica `MirroredStrategy` the model is loaded under its scope (one copy of the
    weights per device) and the batches are spread over the replicas.
    """
    from generalist_tf import data, export
    from generalist_tf.algorithm import learners

    strategy = distribute.eval_strategy(strategy)
    with contextlib.nullcontext() if strategy is None else strategy.scope():
        model = export.load_serving(path)
    arrays = data.load(config.dataset, data_dir=config.data_dir, require_train=False)
    x, y = arrays.x_test, arrays.y_test
    if config.eval_examples is not None and config.eval_examples < len(x):
        index = np.sort(
            np.random.default_rng(data.EVAL_SUBSET_SEED).permutation(len(x))[: config.eval_examples]
        )
        x, y = x[index], y[index]
    population = len(arrays.x_test)
    # Checked before the first attack: data the model (or the surrogate) cannot take.
    export.check_fits(model, x, y, flag="--model", dataset=config.dataset)
    surrogate = export.load_serving(config.surrogate) if config.surrogate else None
    if surrogate is not None:
        export.check_fits(surrogate, x, y, flag="--surrogate", dataset=config.dataset)
    trained = {norm for task in config.learners for norm in learners.TRAINING_NORMS.get(task, ())}
    budgets = {"linf": config.linf_attack, "l2": config.l2_attack}
    report = runner.evaluate_model(
        model,
        x,
        y,
        workdir=workdir,
        population=population,
        training_epsilons={norm: budgets[norm].epsilon for norm in sorted(trained)},
        epsilon_linf=config.eval_attack.epsilon,
        epsilon_l2=config.eval_epsilon_l2,
        batch_size=config.eval_batch_size,
        seed=config.seed,
        restarts=config.eval_restarts,
        square_queries=config.eval_square_queries,
        apgd_steps=config.eval_apgd_steps,
        attacks=config.eval_attacks,
        reference=config.reference,
        surrogate=surrogate,
        jit_compile=config.jit_compile,
        verbose=min(config.verbose, 1),
        strategy=strategy,
    )
    with open(os.path.join(workdir, writers.REPORT_MD)) as f:
        return dict(report, table=f.read())
