"""The two front doors run one algorithm: every default the API and the flags share is equal."""

import inspect

import pytest

from generalist_tf import api, cli, config, defaults
from generalist_tf.algorithm import schedules
from generalist_tf.attacks import budget

# Parameters of `gtf.build_generalist` whose default is the same-named flag's (resolved by the
# config: the value the command line runs with when the flag is not given).
SAME_NAME = {
    "variant": lambda c: c.algorithm.variant,
    "learning_rate": lambda c: c.optimisation.learning_rate,
    "momentum": lambda c: c.optimisation.momentum,
    "natural_weight_decay": lambda c: c.optimisation.natural_weight_decay,
    "robust_weight_decay": lambda c: c.optimisation.robust_weight_decay,
    "natural_lr_scale": lambda c: c.optimisation.natural_lr_scale,
    "trades_beta": lambda c: c.algorithm.trades_beta,
    "ema_decay": lambda c: c.algorithm.ema_decay,
    "select_metric": lambda c: c.evaluation.select_metric,
    "select_clean_floor": lambda c: c.evaluation.select_clean_floor,
    "seed": lambda c: c.runtime.seed,
    "jit_compile": lambda c: c.runtime.jit_compile,
    "linf_attack": lambda c: c.attacks.linf_attack,
    "l2_attack": lambda c: c.attacks.l2_attack,
}
# Parameters of the API with no flag of the same meaning (and why).
API_ONLY = {
    "build_network",  # --model names a builder; the API takes the builder itself
    "epochs",  # required by the API (no default to compare)
    "steps_per_epoch",  # required by the API
    "tasks",  # --learners
    "mixing",  # None: the variant's own mixing, as the empty --mixing
    "eval_attack",  # derived: `budget.validation_attack` (test below)
    "optimizer_for",  # a Python hook
    "communication",  # "default": compared below
    "init",  # --init_from, empty by default on both
    "clean_accuracy",  # --train_clean_accuracy, compared below
}


@pytest.fixture(scope="module")
def cli_config():
    return config.from_flags(cli.parse("--workdir=/tmp/defaults").flag_values_dict())


def _api_defaults():
    return {
        name: p.default
        for name, p in inspect.signature(api.build_generalist).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_every_api_parameter_is_compared_or_explained():
    names = set(inspect.signature(api.build_generalist).parameters)
    assert names == set(SAME_NAME) | API_ONLY, names ^ (set(SAME_NAME) | API_ONLY)


@pytest.mark.parametrize("name", sorted(SAME_NAME))
def test_api_default_equals_the_flag_default(name, cli_config):
    value = _api_defaults()[name]
    if name == "learning_rate":
        value = schedules.parse_points(value, flag="learning_rate")
    assert value == SAME_NAME[name](cli_config), name


def test_communication_and_clean_accuracy_defaults_agree(cli_config):
    model_default = schedules.Communication(
        defaults.COMMUNICATION_START, defaults.COMMUNICATION_PERIOD, defaults.COMMUNICATION_MODE
    )
    assert cli_config.algorithm.communication == model_default
    assert _api_defaults()["clean_accuracy"] == cli_config.evaluation.train_clean_accuracy


def test_validation_attack_is_one_derivation(cli_config):
    """Both doors: PGD-20, step epsilon / 4 (the command line at its evaluation epsilon, the API
    at its training epsilon unless given)."""
    eps = cli_config.evaluation.eval_attack.epsilon
    assert cli_config.evaluation.eval_attack == budget.validation_attack(eps)
    assert budget.validation_attack(0.1) == budget.Attack("linf", 0.1, 0.025, 20)


def test_the_robust_weight_decay_is_the_official_resnet18_value():
    assert defaults.ROBUST_WEIGHT_DECAY == 3.5e-3
    assert _api_defaults()["robust_weight_decay"] == 3.5e-3
