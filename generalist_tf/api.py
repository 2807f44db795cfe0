"""The public Python API: Generalist on your own Keras network and `tf.data` pipeline.

    import generalist_tf as gtf
    model = gtf.build_generalist(my_network_builder, epochs=30, steps_per_epoch=100)
    model.compile()
    model.fit(train_ds, validation_data=val_ds, epochs=30)
    report = gtf.evaluate_robustness(model.best_model(), (x_test, y_test), epsilon_linf=0.3, epsilon_l2=1.0)
    gtf.export_model(model, "export")

`build_generalist`, `Attack`, `Communication`, `evaluate_robustness`, `export_model` and
`VARIANTS` are the stable surface; every
other module is internal. The command line trains through `build_generalist` too (`train.py`):
there is one code path.

`fit` attaches the callbacks the algorithm needs (the mixing of Alg. 1 and the choice of the
best G on `validation_data`) itself, ahead of the user's: a `fit` without them would train the
learners and never build G, silently. Pass your own callbacks as usual; they run after ours.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

import generalist_tf
from generalist_tf import defaults, init_from, names, tradeoff
from generalist_tf.algorithm import generalist, learners, optimizers, schedules, variants
from generalist_tf.algorithm.schedules import Communication  # noqa: F401 (public: gtf.Communication)
from generalist_tf.algorithm.variants import VARIANTS  # noqa: F401 (public: gtf.VARIANTS)
from generalist_tf.attacks import budget
from generalist_tf.attacks.budget import Attack

# The public names are listed once, in the package (`generalist_tf.__all__`), which must know
# them without importing this module (and TensorFlow).
__all__ = list(generalist_tf.__all__)


def _check_logits(network: keras.Model, argument: str) -> None:
    """Refuses a network that outputs probabilities (rows summing to one) instead of logits."""
    shape = tuple(network.input_shape[1:])
    probe = np.random.default_rng(0).uniform(size=(4, *shape)).astype(np.float32)
    out = tf.cast(network(probe, training=False), tf.float32).numpy()
    if out.ndim != 2:
        raise ValueError(
            f"{argument} must return logits of shape (batch, classes), got {out.shape}"
        )
    if np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError(
            f"{argument} returns probabilities (its outputs sum to one): Generalist needs logits, "
            "so drop the final softmax"
        )


def build_generalist(
    build_network: Callable[[], keras.Model],
    *,
    epochs: int,
    steps_per_epoch: int,
    variant: str = defaults.VARIANT,
    tasks: Sequence[str] | None = None,
    mixing: str | Mapping[str, schedules.PiecewiseLinear] | None = None,
    linf_attack: Attack = Attack(
        "linf",
        schedules.parse_fraction(defaults.EPSILON),
        schedules.parse_fraction(defaults.STEP_SIZE),
        defaults.NUM_STEPS,
    ),
    l2_attack: Attack = Attack(
        "l2",
        schedules.parse_fraction(defaults.L2_EPSILON),
        schedules.parse_fraction(defaults.L2_STEP_SIZE),
        defaults.L2_NUM_STEPS,
    ),
    eval_attack: Attack | None = None,
    learning_rate: str | schedules.PiecewiseLinear = defaults.LEARNING_RATE,
    momentum: float = defaults.MOMENTUM,
    natural_weight_decay: float = defaults.NATURAL_WEIGHT_DECAY,
    robust_weight_decay: float = defaults.ROBUST_WEIGHT_DECAY,
    natural_lr_scale: float = defaults.NATURAL_LR_SCALE,
    optimizer_for: Callable[[str], keras.optimizers.Optimizer] | None = None,
    trades_beta: float = defaults.TRADES_BETA,
    ema_decay: float = defaults.EMA_DECAY,
    communication: schedules.Communication | None | str = "default",
    select_metric: str = defaults.SELECT_METRIC,
    select_clean_floor: float = defaults.SELECT_CLEAN_FLOOR,
    init: str | None = None,
    seed: int = 0,
    jit_compile: str = "auto",
    clean_accuracy: bool = False,
) -> generalist.Generalist:
    """A Generalist model (base learners, their EMAs and G) around your network.

    Call it inside your `strategy.scope()` if you use one. Every learner, EMA and G start from
    the same weights theta_0 (Alg. 1, initialisation): a fresh `build_network()`, or `init`.

    Args:
      build_network: returns a fresh `keras.Model` from [0, 1] images to logits (any
        architecture; BatchNorm and Dropout are fine). Called once per network.
      epochs, steps_per_epoch: the training length; every schedule is a fraction of it.
      variant: a key of `VARIANTS`, or `custom` with `tasks` and `mixing`.
      tasks: custom variant: the learners' task names (`natural`, `linf_pgd`, `l2_pgd`,
        `trades`, ...).
      mixing: per-learner weights of G, `name=frac:w,...;name=...` (default: the variant's).
      linf_attack, l2_attack: training attacks of the l_inf / l_2 learners.
      eval_attack: the validation attack (default PGD-20 at `linf_attack`'s epsilon, step
        epsilon/4).
      learning_rate: piecewise-linear `frac:lr,...` shared by the learners.
      momentum, natural_weight_decay, robust_weight_decay: our PyTorch-form SGD's settings.
      natural_lr_scale: multiplies the natural learner's learning rate from the first
        redistribution on (its drift in each free window); 1 is Generalist's own schedule.
      optimizer_for: optional `task -> optimizer` replacing our SGD per learner.
      trades_beta: TRADES' weight.
      ema_decay: EMA ceiling alpha of d = min(alpha, (k+1)/(k+10)); 0 disables averaging.
      communication: when G is copied back (`schedules.Communication`), None never, "default"
        the official start 0.625 and period 5 for multi-learner variants.
      select_metric, select_clean_floor: the rule that keeps the best G on `validation_data`.
      init: a `.keras` file, export, workdir or checkpoint to start from (`--init_from`).
      seed: seeds initialisation and attack starts.
      jit_compile: compile policy of the attacks (`auto`, `true`, `false`).
      clean_accuracy: log adversarial learners' clean training accuracy (an extra pass).

    Returns:
      A `Generalist` (`keras.Model`): `compile()`, then `fit(train_ds, validation_data=...)`.

    Raises:
      ValueError: a one-line message naming the bad argument.
    """
    # The checks of the command line, run here for both doors (the flags' names there).
    budget.check_count("epochs", epochs, 1)
    budget.check_count("steps_per_epoch", steps_per_epoch, 1)
    schedules.check_ema_decay(ema_decay)
    schedules.check_trades_beta(trades_beta)
    schedules.check_momentum(momentum)
    schedules.check_weight_decay(natural_weight_decay, "natural_weight_decay")
    schedules.check_weight_decay(robust_weight_decay, "robust_weight_decay")
    schedules.check_scale(natural_lr_scale, "natural_lr_scale")
    if isinstance(learning_rate, str):
        learning_rate = schedules.parse_points(learning_rate, flag="learning_rate")
    schedules.check_learning_rate(learning_rate)
    task_names, mixing, communicate = variants.resolve(variant, tasks, mixing)
    weights = (
        schedules.parse_mixing(mixing, flag="mixing") if isinstance(mixing, str) else dict(mixing)
    )
    schedules.check_mixing(weights, task_names, epochs, flag="mixing")
    # The attacks the learners train with (`names.TRAINING_NORMS`: which task attacks in which norm).
    training_attacks = {"linf": (linf_attack, "linf_attack."), "l2": (l2_attack, "l2_attack.")}
    for norm in names.trained_norms(task_names):
        budget.check_training_attack(*training_attacks[norm])
    select_metric = names.select_key(select_metric, task_names)
    names.check_clean_floor(select_clean_floor)
    if not communicate:
        communication = None
    elif communication == "default":
        communication = schedules.Communication(
            defaults.COMMUNICATION_START, defaults.COMMUNICATION_PERIOD, defaults.COMMUNICATION_MODE
        )
    if communication is not None:
        communication.check(epochs)
    if eval_attack is None:
        eval_attack = budget.validation_attack(linf_attack.epsilon)
    # PGD with no step would make the validation's robust accuracy a second clean accuracy.
    budget.check_count("eval_attack.num_steps", eval_attack.num_steps, 1)

    keras.utils.set_random_seed(seed)
    global_network = build_network()
    _check_logits(global_network, "build_network")
    if init:
        # Fine-tuning: theta_0 is the given network's weights (BN statistics included).
        init_from.load_into(global_network, init)
    theta_0 = global_network.get_weights()

    def copy_of_theta_0():
        network = build_network()
        network.set_weights(theta_0)
        return network

    lr = optimizers.EpochSchedule(
        learning_rate,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
    )
    # The natural learner's rate is scaled in its free windows: from the first redistribution
    # on (before it, the learner is an ordinary clean training that the redistribution replaces).
    natural_lr = optimizers.EpochSchedule(
        learning_rate,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        scale=natural_lr_scale,
        scale_from_epoch=communication.start_epoch(epochs) if communication else 1,
    )
    base_learners = []
    for index, task in enumerate(task_names):
        kwargs = {}
        if task == "trades":
            kwargs["beta"] = trades_beta
        if task in ("avg", "max", "msd"):
            kwargs["l2_attack"] = l2_attack
        attack = l2_attack if task == "l2_pgd" else linf_attack
        learner = learners.LEARNERS[task](
            copy_of_theta_0(),
            copy_of_theta_0(),
            attack=None if task == "natural" else attack,
            jit_compile=jit_compile,
            seed=(seed, index),
            clean_accuracy=clean_accuracy,
            **kwargs,
        )
        decay = natural_weight_decay if task == "natural" else robust_weight_decay
        rate = natural_lr if task == "natural" else lr
        optimizer = (
            optimizer_for(task)
            if optimizer_for
            else optimizers.CoupledSGD(rate, momentum=momentum, l2=decay, name=f"{task}_sgd")
        )
        learner.compile(optimizer=optimizer)
        # Build the slots now, in the strategy scope: no variable is created while training.
        learner.optimizer.build(learner.network.trainable_variables)
        base_learners.append(learner)
    model = generalist.Generalist(
        base_learners,
        global_network,
        copy_of_theta_0(),
        algorithm=generalist.AlgorithmSettings(
            build_network=build_network,
            mixing=weights,
            communication=communication,
            epochs=epochs,
            select_metric=select_metric,
            select_clean_floor=select_clean_floor,
        ),
        eval_attack=eval_attack,
        ema_alpha=ema_decay,
        jit_compile=jit_compile,
        seed=seed,
    )
    return model


def _as_arrays(data) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(data, tf.data.Dataset):
        xs, ys = zip(*((np.asarray(x), np.asarray(y)) for x, y in data.as_numpy_iterator()))
        return np.concatenate(xs), np.concatenate(ys)
    x, y = data
    return np.asarray(x), np.asarray(y)


def evaluate_robustness(
    model,
    data,
    *,
    epsilon_linf: float,
    epsilon_l2: float,
    workdir: str | None = None,
    **options,
) -> dict:
    """The robustness suite on a model; returns the `report.json` dict.

    Args:
      model: a `keras.Model` (images -> logits), a `Generalist` (its best G is attacked), or
        the path of a SavedModel export or a `.keras` file.
      data: `(x, y)` arrays or a `tf.data.Dataset` of `(images, labels)` batches.
      epsilon_linf, epsilon_l2: the threat models' radii.
      workdir: where report.json / report.md / plots go (default: a new temporary directory).
      **options: `runner.evaluate_model` options (`attacks`, `restarts`, `apgd_steps`, ...).
    """
    from generalist_tf import export as exports
    from generalist_tf.evaluation import runner

    if isinstance(model, generalist.Generalist):
        model = model.best_model()
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        model = (
            keras.models.load_model(path, compile=False)
            if path.endswith(".keras")
            else exports.load_serving(path)
        )
    x, y = _as_arrays(data)
    workdir = workdir or tempfile.mkdtemp(prefix="gtf-eval-")
    report = runner.evaluate_model(
        model, x, y, workdir=workdir, epsilon_linf=epsilon_linf, epsilon_l2=epsilon_l2, **options
    )
    return report


def export_model(model, path: str) -> None:
    """Writes G (the best one for a `Generalist`) as a SavedModel at `path` and `<path>.keras`."""
    from generalist_tf import export as exports

    if isinstance(model, generalist.Generalist):
        exports.export_saved_model(model.best_network, model.build_network, path)
    else:
        exports.export_saved_model(model, lambda: keras.models.clone_model(model), path)


def frontier(
    robust,
    natural=None,
    *,
    validation,
    test,
    epsilon: float,
    out: str,
    natural_data: tf.data.Dataset | None = None,
    natural_steps: int = 0,
    natural_learning_rate: float = 0.0,
    momentum: float = defaults.MOMENTUM,
    natural_weight_decay: float = defaults.NATURAL_WEIGHT_DECAY,
    num_steps: int = defaults.EVAL_NUM_STEPS,
    points: int = tradeoff.DEFAULT_POINTS,
    operating_point: str | None = None,
    worst_case=None,
    apgd_steps: int = defaults.EVAL_APGD_STEPS,
    seed: int = 0,
) -> dict:
    """The trade-off frontier between a robust network and a natural one (`generalist_tf.tradeoff`).

    Args:
      robust: a `keras.Model`, or the path of a `.keras` file, an export or a workdir.
      natural: the natural end (same forms); None: a natural fine-tune of `robust` on
        `natural_data` for `natural_steps` steps at `natural_learning_rate`.
      validation, test: `(x, y)` arrays or datasets; only `validation` chooses anything.
      epsilon: l_inf radius of the PGD-`num_steps` robust score (step epsilon / 4).
      out: where `frontier.json`, `frontier.png` and the operating point's export go.
      operating_point: `clean:A` or `robust:A`, chosen on validation and exported.
      worst_case: optional `(x, y)` subset for APGD-CE + APGD-T on the Pareto points.

    Returns:
      The `frontier.json` record.
    """
    tradeoff.parse_operating_point(operating_point)
    if isinstance(robust, (str, os.PathLike)):
        robust = init_from.load_network(os.fspath(robust), "robust")
    if isinstance(natural, (str, os.PathLike)):
        natural = init_from.load_network(os.fspath(natural), "natural")
    if natural is None:
        if natural_data is None:
            raise ValueError("natural_data is required when natural is None (the fine-tune data)")
        natural = tradeoff.fine_tune(
            robust,
            natural_data,
            steps=natural_steps,
            learning_rate=natural_learning_rate,
            momentum=momentum,
            weight_decay=natural_weight_decay,
            seed=seed,
        )
    return tradeoff.run(
        robust,
        natural,
        validation=_as_arrays(validation),
        test=_as_arrays(test),
        attack=budget.validation_attack(epsilon, num_steps),
        out=out,
        points=points,
        operating_point=operating_point,
        worst_case=None if worst_case is None else _as_arrays(worst_case),
        apgd_steps=apgd_steps,
    )
