"""The sectioned `Config`: one home per field, `replace` across sections, sections usable alone."""

import dataclasses

import pytest

from tests.helpers_train import config_from


def test_every_field_lives_in_exactly_one_section():
    cfg = config_from("smoke.cfg", workdir="/tmp/unused")
    seen = {}
    for section in dataclasses.fields(cfg):
        for field in dataclasses.fields(getattr(cfg, section.name)):
            assert field.name not in seen, (
                f"{field.name} in {seen.get(field.name)} and {section.name}"
            )
            seen[field.name] = section.name
    assert seen["batch_size"] == "optimisation" and seen["eval_attack"] == "evaluation"
    assert seen["learners"] == "algorithm" and seen["linf_attack"] == "attacks"


def test_replace_changes_the_named_fields_of_their_sections_and_nothing_else():
    cfg = config_from("smoke.cfg", workdir="/tmp/unused")
    changed = cfg.replace(epochs=7, seed=3, val_every=2)
    assert (changed.optimisation.epochs, changed.runtime.seed, changed.evaluation.val_every) == (
        7,
        3,
        2,
    )
    assert changed.data == cfg.data and changed.algorithm == cfg.algorithm
    assert cfg.optimisation.epochs != 7  # frozen: the original is untouched
    with pytest.raises(TypeError, match="no field 'epoch'"):
        cfg.replace(epoch=7)
