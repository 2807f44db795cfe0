"""The reproduction suites (`experiments.repro_suites`): flagfiles, ablations and columns agree."""

import os

from generalist_tf.experiments import repro_suites
from tests.helpers_train import FLAGS_DIR


def test_every_suite_has_a_flagfile_per_method_and_ablation():
    for name, suite in repro_suites.SUITES.items():
        for method in repro_suites.METHODS:
            path = os.path.join(FLAGS_DIR, f"{suite.prefix}_{method}.cfg")
            assert os.path.isfile(path), (name, path)
        for ablation in suite.ablations:
            assert ablation in repro_suites.ABLATIONS, (name, ablation)
        assert suite.claim_margin > 0 and suite.results.endswith(".md"), name
        assert suite.ledger == "" or suite.ledger.endswith(".json"), name


def test_every_ablation_changes_a_method_of_the_table():
    for key, (what, method, flags) in repro_suites.ABLATIONS.items():
        assert method in repro_suites.METHODS, key
        assert what and flags, key


def test_column_keys_are_unique_and_a_run_defaults_to_a_fresh_unrecorded_one():
    keys = [key for key, _ in repro_suites.COLUMNS + repro_suites.SELECTION_COLUMNS]
    assert len(keys) == len(set(keys)) and "union" in keys
    run = repro_suites.Run("pgd_at", 0, {"clean": 0.5}, 1.0)
    assert (run.ended, run.command, run.commit, run.resumed) == (0.0, "", "", False)
