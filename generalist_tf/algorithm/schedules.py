"""Schedules as functions of the (1-indexed) epoch: learning rate, mixing weights, communication.

Each schedule's check lives here, beside it, and is the one both doors run: the Python API
(`api.build_generalist`, naming the argument) and the configuration (naming the flag).

Every boundary is a fraction of training read from the config; no epoch number is written in
code. A schedule is piecewise linear through points `(fraction_of_epochs, value)` and is
evaluated at the integer epoch, as in the official code (`np.interp(epoch, ...)`). Pure Python:
the configuration parses and checks schedules without starting TensorFlow (the learning rate's
Keras form is `optimizers.EpochSchedule`).
"""

from __future__ import annotations

import dataclasses
import fractions
from typing import Sequence

from generalist_tf import defaults


@dataclasses.dataclass(frozen=True)
class PiecewiseLinear:
    """Piecewise-linear function of `epoch / epochs` through `points`, constant outside them.

    Attributes:
      points: `((fraction, value), ...)` with strictly increasing fractions in [0, 1].
    """

    points: tuple[tuple[float, float], ...]

    def __post_init__(self):
        fracs = [f for f, _ in self.points]
        if not self.points or any(b <= a for a, b in zip(fracs, fracs[1:])):
            raise ValueError(
                f"schedule points need strictly increasing fractions, got {self.points}"
            )
        if fracs[0] < 0 or fracs[-1] > 1:
            raise ValueError(f"schedule fractions must lie in [0, 1], got {fracs}")

    def __call__(self, epoch: float, epochs: int) -> float:
        """The value at 1-indexed `epoch` of a run of `epochs` epochs (Python floats)."""
        t = epoch / epochs
        (f0, v0) = self.points[0]
        if t <= f0:
            return v0
        for f1, v1 in self.points[1:]:
            if t <= f1:
                return v0 + (v1 - v0) * (t - f0) / (f1 - f0)
            f0, v0 = f1, v1
        return v0

    def __str__(self) -> str:
        return ",".join(f"{f:g}:{v:g}" for f, v in self.points)


def parse_fraction(text: str) -> float:
    """`0.25`, `1/3` or `2/3` to a float (a fraction written as a ratio stays exact)."""
    return float(fractions.Fraction(text.strip()))


def parse_points(text: str, *, flag: str) -> PiecewiseLinear:
    """Parses `frac:value,frac:value,...` (fractions may be written `1/3`).

    Raises:
      ValueError: naming `flag` and the text when it does not parse.
    """
    try:
        points = []
        for item in text.split(","):
            frac, value = item.split(":")
            points.append((parse_fraction(frac), float(value)))
        return PiecewiseLinear(tuple(points))
    except (ValueError, ZeroDivisionError) as e:
        raise ValueError(f"{flag} must look like '0:1,2/3:1,1:0.4', got {text!r} ({e})") from None


def parse_mixing(text: str, *, flag: str = "--mixing") -> dict[str, PiecewiseLinear]:
    """Parses `name=frac:value,...;name=frac:value,...` into per-learner weight schedules."""
    schedules = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        if "=" not in part:
            raise ValueError(f"{flag} entries must look like 'linf_pgd=0:1,1:0.4', got {part!r}")
        name, points = part.split("=", 1)
        schedules[name.strip()] = parse_points(points, flag=f"{flag} ({name.strip()})")
    return schedules


def mixing_weights(
    schedules: dict[str, PiecewiseLinear], names: Sequence[str], epoch: int, epochs: int
) -> list[float]:
    """The interpolation weights w_i(epoch) of the learners `names`, in that order."""
    return [schedules[name](epoch, epochs) for name in names]


def check_mixing(
    schedules: dict[str, PiecewiseLinear], names: Sequence[str], epochs: int, *, flag: str
):
    """Raises ValueError unless the learners' weights are >= 0 and sum to 1 at every epoch."""
    if set(schedules) != set(names):
        raise ValueError(
            f"{flag} must give one schedule per learner {sorted(names)}, got {sorted(schedules)}"
        )
    for epoch in range(1, epochs + 1):
        weights = mixing_weights(schedules, names, epoch, epochs)
        if min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(
                f"{flag} weights must be >= 0 and sum to 1 at every epoch; at epoch {epoch} they "
                f"are {dict(zip(names, weights))}"
            )


def check_learning_rate(schedule: PiecewiseLinear, argument: str = "learning_rate") -> None:
    """Every value of a learning-rate schedule must be > 0 (0 would freeze a learner silently)."""
    if not all(value > 0 for _, value in schedule.points):
        raise ValueError(f"{argument} values must be > 0, got {schedule}")


COMMUNICATION_MODES = ("every_batch", "once_per_period")


@dataclasses.dataclass(frozen=True)
class Communication:
    """When the global weights are copied back into the learners (paper: redistribution).

    Attributes:
      start: first epoch that may communicate, as a fraction of the epochs (official: 75/120).
      period: communicate in epochs `e >= start` with `e % period == 0` (official: 5).
      mode: `every_batch` (after every batch of such an epoch, as the official code) or
        `once_per_period` (once, at the end of such an epoch).
    """

    start: float
    period: int
    mode: str = defaults.COMMUNICATION_MODE

    def start_epoch(self, epochs: int) -> int:
        return max(1, round(self.start * epochs))

    def is_communication_epoch(self, epoch: int, epochs: int) -> bool:
        """Whether 1-indexed `epoch` communicates."""
        return epoch >= self.start_epoch(epochs) and epoch % self.period == 0

    def first_epoch(self, epochs: int) -> int:
        """The first epoch that communicates (it may lie after `epochs`: then none does)."""
        return -(-self.start_epoch(epochs) // self.period) * self.period

    def check(self, epochs: int, prefix: str = "communication.") -> None:
        """Refuses a schedule that is malformed or never fires within `epochs`.

        Args:
          prefix: how a field is named in the message, `<prefix>start`: `communication.` for a
            Python caller, `--communication_` on the command line.
        """
        if self.mode not in COMMUNICATION_MODES:
            raise ValueError(
                f"{prefix}mode must be one of {COMMUNICATION_MODES}, got {self.mode!r}"
            )
        if not 0 <= self.start <= 1:
            raise ValueError(
                f"{prefix}start is a fraction of the epochs in [0, 1], got {self.start:g}"
            )
        if not isinstance(self.period, int) or isinstance(self.period, bool) or self.period < 1:
            raise ValueError(f"{prefix}period must be an integer >= 1 epoch, got {self.period!r}")
        first = self.first_epoch(epochs)
        if first > epochs:
            raise ValueError(
                f"{prefix}start={self.start:g} with {prefix}period={self.period} first "
                f"communicates at epoch {first}, after the last epoch {epochs}"
            )


def check_scale(scale: float, argument: str = "scale") -> None:
    """Refuses a learning-rate multiplier that is not > 0 (naming `argument` and the value)."""
    if not scale > 0:
        raise ValueError(f"{argument} must be > 0, got {scale}")


def check_momentum(momentum: float, argument: str = "momentum") -> None:
    """SGD momentum mu must lie in [0, 1) (1 never forgets a gradient; the iterate diverges)."""
    if not 0 <= momentum < 1:
        raise ValueError(f"{argument} must be in [0, 1), got {momentum}")


def check_weight_decay(weight_decay: float, argument: str = "weight_decay") -> None:
    """A coupled L2 weight decay must be >= 0 (a negative one grows the weights)."""
    if not weight_decay >= 0:
        raise ValueError(f"{argument} must be >= 0, got {weight_decay}")


def check_ema_decay(ema_decay: float, argument: str = "ema_decay") -> None:
    """The EMA ceiling alpha must lie in [0, 1) (1 would freeze every EMA at theta_0)."""
    if not 0 <= ema_decay < 1:
        raise ValueError(f"{argument} must be in [0, 1), got {ema_decay}")


def check_trades_beta(beta: float, argument: str = "trades_beta") -> None:
    """TRADES' robustness weight must be >= 0 (a negative one rewards the KL it should bound)."""
    if not beta >= 0:
        raise ValueError(f"{argument} must be >= 0, got {beta}")
