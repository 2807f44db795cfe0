"""Presets: the three Generalist variants and the baselines, as lists of learners + schedules.

A variant is data, not a code path: which base learners train, how their EMAs are weighted into
the global learner over training (fractions of the epochs), and whether the global weights are
redistributed. A baseline is a single learner with weight 1 and no redistribution, so it runs
through the same data, models, EMA and evaluation as Generalist and differs only in algorithm.
"""

from __future__ import annotations

import dataclasses

from generalist_tf import names

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

# How the three settings a variant resolves are named in messages, per door.
PYTHON_NAMES = {"variant": "variant", "learners": "tasks", "mixing": "mixing"}
FLAG_NAMES = {"variant": "--variant", "learners": "--learners", "mixing": "--mixing"}


def resolve(
    variant: str, learners, mixing, *, argument: dict[str, str] = PYTHON_NAMES
) -> tuple[tuple[str, ...], object, bool]:
    """The learners, mixing and whether G is redistributed, of a preset or of `custom`.

    The one resolution both doors run. `learners` and `mixing` are read only with `custom`
    (`mixing` overrides a preset's); `argument` names the settings in the messages
    (`PYTHON_NAMES` or `FLAG_NAMES`).

    Returns:
      `(learners, mixing, communicate)`; `mixing` as given (text or schedules) or the preset's.

    Raises:
      ValueError: an unknown variant, a custom variant without learners or mixing, learners
        given with a preset, an unknown or repeated learner.
    """
    name = argument
    learners = tuple(learners or ())
    if variant == CUSTOM:
        if not learners or not mixing:
            raise ValueError(
                f"{name['variant']}=custom needs {name['learners']} and {name['mixing']}, e.g. "
                f"{name['learners']}=natural,linf_pgd and "
                f"{name['mixing']}='natural=0:0,1:0.5;linf_pgd=0:1,1:0.5'"
            )
        communicate = len(learners) > 1
    elif variant in VARIANTS:
        if learners:
            raise ValueError(
                f"{name['learners']} is only read with {name['variant']}=custom, got "
                f"{name['learners']}={','.join(learners)} with {name['variant']}={variant}"
            )
        preset = VARIANTS[variant]
        learners, communicate = preset.learners, preset.communicate
        mixing = mixing or preset.mixing
    else:
        raise ValueError(
            f"{name['variant']}={variant!r} is unknown; choose one of "
            f"{', '.join([*VARIANTS, CUSTOM])}"
        )
    unknown = [n for n in learners if n not in names.TRAINING_NORMS]
    if unknown:
        raise ValueError(
            f"{name['learners']}: unknown {unknown}; choose from {', '.join(names.TRAINING_NORMS)}"
        )
    if len(set(learners)) != len(learners):
        raise ValueError(f"{name['learners']} must not repeat a learner, got {','.join(learners)}")
    return learners, mixing, communicate
