"""The typed run configuration, built once from the flag values and validated once.

A `Config` is seven frozen sections, each parsed and checked from the flags by its own
`from_flags`: `data`, `model`, `algorithm` (Alg. 1: learners, mixing, communication, EMA),
`optimisation`, `attacks` (the training attacks), `evaluation` (validation, selection, the
final table and the suite) and `runtime` (workdir, devices, precision, checkpoints). Every
invalid value raises `ValueError` whose one-line message names the flag and the value, e.g.
`--epsilon must be in (0, 1] for images in [0, 1], got 8.0`. Library code receives a `Config`,
never reads flags. This module is pure Python: checking a flagfile starts neither TensorFlow
nor Keras.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from generalist_tf.config.evaluation_section import (
    CLEAN_PLUS_PGD,
    SELECT_RULES,
    Evaluation,
    select_key,
)
from generalist_tf.config.sections import (
    COMMUNICATION_MODES,
    MODES,
    PRECISIONS,
    Algorithm,
    Data,
    Model,
    Optimisation,
    Runtime,
    TrainingAttacks,
)

__all__ = [
    "CLEAN_PLUS_PGD",
    "COMMUNICATION_MODES",
    "MODES",
    "PRECISIONS",
    "SELECT_RULES",
    "Algorithm",
    "Config",
    "Data",
    "Evaluation",
    "Model",
    "Optimisation",
    "Runtime",
    "TrainingAttacks",
    "from_flags",
    "select_key",
]


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs, in sections. Build it with `from_flags`."""

    runtime: Runtime
    data: Data
    model: Model
    optimisation: Optimisation
    algorithm: Algorithm
    attacks: TrainingAttacks
    evaluation: Evaluation

    def replace(self, **changes) -> Config:
        """A copy with fields of any section changed: `config.replace(epochs=2, seed=1)`.

        Raises:
          TypeError: a name that is no field of any section.
        """
        sections = {}
        for name, value in changes.items():
            owner = next(
                (
                    section.name
                    for section in dataclasses.fields(self)
                    if name in {f.name for f in dataclasses.fields(getattr(self, section.name))}
                ),
                None,
            )
            if owner is None:
                raise TypeError(f"Config has no field {name!r}")
            sections.setdefault(owner, {})[name] = value
        return dataclasses.replace(
            self,
            **{
                owner: dataclasses.replace(getattr(self, owner), **fields)
                for owner, fields in sections.items()
            },
        )


def from_flags(values: Mapping[str, Any]) -> Config:
    """Builds and validates the configuration from a flag-name -> value mapping.

    Raises:
      ValueError: a one-line message naming the first invalid flag and its value.
    """
    v = dict(values)
    for flag, value in sorted(v.items()):
        if isinstance(value, str) and " #" in value:
            raise ValueError(
                f"--{flag}={value!r} holds a trailing comment: absl keeps everything after '=' "
                "in the value; put comments on their own line in flagfiles"
            )
    runtime = Runtime.from_flags(v)
    data = Data.from_flags(v)
    model = Model.from_flags(v)
    optimisation = Optimisation.from_flags(v)
    algorithm = Algorithm.from_flags(v)
    return Config(
        runtime=runtime,
        data=data,
        model=model,
        optimisation=optimisation,
        algorithm=algorithm,
        attacks=TrainingAttacks.from_flags(v, algorithm.learners),
        evaluation=Evaluation.from_flags(v, algorithm.learners),
    )
