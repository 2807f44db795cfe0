"""The configuration's shared checks: one-line errors naming the flag, fractions, PGD budgets."""

from __future__ import annotations

from generalist_tf.algorithm import schedules
from generalist_tf.attacks import budget


def fraction(values, flag: str) -> float:
    try:
        return schedules.parse_fraction(str(values[flag]))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--{flag} must be a number or a ratio like 8/255, got {values[flag]!r}")


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def attack_budget(
    values, prefix: str, *, epsilon_flag: str, norm: str, linf_images: bool
) -> budget.Attack:
    """An attack budget from `--<prefix>epsilon`, `--<prefix>step_size`, `--<prefix>num_steps`."""
    epsilon = fraction(values, epsilon_flag)
    step_flag, steps_flag = f"{prefix}step_size", f"{prefix}num_steps"
    step_size = fraction(values, step_flag)
    num_steps = values[steps_flag]
    # The API's own check (`budget.check_named_budget`), with the flags' names and texts.
    budget.check_named_budget(
        norm if linf_images else "l2",
        epsilon,
        step_size,
        num_steps,
        names={
            "epsilon": f"--{epsilon_flag}",
            "step_size": f"--{step_flag}",
            "num_steps": f"--{steps_flag}",
        },
        shown={"epsilon": values[epsilon_flag], "step_size": values[step_flag]},
    )
    return budget.Attack(norm, epsilon, step_size, num_steps)
