"""Presets: the three Generalist variants and the baselines, as lists of learners + schedules.

A variant is data, not a code path: which base learners train, how their EMAs are weighted into
the global learner over training (fractions of the epochs), and whether the global weights are
redistributed. A baseline is a single learner with weight 1 and no redistribution, so it runs
through the same data, models, EMA and evaluation as Generalist and differs only in algorithm.
"""

from __future__ import annotations

import dataclasses

# The official natural/robust schedule: the robust learner's weight beta is piecewise linear
# through (0, 1), (E/3, 1), (2E/3, 1), (E, 0.4); the natural learner gets 1 - beta.
_ROBUST_BETA = "0:1,1/3:1,2/3:1,1:0.4"
_NATURAL_BETA = "0:0,1/3:0,2/3:0,1:0.6"


@dataclasses.dataclass(frozen=True)
class Variant:
    """A preset.

    Attributes:
      learners: task names (keys of `learners.LEARNERS`), in mixing order.
      mixing: `--mixing` syntax, one schedule per learner.
      communicate: whether G is redistributed into the learners (False for single learners).
      description: one line for `--help` and the README.
    """

    learners: tuple[str, ...]
    mixing: str
    communicate: bool
    description: str


def _single(task: str, description: str) -> Variant:
    return Variant((task,), f"{task}=0:1,1:1", False, description)


VARIANTS: dict[str, Variant] = {
    "generalist_d": Variant(
        ("natural", "linf_pgd"),
        f"natural={_NATURAL_BETA};linf_pgd={_ROBUST_BETA}",
        True,
        "Generalist-D natural/robust (CVPR 2023): natural + l_inf-PGD learners",
    ),
    # DECIDED (paper text unavailable): equal weights throughout, same EMA and communication.
    "generalist_d_multinorm": Variant(
        ("linf_pgd", "l2_pgd"),
        "linf_pgd=0:0.5,1:0.5;l2_pgd=0:0.5,1:0.5",
        True,
        "Generalist-D multi-norm: l_inf-PGD + l_2-PGD learners",
    ),
    # DECIDED: the natural learner follows the official schedule; the robust weight is split
    # equally between the two norms.
    "generalist_t": Variant(
        ("natural", "linf_pgd", "l2_pgd"),
        "natural=0:0,1/3:0,2/3:0,1:0.6;linf_pgd=0:0.5,1/3:0.5,2/3:0.5,1:0.2;"
        "l2_pgd=0:0.5,1/3:0.5,2/3:0.5,1:0.2",
        True,
        "Generalist-T: natural + l_inf-PGD + l_2-PGD learners (both trade-offs)",
    ),
    "standard": _single("natural", "standard training (baseline)"),
    "pgd_at": _single("linf_pgd", "PGD-AT, Madry et al. 2018 (baseline)"),
    "trades": _single("trades", "TRADES, Zhang et al. 2019, beta 6 (baseline)"),
    "avg": _single("avg", "AVG multi-norm training, mean of l_inf and l_2 losses (baseline)"),
    "max": _single("max", "MAX multi-norm training, worst of l_inf and l_2 losses (baseline)"),
    "msd": _single("msd", "MSD multi steepest descent, Maini et al. 2020 (baseline)"),
}
# `custom` takes `--learners` and `--mixing` from the flags.
CUSTOM = "custom"
