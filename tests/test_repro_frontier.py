"""The frontier section of RESULTS_<suite>.md: reference table, Generalist's verdict, drift."""

import json

import pytest

from generalist_tf.experiments import repro_frontier
from generalist_tf.experiments.repro_suites import Run


def _run(label, clean, pgd, seed=0, cpu="AMD EPYC"):
    return Run(label, seed, {"exported_clean": clean, "exported_pgd20": pgd}, 1.0, cpu=cpu)


RUNS = [
    _run("standard", 0.88, 0.01),
    _run("pgd_at", 0.79, 0.675),
    _run("trades", 0.77, 0.62),  # dominated by the beta-1 point: not Pareto
    _run("ref_trades_beta1", 0.82, 0.64),
    _run("ref_pgd_at_eps0.05", 0.85, 0.55),
    _run("generalist_d", 0.80, 0.66),
    _run("generalist_d", 0.70, 0.60, seed=1),
]


def test_section_lists_reference_points_with_pareto_and_verdict(tmp_path):
    lines = repro_frontier.section(RUNS, str(tmp_path / "none.json"), "frontier.png")
    text = "\n".join(lines)
    assert "| TRADES, beta 6 (the table's row) | `trades` | 77.00 | 62.00 |  | AMD EPYC |" in text
    assert "| TRADES, beta 1 | `ref_trades_beta1` | 82.00 | 64.00 | yes |" in text
    # Generalist-D seed 0 at PGD-20 0.66: the frontier between (0.82, 0.64) and (0.79, 0.675)
    # gives 0.82 - 0.03 * (0.02 / 0.035) = 0.80286; G's 0.80 is 0.29 points below it.
    assert "`generalist_d` seed 0: clean 80.00 at PGD-20 66.00: -0.29 points" in text
    assert "`generalist_d` seed 1" in text
    assert "![frontier](frontier.png)" in text


def test_no_section_without_reference_runs(tmp_path):
    assert repro_frontier.section(RUNS[:3], str(tmp_path / "x.json"), "f.png") == []


def test_drift_table_and_plot(tmp_path):
    drift = {
        "model": "m.keras",
        "model_sha256": "ab" * 32,
        "free_window_learning_rate": 0.0078,
        "reference": {"pgd_at": [0.79, 0.675]},
        "at_label": "pgd_at",
        "cpu": "AMD EPYC",
        "curves": {
            "S40_lr1x": {
                "steps": 40,
                "learning_rate": 0.0078,
                "multiplier": 1.0,
                "drift": 0.312,
                "gain_at_reference": -0.001,
                "largest_gain": 0.004,
                "largest_gain_at": 0.65,
                "points": [
                    {"test_clean": 0.81, "test_pgd": 0.6},
                    {"test_clean": 0.79, "test_pgd": 0.675},
                ],
                "seconds": {"total": 12.0},
            }
        },
    }
    path = tmp_path / "drift.json"
    path.write_text(json.dumps(drift))
    text = "\n".join(repro_frontier.section(RUNS, str(path), "frontier.png"))
    # At the reference's least robust point (its only one here, 0.675) the curve's own end.
    assert "| 40 | 0.0078 | 0.312 | -0.10 | +0.00 | +0.40 (at 65.00) | 81.00 / 60.00 | 12 |" in text
    png = tmp_path / "frontier.png"
    repro_frontier.plot(RUNS, str(path), str(png))
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("label", ["ref_standard", "ref_pgd_at_eps0.075", "ref_trades_beta12"])
def test_every_reference_label_is_a_reference_point(label):
    assert [r.label for _, r in repro_frontier.reference_runs([_run(label, 0.5, 0.5)])] == [label]
