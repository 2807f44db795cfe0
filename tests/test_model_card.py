"""`MODEL_CARD.md` (`model_card`): what the card states, from a config and hand-made results."""

import os

from generalist_tf import model_card
from tests.helpers_train import config_from

RESULTS = {"best_epoch": 2, "selection": "best clean + PGD accuracy of G", "table": "THE TABLE"}
SPLITS = {"train": 1400, "validation": 100, "test": 297}


def render(export_name="export", **kwargs):
    cfg = config_from("smoke.cfg", workdir="/tmp/run dir")
    return cfg, model_card.render(
        cfg,
        RESULTS,
        export_name=export_name,
        splits=SPLITS,
        argv=["main.py", "--flagfile=flags/smoke.cfg", "--seed=1"],
        **kwargs,
    )


def test_the_card_states_the_run_and_how_to_repeat_it():
    cfg, card = render()
    assert card.startswith(
        f"# Model card: {cfg.model.model} on {cfg.data.dataset} ({cfg.algorithm.variant})"
    )
    assert "G of epoch 2, selected by the best clean + PGD accuracy of G" in card
    assert "training 1400 examples, validation 100" in card and "test 297" in card
    assert "```\nTHE TABLE\n```" in card
    assert "--flagfile='/tmp/run dir/flags.cfg' --workdir=<new directory>" in card
    assert "Invoked as: `python -m generalist_tf.main --flagfile=flags/smoke.cfg --seed=1`" in card
    assert "Not evaluated by the attack suite" in card and "## Attack suite" not in card
    _, last = render("export_last")
    assert (
        f"G after the last epoch ({cfg.optimisation.epochs})" in last
        and "`../export_last.keras`" in last
    )


def test_the_claim_block_carries_the_suite_s_numbers():
    report = {
        "num_examples": 64,
        "subset": {"of": 297},
        "epsilons": {"linf": {"text": "0.3"}},
        "clean_accuracy": 0.9,
        "autoattack_standard": {"linf": 0.25},
        "autoattack_budgets": {"linf": {"standard": False}},
    }
    _, card = render(report=report, report_table="# title\n\nthe suite's table")
    assert (
        "| linf | 0.3 | 90.00% | 25.00% (below the standard budgets) | 64 (a subset of 297) |"
        in card
    )
    assert "## Attack suite\n\nthe suite's table" in card


def test_write_puts_the_card_in_the_export(tmp_path):
    model_card.write(str(tmp_path), "# card\n")
    with open(os.path.join(tmp_path, model_card.CARD)) as f:
        assert f.read() == "# card\n"
    assert os.listdir(tmp_path) == ["MODEL_CARD.md"]  # no temporary file left
