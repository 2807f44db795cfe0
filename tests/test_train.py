"""Training as a library call (`train`): the selection rule, validated epochs, the final table.

Whole runs of `train.train` are in test_main, test_timing and test_precision."""

from generalist_tf import train
from tests.helpers_train import config_from


def test_selection_rule_in_words():
    cfg = config_from("smoke.cfg", workdir="/tmp/unused")
    assert train.selection_rule(
        cfg.replace(select_metric="clean_plus_pgd", select_clean_floor=0.0, val_every=1)
    ) == ("best clean + PGD accuracy of G")
    rule = train.selection_rule(
        cfg.replace(select_metric="val_global/pgd_accuracy", select_clean_floor=0.5, val_every=3)
    )
    assert rule == (
        "best val_global/pgd_accuracy among epochs with clean accuracy >= 0.5 "
        "(validated every 3 epochs and the last)"
    )


def test_validation_epochs_are_every_nth_and_the_last():
    cfg = config_from("smoke.cfg", workdir="/tmp/unused")
    assert train.validation_epochs(cfg.replace(epochs=7, val_every=3)) == [3, 6, 7]
    assert train.validation_epochs(cfg.replace(epochs=4, val_every=1)) == [1, 2, 3, 4]
    assert train.validation_epochs(cfg.replace(epochs=2, val_every=5)) == [2]


def test_the_final_table_has_a_row_per_network_and_states_the_selection():
    cfg = config_from("smoke.cfg", workdir="/tmp/unused")
    test = {
        "networks": {"best": "G (exported, epoch 2)", "global": "G (last epoch)"},
        "best/clean_accuracy": 0.9,
        "best/pgd_accuracy": 0.45,
        "global/clean_accuracy": 0.875,
        "global/pgd_accuracy": 0.5,
    }
    lines = train._format_table(test, cfg, best_epoch=2).splitlines()
    a = cfg.evaluation.eval_attack
    assert lines[0].startswith("network (test split)") and f"PGD-{a.num_steps} linf" in lines[0]
    assert lines[1].startswith("G (exported, epoch 2)") and lines[1].split()[-2:] == [
        "90.00%",
        "45.00%",
    ]
    assert lines[2].split()[-2:] == ["87.50%", "50.00%"]
    assert (
        lines[3] == f"(exported G = {train.selection_rule(cfg)} on the validation split, epoch 2)"
    )
