"""The config's sections (`config.sections`): each parses and checks its own flags alone."""

import pytest

from generalist_tf.algorithm import schedules
from generalist_tf.config import evaluation_section, sections
from tests.helpers_train import parse_flags


def test_a_section_checks_its_own_flags_alone():
    values = parse_flags("--flagfile=flags/smoke.cfg", "--workdir=/tmp/unused").flag_values_dict()
    assert sections.Optimisation.from_flags(values).batch_size == values["batch_size"]
    with pytest.raises(ValueError, match=r"^--momentum must be in \[0, 1\), got 1.5$"):
        sections.Optimisation.from_flags({**values, "momentum": 1.5})
    with pytest.raises(ValueError, match=r"^--jit_compile must be one of"):
        sections.Runtime.from_flags({**values, "jit_compile": "maybe"})
    learners = sections.Algorithm.from_flags(values).learners
    with pytest.raises(ValueError, match="^--select_metric='val_global/nope' is neither"):
        evaluation_section.Evaluation.from_flags(
            {**values, "select_metric": "val_global/nope"}, learners
        )


def smoke_values(*args):
    return parse_flags(
        "--flagfile=flags/smoke.cfg", "--workdir=/tmp/unused", *args
    ).flag_values_dict()


def test_communication_none_means_the_learners_are_never_overwritten():
    values = smoke_values()
    assert (
        sections.Algorithm.from_flags({**values, "communication_mode": "none"}).communication
        is None
    )
    communicating = sections.Algorithm.from_flags(
        {**values, "communication_mode": "every_batch", "communication_period": 1}
    ).communication
    assert isinstance(communicating, schedules.Communication)
    assert (communicating.period, communicating.mode) == (1, "every_batch")


def test_the_runtime_refuses_an_unknown_precision_and_names_the_choices():
    values = smoke_values()
    with pytest.raises(ValueError, match=r"^--precision must be one of"):
        sections.Runtime.from_flags({**values, "precision": "fp8"})
    for precision in sections.PRECISIONS:
        assert (
            sections.Runtime.from_flags({**values, "precision": precision}).precision == precision
        )
