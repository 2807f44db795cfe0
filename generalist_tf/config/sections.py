"""The configuration's sections: runtime, data, model, optimisation, Alg. 1, training attacks."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from generalist_tf import names, tf_config
from generalist_tf.algorithm import schedules, variants
from generalist_tf.attacks import budget
from generalist_tf.config.checks import attack_budget, fraction, require

MODES = ("train", "eval")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
COMMUNICATION_MODES = ("every_batch", "once_per_period", "none")


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where and how the run executes: workdir, devices, compilation, precision, checkpoints."""

    workdir: str
    mode: str
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

    @classmethod
    def from_flags(cls, v: Mapping[str, Any]) -> Runtime:
        require(v["mode"] in MODES, f"--mode must be one of {MODES}, got {v['mode']!r}")
        require(bool(v["workdir"]), "--workdir is required")
        tf_config.parse()  # the environment's cluster description, before any work
        require(
            v["num_cpu_replicas"] >= 1,
            f"--num_cpu_replicas must be >= 1, got {v['num_cpu_replicas']}",
        )
        require(
            v["jit_compile"] in budget.JIT_POLICIES,
            f"--jit_compile must be one of {budget.JIT_POLICIES}, got {v['jit_compile']!r}",
        )
        require(
            v["steps_per_execution"] >= 1,
            f"--steps_per_execution must be >= 1, got {v['steps_per_execution']}",
        )
        require(
            v["precision"] in PRECISIONS,
            f"--precision must be one of {PRECISIONS}, got {v['precision']!r}",
        )
        require(
            v["checkpoint_every_steps"] >= 0,
            f"--checkpoint_every_steps must be >= 0, got {v['checkpoint_every_steps']}",
        )
        require(
            v["keep_checkpoints"] >= 1,
            f"--keep_checkpoints must be >= 1, got {v['keep_checkpoints']}",
        )
        return cls(
            workdir=v["workdir"],
            mode=v["mode"],
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


@dataclasses.dataclass(frozen=True)
class Data:
    """Which dataset, from where, and how much of its training split."""

    dataset: str
    data_dir: str | None
    train_examples: int | None

    @classmethod
    def from_flags(cls, v: Mapping[str, Any]) -> Data:
        require(names.is_known_dataset(v["dataset"]), names.unknown_dataset(v["dataset"]))
        require(
            v["train_examples"] >= 0,
            f"--train_examples must be >= 0 (0: all), got {v['train_examples']}",
        )
        return cls(v["dataset"], v["data_dir"] or None, v["train_examples"] or None)


@dataclasses.dataclass(frozen=True)
class Model:
    """The network: architecture (or the user's builder), input normalisation, BatchNorm."""

    model: str
    model_kwargs: Mapping[str, Any]
    normalize: bool
    bn_moving_variance: str
    init_from: str | None

    @classmethod
    def from_flags(cls, v: Mapping[str, Any]) -> Model:
        if v["mode"] == "train":
            if names.is_user_model(v["model"]):
                names.user_builder(v["model"])  # a one-line ValueError naming --model
            require(
                v["model"] in names.MODELS or names.is_user_model(v["model"]),
                f"--model={v['model']!r} is unknown; choose one of {', '.join(names.MODELS)} "
                "or package.module:function (your own builder)",
            )
        else:
            require(
                os.path.isdir(v["model"]),
                f"--model={v['model']} is not a directory: --mode=eval takes an exported "
                "SavedModel",
            )
        if v["init_from"]:
            require(
                os.path.exists(v["init_from"]) or os.path.exists(v["init_from"] + ".index"),
                f"--init_from={v['init_from']}: no such file or directory",
            )
        require(
            v["bn_moving_variance"] in names.BN_MOVING_VARIANCE,
            f"--bn_moving_variance must be one of {names.BN_MOVING_VARIANCE}, "
            f"got {v['bn_moving_variance']!r}",
        )
        model_kwargs = (
            {"depth": v["wrn_depth"], "width": v["wrn_width"]}
            if v["model"] == "wide_resnet"
            else {}
        )
        return cls(
            model=v["model"],
            model_kwargs=model_kwargs,
            normalize=v["normalize"],
            bn_moving_variance=v["bn_moving_variance"],
            init_from=v["init_from"] or None,
        )


@dataclasses.dataclass(frozen=True)
class Optimisation:
    """How long and how each learner is optimised: epochs, batch, learning rate, SGD."""

    epochs: int
    steps_per_epoch: int | None
    batch_size: int
    learning_rate: schedules.PiecewiseLinear
    momentum: float
    natural_weight_decay: float
    robust_weight_decay: float
    natural_lr_scale: float = 1.0

    @classmethod
    def from_flags(cls, v: Mapping[str, Any]) -> Optimisation:
        for flag in ("epochs", "batch_size"):
            require(v[flag] >= 1, f"--{flag} must be >= 1, got {v[flag]}")
        require(
            v["steps_per_epoch"] >= 0, f"--steps_per_epoch must be >= 0, got {v['steps_per_epoch']}"
        )
        require(0 <= v["momentum"] < 1, f"--momentum must be in [0, 1), got {v['momentum']}")
        for flag in ("natural_weight_decay", "robust_weight_decay"):
            require(v[flag] >= 0, f"--{flag} must be >= 0, got {v[flag]}")
        lr = schedules.parse_points(v["learning_rate"], flag="--learning_rate")
        require(
            all(value > 0 for _, value in lr.points),
            f"--learning_rate values must be > 0, got {v['learning_rate']}",
        )
        schedules.check_scale(v["natural_lr_scale"], "--natural_lr_scale")  # the API's own check
        return cls(
            epochs=v["epochs"],
            steps_per_epoch=v["steps_per_epoch"] or None,
            batch_size=v["batch_size"],
            learning_rate=lr,
            momentum=v["momentum"],
            natural_weight_decay=v["natural_weight_decay"],
            robust_weight_decay=v["robust_weight_decay"],
            natural_lr_scale=v["natural_lr_scale"],
        )


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """Generalist (Alg. 1): the learners, their mixing weights, the EMA and the redistribution."""

    variant: str
    learners: tuple[str, ...]
    mixing: Mapping[str, schedules.PiecewiseLinear]
    communication: schedules.Communication | None
    ema_decay: float
    trades_beta: float

    @classmethod
    def from_flags(cls, v: Mapping[str, Any]) -> Algorithm:
        # The API's own checks, with the flag's name.
        schedules.check_ema_decay(v["ema_decay"], "--ema_decay")
        schedules.check_trades_beta(v["trades_beta"], "--trades_beta")
        # Variant: a preset, or `custom` with explicit learners and mixing.
        variant, mixing_text = v["variant"], v["mixing"]
        if variant == variants.CUSTOM:
            learners = tuple(n.strip() for n in v["learners"].split(",") if n.strip())
            require(
                bool(learners),
                "--variant=custom needs --learners, e.g. --learners=natural,linf_pgd",
            )
            require(
                bool(mixing_text),
                "--variant=custom needs --mixing, e.g. "
                "--mixing='natural=0:0,1:0.5;linf_pgd=0:1,1:0.5'",
            )
            communicate = len(learners) > 1
        else:
            choices = ", ".join(list(variants.VARIANTS) + [variants.CUSTOM])
            require(
                variant in variants.VARIANTS,
                f"--variant={variant!r} is unknown; choose one of {choices}",
            )
            require(
                not v["learners"],
                f"--learners is only read with --variant=custom, got "
                f"--learners={v['learners']!r} with --variant={variant}",
            )
            preset = variants.VARIANTS[variant]
            learners, communicate = preset.learners, preset.communicate
            mixing_text = mixing_text or preset.mixing
        for name in learners:
            require(
                name in names.TRAINING_NORMS,
                f"--learners: {name!r} is unknown; choose from {', '.join(names.TRAINING_NORMS)}",
            )
        require(
            len(set(learners)) == len(learners),
            f"--learners must not repeat a learner, got {','.join(learners)}",
        )
        mixing = schedules.parse_mixing(mixing_text)
        schedules.check_mixing(mixing, learners, v["epochs"], flag="--mixing")
        communication = _communication(v) if communicate else None
        return cls(variant, learners, mixing, communication, v["ema_decay"], v["trades_beta"])


def _communication(v: Mapping[str, Any]) -> schedules.Communication | None:
    """Step 4 of Alg. 1 (redistribution): when, how often, in which mode; None: never."""
    if v["communication_mode"] == "none":
        return None
    require(
        v["communication_mode"] in COMMUNICATION_MODES,
        f"--communication_mode must be one of {COMMUNICATION_MODES}, "
        f"got {v['communication_mode']!r}",
    )
    start = fraction(v, "communication_start")
    require(
        0 <= start <= 1,
        f"--communication_start is a fraction of --epochs in [0, 1], "
        f"got {v['communication_start']}",
    )
    require(
        v["communication_period"] >= 1,
        f"--communication_period must be >= 1 epoch, got {v['communication_period']}",
    )
    communication = schedules.Communication(
        start, v["communication_period"], v["communication_mode"]
    )
    first = communication.start_epoch(v["epochs"])
    period = communication.period
    first_communicating = -(-first // period) * period
    require(
        first_communicating <= v["epochs"],
        f"--communication_start={v['communication_start']} with --communication_period={period} "
        f"first communicates at epoch {first_communicating}, after the last epoch {v['epochs']}",
    )
    return communication


@dataclasses.dataclass(frozen=True)
class TrainingAttacks:
    """The budgets of the adversarial learners' attacks (l_inf and l_2 PGD)."""

    linf_attack: budget.Attack
    l2_attack: budget.Attack

    @classmethod
    def from_flags(cls, v: Mapping[str, Any], learners: tuple[str, ...]) -> TrainingAttacks:
        if v["mode"] == "train" and any(n != "natural" for n in learners):
            return cls(
                attack_budget(v, "", epsilon_flag="epsilon", norm="linf", linf_images=True),
                attack_budget(v, "l2_", epsilon_flag="l2_epsilon", norm="l2", linf_images=False),
            )
        # Not used for training; kept valid for the record.
        return cls(
            budget.Attack(
                "linf", fraction(v, "epsilon"), fraction(v, "step_size"), max(1, v["num_steps"])
            ),
            budget.Attack(
                "l2",
                fraction(v, "l2_epsilon"),
                fraction(v, "l2_step_size"),
                max(1, v["l2_num_steps"]),
            ),
        )
