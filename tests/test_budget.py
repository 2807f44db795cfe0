"""Attack budgets (`attacks.budget`): the one argument check names the argument and its value."""

import pytest

from generalist_tf.attacks import budget


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(norm="l1"), "norm must be one of"),
        (dict(epsilon=-0.1), r"epsilon must be >= 0, got -0.1"),
        (dict(num_steps=2.5, step_size=0.1), r"num_steps must be an integer >= 0, got 2.5"),
        (dict(num_steps=True, step_size=0.1), "num_steps must be an integer"),
        (dict(num_steps=3, step_size=0.0), r"step_size must be > 0, got 0.0"),
    ],
)
def test_an_impossible_budget_is_refused_naming_the_argument(arguments, message):
    with pytest.raises(ValueError, match=message):
        budget.check_budget(**arguments)


def test_a_possible_budget_passes_and_zero_steps_need_no_step_size():
    budget.check_budget(norm="l2", epsilon=0.5, step_size=0.1, num_steps=10)
    budget.check_budget(norm="linf", epsilon=0.0, step_size=0.0, num_steps=0)


def test_attack_checks_its_loss_and_budget():
    attack = budget.Attack("linf", 0.1, 0.025, 10)
    assert (attack.random_start, attack.loss) == (True, "ce")
    with pytest.raises(ValueError, match="loss must be one of"):
        budget.Attack("linf", 0.1, 0.025, 10, loss="hinge")
    with pytest.raises(ValueError, match="num_steps"):
        budget.Attack("linf", 0.1, 0.025, 0.5)


def test_check_in_names_the_interval():
    budget.check_in("rho", 0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\], got 0"):
        budget.check_in("rho", 0, 0.0, 1.0, open_low=True)
