"""The configuration's shared checks (`config.checks`): fractions and PGD budgets from flag
values, with one-line errors that name the flag and the value."""

import pytest

from generalist_tf.config import checks

FLAGS = {"epsilon": "8/255", "pgd_step_size": "2/255", "pgd_num_steps": 10}


def test_fraction_reads_numbers_and_ratios():
    assert checks.fraction({"epsilon": "8/255"}, "epsilon") == 8 / 255
    assert checks.fraction({"epsilon": 0.5}, "epsilon") == 0.5
    with pytest.raises(ValueError, match=r"^--epsilon must be a number or a ratio .*got 'x'$"):
        checks.fraction({"epsilon": "x"}, "epsilon")


def test_attack_budget_from_the_flags():
    attack = checks.attack_budget(
        FLAGS, "pgd_", epsilon_flag="epsilon", norm="linf", linf_images=True
    )
    assert (attack.norm, attack.epsilon, attack.step_size, attack.num_steps) == (
        "linf",
        8 / 255,
        2 / 255,
        10,
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(epsilon="8"), r"--epsilon must be in \(0, 1\] for images in \[0, 1\], got 8"),
        (dict(pgd_step_size="0.5"), r"--pgd_step_size must be in \(0, --epsilon="),
        (dict(pgd_num_steps=0), r"--pgd_num_steps must be >= 1, got 0"),
    ],
)
def test_a_bad_budget_gives_the_one_line_error(changes, message):
    with pytest.raises(ValueError, match=message) as raised:
        checks.attack_budget(
            {**FLAGS, **changes}, "pgd_", epsilon_flag="epsilon", norm="linf", linf_images=True
        )
    assert "\n" not in str(raised.value)
