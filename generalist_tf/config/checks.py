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
    upper = 1.0 if linf_images else float("inf")
    require(
        0 < epsilon <= upper,
        f"--{epsilon_flag} must be in (0, {upper:g}] for images in [0, 1], got {values[epsilon_flag]}",
    )
    require(
        0 < step_size <= epsilon,
        f"--{step_flag} must be in (0, --{epsilon_flag}={epsilon:g}], got {values[step_flag]}",
    )
    require(num_steps >= 1, f"--{steps_flag} must be >= 1, got {num_steps}")
    return budget.Attack(norm, epsilon, step_size, num_steps)
