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
COMMUNICATION_MODES = (*schedules.COMMUNICATION_MODES, "none")


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
                names.user_builder(v["model"], "--model")
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
        names.check_bn_moving_variance(v["bn_moving_variance"], "--bn_moving_variance")
        if v["model"] == "wide_resnet":
            names.check_wide_resnet(v["wrn_depth"], v["wrn_width"], prefix="--wrn_")
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
        budget.check_count("--epochs", v["epochs"], 1)
        require(v["batch_size"] >= 1, f"--batch_size must be >= 1, got {v['batch_size']}")
        require(
            v["steps_per_epoch"] >= 0, f"--steps_per_epoch must be >= 0, got {v['steps_per_epoch']}"
        )
        # The API's own checks (`api.build_generalist`), with the flags' names.
        schedules.check_momentum(v["momentum"], "--momentum")
        for flag in ("natural_weight_decay", "robust_weight_decay"):
            schedules.check_weight_decay(v[flag], f"--{flag}")
        lr = schedules.parse_points(v["learning_rate"], flag="--learning_rate")
        schedules.check_learning_rate(lr, "--learning_rate")
        schedules.check_scale(v["natural_lr_scale"], "--natural_lr_scale")
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
        learners = tuple(n.strip() for n in v["learners"].split(",") if n.strip())
        learners, mixing_text, communicate = variants.resolve(
            v["variant"], learners, v["mixing"], argument=variants.FLAG_NAMES
        )
        mixing = schedules.parse_mixing(mixing_text)
        schedules.check_mixing(mixing, learners, v["epochs"], flag="--mixing")
        communication = _communication(v) if communicate else None
        return cls(v["variant"], learners, mixing, communication, v["ema_decay"], v["trades_beta"])


def _communication(v: Mapping[str, Any]) -> schedules.Communication | None:
    """Step 4 of Alg. 1 (redistribution): when, how often, in which mode; None: never."""
    if v["communication_mode"] == "none":
        return None
    communication = schedules.Communication(
        fraction(v, "communication_start"), v["communication_period"], v["communication_mode"]
    )
    communication.check(v["epochs"], prefix="--communication_")  # the API's own check
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
