"""The evaluation's application entry points: `--mode=eval` and the evaluation of an export."""

from __future__ import annotations

import contextlib
import os

from generalist_tf import distribute, names
from generalist_tf.evaluation import runner, writers


def run_from_config(config) -> dict:
    """`--mode=eval`: the suite on the test split for the SavedModel at `config.model.model`.

    Uses `eval_epsilon_linf` / `eval_epsilon_l2`, `eval_batch_size`, `eval_examples` (a subset
    chosen by `seed`), `seed`, `jit_compile` and `verbose`; writes into `config.runtime.workdir`.

    Returns:
      The report plus `table`, its markdown (not part of report.json).

    Raises:
      ValueError: the model is not a serving SavedModel, or the dataset cannot be loaded.
    """
    strategy = None
    if not config.runtime.tpu and not distribute.is_multi_worker():
        # The local devices, as training would use them (all GPUs, or --num_cpu_replicas).
        strategy = distribute.make_strategy(num_cpu_replicas=config.runtime.num_cpu_replicas)
    return run_on_export(config, config.model.model, config.runtime.workdir, strategy=strategy)


def run_on_export(config, path: str, workdir: str, strategy=None, arrays=None) -> dict:
    """The suite of `run_from_config` on the SavedModel at `path`, written into `workdir`.

    With a multi-replica `MirroredStrategy` the model is loaded under its scope (one copy of the
    weights per device) and the batches are spread over the replicas. `arrays`: the dataset the
    caller already holds (training hands over its own); None loads `config.data.dataset`.
    """
    from generalist_tf import data, export

    strategy = distribute.eval_strategy(strategy)
    with contextlib.nullcontext() if strategy is None else strategy.scope():
        model = export.load_serving(path, "--model")
    if arrays is None:
        arrays = data.load(config.data.dataset, data_dir=config.data.data_dir, require_train=False)
    x, y = data.eval_subset(arrays.x_test, arrays.y_test, config.evaluation.eval_examples)
    population = len(arrays.x_test)
    # Checked before the first attack: data the model (or the surrogate) cannot take.
    export.check_fits(model, x, y, flag="--model", dataset=config.data.dataset)
    surrogate = (
        export.load_serving(config.evaluation.surrogate, "--surrogate")
        if config.evaluation.surrogate
        else None
    )
    if surrogate is not None:
        export.check_fits(surrogate, x, y, flag="--surrogate", dataset=config.data.dataset)
    trained = names.trained_norms(config.algorithm.learners)
    budgets = {"linf": config.attacks.linf_attack, "l2": config.attacks.l2_attack}
    report = runner.evaluate_model(
        model,
        x,
        y,
        workdir=workdir,
        population=population,
        training_epsilons={norm: budgets[norm].epsilon for norm in trained},
        epsilon_linf=config.evaluation.eval_attack.epsilon,
        epsilon_l2=config.evaluation.eval_epsilon_l2,
        batch_size=config.evaluation.eval_batch_size,
        seed=config.runtime.seed,
        restarts=config.evaluation.eval_restarts,
        square_queries=config.evaluation.eval_square_queries,
        apgd_steps=config.evaluation.eval_apgd_steps,
        attacks=config.evaluation.eval_attacks,
        reference=config.evaluation.reference,
        surrogate=surrogate,
        jit_compile=config.runtime.jit_compile,
        verbose=min(config.runtime.verbose, 1),
        strategy=strategy,
    )
    with open(os.path.join(workdir, writers.REPORT_MD)) as f:
        return dict(report, table=f.read())
