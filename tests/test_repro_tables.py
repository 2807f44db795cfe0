"""The reproduction's tables (`experiments.repro_tables`): summaries, verdict, rows, time."""

import pytest

from generalist_tf.experiments import repro_suites, repro_tables
from tests.helpers_train import FAKE_METRICS


def test_verdict_reads_the_numbers():
    table = {
        "pgd_at": {"clean": (90.0, 1.0), "worst_linf": (40.0, 1.0), "union": (10.0, 0.5)},
        "generalist_d": {"clean": (93.0, 1.0), "worst_linf": (39.0, 1.0), "union": (9.0, 0.5)},
        "avg": {"clean": (88.0, 1.0), "worst_linf": (35.0, 1.0), "union": (20.0, 1.0)},
        "max": {"clean": (87.0, 1.0), "worst_linf": (36.0, 1.0), "union": (22.0, 1.0)},
        "generalist_t": {"clean": (90.0, 1.0), "worst_linf": (33.0, 1.0), "union": (21.0, 1.0)},
    }
    lines = repro_tables.verdict(table)
    assert "(+3.00)" in lines[0] and "holds" in lines[0] and "NOT" not in lines[0]
    assert "MAX" in lines[1] and "(-1.00)" in lines[1] and "NOT better" in lines[1]
    table["generalist_d"]["worst_linf"] = (30.0, 1.0)
    assert "does NOT hold" in repro_tables.verdict(table)[0]


def test_the_table_says_how_many_seeds_each_row_averages():
    """A one-seed row shows `+- 0.00` with `1` in its seeds column: no spread was measured."""
    runs = [
        repro_suites.Run("pgd_at", seed, {**FAKE_METRICS, "clean": clean}, 1.0)
        for seed, clean in ((0, 0.5), (1, 0.7))
    ]
    runs.append(repro_suites.Run("avg", 0, FAKE_METRICS, 1.0))
    rows = repro_tables._rows(repro_tables.summarise(runs), repro_suites.COLUMNS)
    assert rows[0].endswith("| seeds |")
    pgd_at, avg = rows[2], rows[3]
    assert pgd_at.startswith("| pgd_at | 60.00 +- 14.14 |") and pgd_at.endswith("| 2 |")
    assert avg.startswith("| avg | 50.00 +- 0.00 |") and avg.endswith("| 1 |")


def test_summarise_gives_percent_means_and_spreads_per_method():
    runs = [
        repro_suites.Run("avg", seed, {**FAKE_METRICS, "union": union, "best_epoch": epoch}, 1.0)
        for seed, union, epoch in ((0, 0.2, 1), (1, 0.4, 3))
    ]
    table = repro_tables.summarise(runs)
    assert list(table) == ["avg"] and table["avg"]["seeds"] == 2
    mean, spread = table["avg"]["union"]
    assert mean == pytest.approx(30.0) and spread == pytest.approx(14.142, abs=1e-3)
    assert table["avg"]["clean"] == (50.0, 0.0) and table["avg"]["best_epoch"] == 2


def test_run_rows_show_each_run_s_numbers_commit_and_command():
    run = repro_suites.Run(
        "pgd_at", 1, FAKE_METRICS, 61.0, command="python -m x", commit="0123456789abcdef+dirty"
    )
    header, rule, row = repro_tables.run_rows([run])
    assert header.startswith("| run | seed | clean |") and rule.count("---") == 10
    assert row.startswith("| pgd_at | 1 | 50.00 |")
    assert "| 61 | 0123456789+dirty | `python -m x` |" in row


def test_timing_says_when_runs_were_reused():
    trained = repro_suites.Run("pgd_at", 0, FAKE_METRICS, 120.0, ended=120.0)
    reused = repro_suites.Run("avg", 0, FAKE_METRICS, 60.0)
    text = repro_tables.timing([trained], [], wall=130.0, jobs=2)
    assert "--jobs=2" in text and "ended after 2.0 minutes" in text
    text = repro_tables.timing([trained, reused], [], wall=130.0, jobs=2)
    assert text.startswith("Time: 1 of the 2 runs were reused") and "3.0 minutes" in text
    # Ablations alone (--methods= --seeds=, the reference frontier): no table run to time.
    ablation = repro_suites.Run("ref_standard", 0, FAKE_METRICS, 90.0, ended=90.0)
    text = repro_tables.timing([], [ablation], wall=95.0, jobs=1)
    assert "no run of the table, all 1 with the ablations after 1.6 minutes" in text


def test_ablation_reading_says_whether_the_exported_g_is_mixed():
    """Generalist-D's natural weight is 0 until 2E/3 (epoch 80 of 120): a G selected at epoch
    75 is the robust EMA, one selected at epoch 100 already mixes in the natural learner."""

    def gd(label, epoch, seed=0):
        metrics = {**FAKE_METRICS, "best_epoch": epoch, "epochs": 120}
        return repro_suites.Run(label, seed, metrics, 1.0)

    runs = [gd("generalist_d", 75), gd("generalist_d", 100, seed=1)]
    line = repro_tables.ablation_reading(runs, [gd("gd_select_pgd", 110)])[0]
    assert (
        "epochs 75 (seed 0, natural weight 0.00), 100 (seed 1, natural weight 0.30) of 120" in line
    )
    assert "in 1 of 2 runs the served G is the robust learner's EMA" in line
    assert "picks epoch 110 (natural weight 0.45)" in line
