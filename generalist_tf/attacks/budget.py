"""The one check of an attack budget: every attack validates its arguments here, before tracing.

Pure Python (no TensorFlow), so the configuration can build its `Attack` budgets (which check
themselves here) without starting TensorFlow; the flags get their own `--flag` messages first
(`config/checks.py`). Values that are tensors (an attack called from inside a traced function)
are not inspected.
"""

from __future__ import annotations

import dataclasses
import numbers

NORMS = ("linf", "l2")
LOSSES = ("ce", "cw")
# Compile policies of every attack (see `compile.resolve_jit_compile`).
JIT_POLICIES = ("auto", "true", "false")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_norm(norm) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def check_epsilon(epsilon, name: str = "epsilon") -> None:
    if _is_number(epsilon) and not epsilon >= 0:
        raise ValueError(f"{name} must be >= 0, got {epsilon}")


def check_count(name: str, value, minimum: int) -> None:
    """An exact iteration (or query, restart, class) count: an int >= `minimum`."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_in(name: str, value, low: float, high: float, *, open_low: bool = False) -> None:
    """`value` in [low, high] (or (low, high] with `open_low`)."""
    inside = (low < value if open_low else low <= value) and value <= high
    if _is_number(value) and not inside:
        bracket = "(" if open_low else "["
        raise ValueError(f"{name} must be in {bracket}{low:g}, {high:g}], got {value}")


def check_budget(
    *, norm="linf", epsilon=0.0, step_size=None, num_steps=None, min_steps: int = 0
) -> None:
    """Raises ValueError, naming the argument and its value, for an impossible budget.

    Args:
      norm: `linf` or `l2`.
      epsilon: radius of the ball, >= 0.
      step_size: > 0 whenever at least one step is taken (None: the attack has no step size).
      num_steps: exact number of iterations, an int >= `min_steps` (None: not a step attack).
    """
    check_norm(norm)
    check_epsilon(epsilon)
    if num_steps is not None:
        check_count("num_steps", num_steps, min_steps)
    if step_size is not None and num_steps and _is_number(step_size) and not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")


@dataclasses.dataclass(frozen=True)
class Attack:
    """A PGD budget, the one type the config, the learners and the API share.

    Which norm, the radius, the step, the exact number of steps, the random start and the loss
    (`ce` or `cw`); `projected.pgd_with(attack, model, x, y)` runs it.
    """

    norm: str
    epsilon: float
    step_size: float
    num_steps: int
    random_start: bool = True
    loss: str = "ce"

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        check_budget(
            norm=self.norm,
            epsilon=self.epsilon,
            step_size=self.step_size,
            num_steps=self.num_steps,
        )


def check_training_attack(attack: Attack, prefix: str) -> None:
    """A training attack's budget as the learners need it: 0 < epsilon (<= 1 for l_inf, images
    in [0, 1]), 0 < step <= epsilon, at least one step.

    Args:
      prefix: how the fields are named, `<prefix>epsilon` ...: `linf_attack.` from Python; the
        command line checks its flags with `config.checks.attack_budget`, which calls this with
        its flag names.
    """
    names = {field: f"{prefix}{field}" for field in ("epsilon", "step_size", "num_steps")}
    check_named_budget(attack.norm, attack.epsilon, attack.step_size, attack.num_steps, names=names)


def check_named_budget(norm, epsilon, step_size, num_steps, *, names: dict, shown=None) -> None:
    """The training budget's checks, each value named by `names[field]` (and shown as
    `shown[field]` when given, e.g. the flag's text `8/255`)."""
    shown = shown or {}
    upper = 1.0 if norm == "linf" else float("inf")
    if not 0 < epsilon <= upper:
        raise ValueError(
            f"{names['epsilon']} must be in (0, {upper:g}] for images in [0, 1], got "
            f"{shown.get('epsilon', epsilon)}"
        )
    if not 0 < step_size <= epsilon:
        raise ValueError(
            f"{names['step_size']} must be in (0, {names['epsilon']}={epsilon:g}], got "
            f"{shown.get('step_size', step_size)}"
        )
    if not num_steps >= 1:
        raise ValueError(f"{names['num_steps']} must be >= 1, got {num_steps}")


def validation_attack(epsilon: float, num_steps: int | None = None) -> Attack:
    """The validation and evaluation PGD of a threat model: l_inf `epsilon`, step epsilon / 4,
    `num_steps` steps (default 20), random start. Both doors derive it here."""
    from generalist_tf import defaults

    steps = defaults.EVAL_NUM_STEPS if num_steps is None else num_steps
    return Attack("linf", epsilon, defaults.eval_step(epsilon), steps)
