"""The project's vocabulary: the names flags, configs and files use, in pure Python.

Datasets, architectures, BatchNorm conventions and learner tasks are named here once; the modules
that implement them (`data`, `models`, `algorithm/learners`) import these names and check at
import time that their registries match. The configuration validates flags against this module,
so checking a flagfile does not start TensorFlow or Keras.
"""

from __future__ import annotations

import importlib

# Datasets served by tensorflow-datasets, with the size of the validation split carved out of
# their training split and the augmentation they get during training.
TFDS_DATASETS = {
    "mnist": (1_000, "none"),
    "fashion_mnist": (1_000, "none"),
    "cifar10": (5_000, "crop_flip"),
    "cifar100": (5_000, "crop_flip"),
    "svhn_cropped": (5_000, "crop"),
}
EMBEDDED_DATASETS = ("digits",)
NPZ_PREFIX = "npz:"

# The architectures of `models.MODELS`, and BatchNorm's moving-variance conventions.
MODELS = ("resnet18", "preact_resnet18", "wide_resnet", "small_cnn", "digits_cnn")
BN_MOVING_VARIANCE = ("unbiased", "biased")


def check_bn_moving_variance(value: str, argument: str = "bn_moving_variance") -> None:
    """BatchNorm's moving-variance convention must be one of `BN_MOVING_VARIANCE`."""
    if value not in BN_MOVING_VARIANCE:
        raise ValueError(f"{argument} must be one of {BN_MOVING_VARIANCE}, got {value!r}")


# The learner tasks of `algorithm/learners.LEARNERS` and the threat models each trains against
# (what the evaluation compares its epsilons with).
TRAINING_NORMS: dict[str, tuple[str, ...]] = {
    "natural": (),
    "linf_pgd": ("linf",),
    "l2_pgd": ("l2",),
    "trades": ("linf",),
    "avg": ("linf", "l2"),
    "max": ("linf", "l2"),
    "msd": ("linf", "l2"),
}

# What the validation step logs for each evaluated network, as `val_<prefix>/<metric>` (Keras
# adds `val_`): prefixes `global` (G), `best` and `<task>_ema`; the test table uses
# `<prefix>/<metric>`.
EVAL_METRICS = ("loss", "clean_accuracy", "pgd_accuracy")
GLOBAL = "global"


def metric_key(prefix: str, metric: str, *, validation: bool = True) -> str:
    """The log key of `metric` (one of `EVAL_METRICS`) of the network `prefix`."""
    return f"{'val_' if validation else ''}{prefix}/{metric}"


# The official selection rule (`--select_metric`): the best clean + PGD accuracy of G.
CLEAN_PLUS_PGD = "clean_plus_pgd"
# Named selection rules; anything else must be a validation-log key.
SELECT_RULES = {
    CLEAN_PLUS_PGD: CLEAN_PLUS_PGD,
    "pgd": f"val_{GLOBAL}/pgd_accuracy",
    "clean": f"val_{GLOBAL}/clean_accuracy",
}


def select_key(value: str, learner_names, argument: str = "select_metric") -> str:
    """The selection rule or validation-log key `value` names, checked before training.

    Raises:
      ValueError: a value that names neither a rule nor a key the validation step logs (naming
        `argument`: `select_metric` from Python, `--select_metric` on the command line).
    """
    if value in SELECT_RULES:
        return SELECT_RULES[value]
    prefixes = [GLOBAL] + [f"{name}_ema" for name in learner_names]
    keys = [metric_key(p, m) for p in prefixes for m in EVAL_METRICS]
    if value not in keys:
        raise ValueError(
            f"{argument}={value!r} is neither a rule ({', '.join(SELECT_RULES)}) nor a "
            f"validation key ({', '.join(keys)})"
        )
    return value


def check_clean_floor(value: float, argument: str = "select_clean_floor") -> None:
    """The selection's clean-accuracy floor is an accuracy, in [0, 1]."""
    if not 0 <= value <= 1:
        raise ValueError(f"{argument} must be in [0, 1], got {value}")


def trained_norms(tasks) -> tuple[str, ...]:
    """The threat models a run of these learner tasks trains against, sorted."""
    return tuple(sorted({norm for task in tasks for norm in TRAINING_NORMS.get(task, ())}))


def is_known_dataset(name: str) -> bool:
    """Whether `name` names a dataset `data.load` understands (npz files are not opened)."""
    return name in EMBEDDED_DATASETS or name in TFDS_DATASETS or name.startswith(NPZ_PREFIX)


def known_datasets() -> str:
    """The dataset names for an error message."""
    return ", ".join(list(EMBEDDED_DATASETS) + list(TFDS_DATASETS) + [f"{NPZ_PREFIX}PATH"])


def unknown_dataset(name: str) -> str:
    """The one-line message for a `--dataset` that names no dataset."""
    return f"--dataset={name!r} is unknown; choose one of {known_datasets()}"


def is_user_model(name: str) -> bool:
    """Whether `--model` names a user's builder, `package.module:function`, not our registry."""
    return ":" in name


def check_wide_resnet(depth: int, width: int, prefix: str = "") -> None:
    """A WRN-depth-width must have depth 6n+4 >= 10 and width >= 1 (`<prefix>depth`, ...)."""
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ValueError(f"{prefix}depth must be 6n+4 and at least 10, got {depth}")
    if width < 1:
        raise ValueError(f"{prefix}width must be at least 1, got {width}")


def user_builder(name: str, argument: str = "model"):
    """The function `package.module:function` names: `build(image_shape, num_classes)` returning
    a fresh `keras.Model` from [0, 1] images to logits (`--model=my_nets:build`).

    Raises:
      ValueError: the module does not import or has no such function (one line naming
        `argument`: `model` from Python, `--model` on the command line).
    """
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{argument}={name}: cannot import {module_name!r} ({e})") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ValueError(f"{argument}={name}: {module_name} has no function {attribute!r}")
    return function
