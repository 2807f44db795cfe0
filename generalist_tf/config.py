"""The typed run configuration, built once from the flag values and validated once.

Every invalid value raises `ValueError` whose one-line message names the flag and the value,
e.g. `--epsilon must be in (0, 1] for images in [0, 1], got 8.0`. Library code receives a
`Config`, never reads flags.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from generalist_tf import attacks, data, models, tf_config
from generalist_tf.algorithm import learners, schedules, variants

MODES = ("train", "eval")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
COMMUNICATION_MODES = ("every_batch", "once_per_period", "none")

# Evaluation budgets by dataset family when --eval_epsilon_* is not given (issue protocol).
_EVAL_EPSILONS = {  # (linf, l2)
    "cifar10": (8 / 255, 0.5),
    "cifar100": (8 / 255, 0.5),
    "svhn_cropped": (8 / 255, 0.5),
    "mnist": (0.3, 2.0),
    "fashion_mnist": (0.1, 1.0),
    "digits": (0.3, 1.0),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs. Build it with `from_flags`."""

    workdir: str
    mode: str
    dataset: str
    data_dir: str | None
    model: str
    model_kwargs: Mapping[str, Any]
    normalize: bool
    variant: str
    learners: tuple[str, ...]
    mixing: Mapping[str, schedules.PiecewiseLinear]
    communication: schedules.Communication | None
    epochs: int
    steps_per_epoch: int | None
    batch_size: int
    eval_batch_size: int
    learning_rate: schedules.PiecewiseLinear
    momentum: float
    natural_weight_decay: float
    robust_weight_decay: float
    linf_attack: learners.Attack
    l2_attack: learners.Attack
    trades_beta: float
    ema_decay: float
    eval_attack: learners.Attack
    eval_epsilon_l2: float
    eval_examples: int | None
    table_examples: int | None
    eval_restarts: int
    eval_square_queries: int
    eval_apgd_steps: int
    eval_attacks: tuple[str, ...] | None
    reference: str | None
    surrogate: str | None
    final_eval: bool
    select_metric: str
    select_clean_floor: float
    val_examples: int | None
    val_every: int
    val_emas: bool
    train_examples: int | None
    train_clean_accuracy: bool
    bn_moving_variance: str
    init_from: str | None
    seed: int
    num_cpu_replicas: int
    jit_compile: str
    steps_per_execution: int
    precision: str
    tpu: str | None
    deterministic: bool
    restart: bool
    keep_checkpoints: int
    checkpoint_every_steps: int
    verbose: int


def _fraction(values, flag: str) -> float:
    try:
        return schedules.parse_fraction(str(values[flag]))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--{flag} must be a number or a ratio like 8/255, got {values[flag]!r}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _budget(
    values, prefix: str, *, epsilon_flag: str, norm: str, linf_images: bool
) -> learners.Attack:
    """An attack budget from `--<prefix>epsilon`, `--<prefix>step_size`, `--<prefix>num_steps`."""
    epsilon = _fraction(values, epsilon_flag)
    step_flag, steps_flag = f"{prefix}step_size", f"{prefix}num_steps"
    step_size = _fraction(values, step_flag)
    num_steps = values[steps_flag]
    upper = 1.0 if linf_images else float("inf")
    _require(
        0 < epsilon <= upper,
        f"--{epsilon_flag} must be in (0, {upper:g}] for images in [0, 1], got {values[epsilon_flag]}",
    )
    _require(
        0 < step_size <= epsilon,
        f"--{step_flag} must be in (0, --{epsilon_flag}={epsilon:g}], got {values[step_flag]}",
    )
    _require(num_steps >= 1, f"--{steps_flag} must be >= 1, got {num_steps}")
    return learners.Attack(norm, epsilon, step_size, num_steps)


def from_flags(values: Mapping[str, Any]) -> Config:
    """Builds and validates the configuration from a flag-name -> value mapping.

    Raises:
      ValueError: a one-line message naming the first invalid flag and its value.
    """
    v = dict(values)
    for flag, value in sorted(v.items()):
        if isinstance(value, str) and " #" in value:
            raise ValueError(
                f"--{flag}={value!r} holds a trailing comment: absl keeps everything after '=' "
                "in the value; put comments on their own line in flagfiles"
            )
    _require(v["mode"] in MODES, f"--mode must be one of {MODES}, got {v['mode']!r}")
    _require(bool(v["workdir"]), "--workdir is required")
    tf_config.parse()  # the environment's cluster description, before any work
    _require(data.is_known_dataset(v["dataset"]), _unknown_dataset(v["dataset"]))
    if v["mode"] == "train":
        if models.is_user_model(v["model"]):
            models.user_builder(v["model"])  # a one-line ValueError naming --model
        _require(
            v["model"] in models.MODELS or models.is_user_model(v["model"]),
            f"--model={v['model']!r} is unknown; choose one of {', '.join(models.MODELS)} or "
            "package.module:function (your own builder)",
        )
    for flag in ("epochs", "batch_size", "eval_batch_size"):
        _require(v[flag] >= 1, f"--{flag} must be >= 1, got {v[flag]}")
    _require(
        v["num_cpu_replicas"] >= 1, f"--num_cpu_replicas must be >= 1, got {v['num_cpu_replicas']}"
    )
    _require(
        v["jit_compile"] in attacks.JIT_POLICIES,
        f"--jit_compile must be one of {attacks.JIT_POLICIES}, got {v['jit_compile']!r}",
    )
    _require(
        v["steps_per_execution"] >= 1,
        f"--steps_per_execution must be >= 1, got {v['steps_per_execution']}",
    )
    _require(
        v["precision"] in PRECISIONS,
        f"--precision must be one of {PRECISIONS}, got {v['precision']!r}",
    )
    _require(0 <= v["ema_decay"] < 1, f"--ema_decay must be in [0, 1), got {v['ema_decay']}")
    _require(0 <= v["momentum"] < 1, f"--momentum must be in [0, 1), got {v['momentum']}")
    for flag in ("natural_weight_decay", "robust_weight_decay", "trades_beta"):
        _require(v[flag] >= 0, f"--{flag} must be >= 0, got {v[flag]}")
    _require(
        v["checkpoint_every_steps"] >= 0,
        f"--checkpoint_every_steps must be >= 0, got {v['checkpoint_every_steps']}",
    )
    _require(
        v["keep_checkpoints"] >= 1, f"--keep_checkpoints must be >= 1, got {v['keep_checkpoints']}"
    )
    _require(
        v["eval_examples"] >= 0, f"--eval_examples must be >= 0 (0: all), got {v['eval_examples']}"
    )

    # Variant: a preset, or `custom` with explicit learners and mixing.
    variant = v["variant"]
    if variant == variants.CUSTOM:
        names = tuple(n.strip() for n in v["learners"].split(",") if n.strip())
        _require(bool(names), "--variant=custom needs --learners, e.g. --learners=natural,linf_pgd")
        _require(
            bool(v["mixing"]),
            "--variant=custom needs --mixing, e.g. --mixing='natural=0:0,1:0.5;linf_pgd=0:1,1:0.5'",
        )
        communicate = len(names) > 1
    else:
        choices = ", ".join(list(variants.VARIANTS) + [variants.CUSTOM])
        _require(
            variant in variants.VARIANTS,
            f"--variant={variant!r} is unknown; choose one of {choices}",
        )
        _require(
            not v["learners"],
            f"--learners is only read with --variant=custom, got --learners={v['learners']!r} with --variant={variant}",
        )
        preset = variants.VARIANTS[variant]
        names, communicate = preset.learners, preset.communicate
        if not v["mixing"]:
            v["mixing"] = preset.mixing
    for name in names:
        _require(
            name in learners.LEARNERS,
            f"--learners: {name!r} is unknown; choose from {', '.join(learners.LEARNERS)}",
        )
    _require(
        len(set(names)) == len(names),
        f"--learners must not repeat a learner, got {','.join(names)}",
    )
    mixing = schedules.parse_mixing(v["mixing"])
    schedules.check_mixing(mixing, names, v["epochs"], flag="--mixing")

    communication = None
    if communicate and v["communication_mode"] != "none":
        _require(
            v["communication_mode"] in COMMUNICATION_MODES,
            f"--communication_mode must be one of {COMMUNICATION_MODES}, got {v['communication_mode']!r}",
        )
        start = _fraction(v, "communication_start")
        _require(
            0 <= start <= 1,
            f"--communication_start is a fraction of --epochs in [0, 1], got {v['communication_start']}",
        )
        _require(
            v["communication_period"] >= 1,
            f"--communication_period must be >= 1 epoch, got {v['communication_period']}",
        )
        communication = schedules.Communication(
            start, v["communication_period"], v["communication_mode"]
        )
        first = communication.start_epoch(v["epochs"])
        period = communication.period
        first_communicating = -(-first // period) * period
        _require(
            first_communicating <= v["epochs"],
            f"--communication_start={v['communication_start']} with --communication_period={period} "
            f"first communicates at epoch {first_communicating}, after the last epoch {v['epochs']}",
        )

    lr = schedules.parse_points(v["learning_rate"], flag="--learning_rate")
    _require(
        all(value > 0 for _, value in lr.points),
        f"--learning_rate values must be > 0, got {v['learning_rate']}",
    )

    adversarial = v["mode"] == "train" and any(n != "natural" for n in names)
    if adversarial:
        linf_attack = _budget(v, "", epsilon_flag="epsilon", norm="linf", linf_images=True)
        l2_attack = _budget(v, "l2_", epsilon_flag="l2_epsilon", norm="l2", linf_images=False)
    else:  # Not used for training; kept valid for the record.
        linf_attack = learners.Attack(
            "linf", _fraction(v, "epsilon"), _fraction(v, "step_size"), max(1, v["num_steps"])
        )
        l2_attack = learners.Attack(
            "l2",
            _fraction(v, "l2_epsilon"),
            _fraction(v, "l2_step_size"),
            max(1, v["l2_num_steps"]),
        )

    if v["dataset"] not in _EVAL_EPSILONS:
        # No default budget for a user's npz: the scale of its threat model is theirs to state.
        for flag in ("eval_epsilon_linf", "eval_epsilon_l2"):
            _require(bool(str(v[flag])), f"--{flag} is required with --dataset={v['dataset']}")
    default_linf, default_l2 = _EVAL_EPSILONS.get(v["dataset"], (None, None))
    eval_linf = _fraction(v, "eval_epsilon_linf") if str(v["eval_epsilon_linf"]) else default_linf
    eval_l2 = _fraction(v, "eval_epsilon_l2") if str(v["eval_epsilon_l2"]) else default_l2
    _require(
        0 < eval_linf <= 1, f"--eval_epsilon_linf must be in (0, 1], got {v['eval_epsilon_linf']}"
    )
    _require(eval_l2 > 0, f"--eval_epsilon_l2 must be > 0, got {v['eval_epsilon_l2']}")
    _require(v["eval_num_steps"] >= 1, f"--eval_num_steps must be >= 1, got {v['eval_num_steps']}")
    # PGD evaluation step: eps/4 (2/255 at 8/255, the protocol's setting).
    eval_attack = learners.Attack("linf", eval_linf, eval_linf / 4, v["eval_num_steps"])

    for flag in ("eval_restarts", "eval_square_queries", "eval_apgd_steps"):
        _require(v[flag] >= 1, f"--{flag} must be >= 1, got {v[flag]}")
    _require(
        v["reference"] in ("", "art"), f"--reference must be '' or 'art', got {v['reference']!r}"
    )
    if v["reference"] == "art" and (v["mode"] == "eval" or v["final_eval"]):
        import importlib.util

        _require(
            importlib.util.find_spec("art") is not None,
            "--reference=art needs the Adversarial Robustness Toolbox: "
            "pip install -r requirements-art.txt",
        )
    eval_attacks = tuple(a.strip() for a in v["eval_attacks"].split(",") if a.strip()) or None
    if eval_attacks:
        from generalist_tf.evaluation import suite

        eval_attacks = tuple(suite.expand_attacks(eval_attacks))
        unknown = sorted(set(eval_attacks) - set(suite.ATTACK_NAMES))
        _require(
            not unknown,
            f"--eval_attacks: unknown {unknown}; choose from {', '.join(suite.ATTACK_NAMES)} "
            f"or one of the lists {', '.join(suite.ATTACK_SETS)}",
        )
    if v["mode"] == "eval":
        _require(
            os.path.isdir(v["model"]),
            f"--model={v['model']} is not a directory: --mode=eval takes an exported SavedModel",
        )

    select_metric = select_key(v["select_metric"], names)
    _require(
        0 <= v["select_clean_floor"] <= 1,
        f"--select_clean_floor must be in [0, 1], got {v['select_clean_floor']}",
    )
    for flag in ("val_examples", "train_examples"):
        _require(v[flag] >= 0, f"--{flag} must be >= 0 (0: all), got {v[flag]}")
    _require(
        v["steps_per_epoch"] >= 0, f"--steps_per_epoch must be >= 0, got {v['steps_per_epoch']}"
    )
    if v["init_from"]:
        _require(
            os.path.exists(v["init_from"]) or os.path.exists(v["init_from"] + ".index"),
            f"--init_from={v['init_from']}: no such file or directory",
        )
    _require(v["val_every"] >= 1, f"--val_every must be >= 1, got {v['val_every']}")
    _require(
        v["bn_moving_variance"] in models.BN_MOVING_VARIANCE,
        f"--bn_moving_variance must be one of {models.BN_MOVING_VARIANCE}, "
        f"got {v['bn_moving_variance']!r}",
    )

    model_kwargs = (
        {"depth": v["wrn_depth"], "width": v["wrn_width"]} if v["model"] == "wide_resnet" else {}
    )
    return Config(
        workdir=v["workdir"],
        mode=v["mode"],
        dataset=v["dataset"],
        data_dir=v["data_dir"] or None,
        model=v["model"],
        model_kwargs=model_kwargs,
        normalize=v["normalize"],
        variant=variant,
        learners=names,
        mixing=mixing,
        communication=communication,
        epochs=v["epochs"],
        steps_per_epoch=v["steps_per_epoch"] or None,
        batch_size=v["batch_size"],
        eval_batch_size=v["eval_batch_size"],
        learning_rate=lr,
        momentum=v["momentum"],
        natural_weight_decay=v["natural_weight_decay"],
        robust_weight_decay=v["robust_weight_decay"],
        linf_attack=linf_attack,
        l2_attack=l2_attack,
        trades_beta=v["trades_beta"],
        ema_decay=v["ema_decay"],
        eval_attack=eval_attack,
        eval_epsilon_l2=eval_l2,
        eval_examples=v["eval_examples"] or None,
        table_examples=(
            (v["eval_examples"] or None)
            if v["table_examples"] < 0
            else (v["table_examples"] or None)
        ),
        eval_restarts=v["eval_restarts"],
        eval_square_queries=v["eval_square_queries"],
        eval_apgd_steps=v["eval_apgd_steps"],
        eval_attacks=eval_attacks,
        reference=v["reference"] or None,
        surrogate=v["surrogate"] or None,
        final_eval=v["final_eval"],
        select_metric=select_metric,
        select_clean_floor=v["select_clean_floor"],
        val_examples=v["val_examples"] or None,
        val_every=v["val_every"],
        val_emas=v["val_emas"],
        train_examples=v["train_examples"] or None,
        train_clean_accuracy=v["train_clean_accuracy"],
        bn_moving_variance=v["bn_moving_variance"],
        init_from=v["init_from"] or None,
        seed=v["seed"],
        num_cpu_replicas=v["num_cpu_replicas"],
        jit_compile=v["jit_compile"],
        steps_per_execution=v["steps_per_execution"],
        precision=v["precision"],
        tpu=v["tpu"] or None,
        deterministic=v["deterministic"],
        restart=v["restart"],
        keep_checkpoints=v["keep_checkpoints"],
        checkpoint_every_steps=v["checkpoint_every_steps"],
        verbose=v["verbose"],
    )


# Named selection rules (`--select_metric`); anything else must be an epoch-log key.
CLEAN_PLUS_PGD = "clean_plus_pgd"
SELECT_RULES = {
    CLEAN_PLUS_PGD: CLEAN_PLUS_PGD,
    "pgd": "val_global/pgd_accuracy",
    "clean": "val_global/clean_accuracy",
}
_EVAL_METRICS = ("loss", "clean_accuracy", "pgd_accuracy")


def select_key(value: str, learner_names) -> str:
    """The selection rule or validation-log key of `--select_metric`, checked before training.

    Raises:
      ValueError: a value that names neither a rule nor a key the validation step logs.
    """
    if value in SELECT_RULES:
        return SELECT_RULES[value]
    prefixes = ["global"] + [f"{name}_ema" for name in learner_names]
    keys = [f"val_{p}/{m}" for p in prefixes for m in _EVAL_METRICS]
    _require(
        value in keys,
        f"--select_metric={value!r} is neither a rule ({', '.join(SELECT_RULES)}) nor a "
        f"validation key ({', '.join(keys)})",
    )
    return value


def _unknown_dataset(name: str) -> str:
    known = ", ".join(list(data.EMBEDDED_DATASETS) + list(data.TFDS_DATASETS) + ["npz:PATH"])
    return f"--dataset={name!r} is unknown; choose one of {known}"
