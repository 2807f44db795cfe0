"""The evaluation section (`config.evaluation_section`): selection rules and validation keys."""

import pytest

from generalist_tf import names
from generalist_tf.config import evaluation_section
from tests.helpers_train import parse_flags


def test_select_key_maps_the_named_rules_to_their_keys():
    learners = ("natural", "linf_pgd")
    assert evaluation_section.select_key("clean_plus_pgd", learners) == names.CLEAN_PLUS_PGD
    assert evaluation_section.select_key("pgd", learners) == "val_global/pgd_accuracy"
    assert evaluation_section.select_key("clean", learners) == "val_global/clean_accuracy"


def test_select_key_accepts_only_keys_the_validation_step_logs():
    learners = ("natural", "linf_pgd")
    for key in (
        "val_global/loss",
        "val_natural_ema/clean_accuracy",
        "val_linf_pgd_ema/pgd_accuracy",
    ):
        assert evaluation_section.select_key(key, learners) == key
    with pytest.raises(ValueError, match=r"^--select_metric='val_trades_ema/loss' is neither"):
        evaluation_section.select_key("val_trades_ema/loss", learners)


def test_the_section_checks_its_validation_flags():
    values = parse_flags("--flagfile=flags/smoke.cfg", "--workdir=/tmp/unused").flag_values_dict()
    learners = ("natural", "linf_pgd")
    section = evaluation_section.Evaluation.from_flags({**values, "val_every": 2}, learners)
    assert section.val_every == 2
    with pytest.raises(ValueError, match=r"^--val_every must be >= 1, got 0$"):
        evaluation_section.Evaluation.from_flags({**values, "val_every": 0}, learners)
