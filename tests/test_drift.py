"""The drift driver's derivations: the free-window learning rate, the reference, the gains."""

import pytest

from generalist_tf.experiments import drift
from tests import helpers_train


def test_free_window_learning_rate_of_the_fashion_mnist_protocol():
    """Redistribution first at epoch 75 of 120 (period 5): the window is epochs 76-79, where the
    schedule falls linearly from 0.05 (epoch 40) to 0.005 (epoch 80)."""
    cfg = helpers_train.config_from("fashion_mnist_generalist_d.cfg", workdir="/tmp/x")
    want = sum(0.05 + (e / 120 - 1 / 3) * 3 * (0.005 - 0.05) for e in (76, 77, 78, 79)) / 4
    assert drift.free_window_learning_rate(cfg) == pytest.approx(want)
    assert want == pytest.approx(0.0078125)


def test_reference_points_are_the_seed_0_baselines():
    entries = [
        {"label": label, "seed": seed, "metrics": {"exported_clean": c, "exported_pgd20": r}}
        for label, seed, c, r in (
            ("pgd_at", 0, 0.79, 0.67),
            ("pgd_at", 1, 0.8, 0.68),
            ("ref_trades_beta1", 0, 0.82, 0.64),
            ("generalist_d", 0, 0.79, 0.66),
            ("gd_period10", 0, 0.79, 0.66),
        )
    ]
    assert drift.reference_points(entries) == {
        "pgd_at": (0.79, 0.67),
        "ref_trades_beta1": (0.82, 0.64),
    }


def test_curve_summary_reads_the_gain_at_the_reference_and_its_maximum():
    points = [{"test_clean": 0.85, "test_pgd": 0.60}, {"test_clean": 0.79, "test_pgd": 0.67}]
    reference = [(0.79, 0.67), (0.82, 0.60)]
    summary = drift.curve_summary(points, reference, 0.67)
    assert summary["gain_at_reference"] == pytest.approx(0.0)
    assert summary["largest_gain"] == pytest.approx(0.03)
    assert summary["largest_gain_at"] == pytest.approx(0.60)


def test_kept_references_are_the_reference_runs_with_a_kept_model():
    model = {"exported": {"path": "models/R/ref_pgd_at_eps0.1_seed0.keras", "sha256": "x"}}
    metrics = {"exported_clean": 0.8, "exported_pgd20": 0.6}
    entries = [
        {"label": "ref_pgd_at_eps0.1", "seed": 0, "metrics": metrics, "models": model},
        {"label": "pgd_at", "seed": 0, "metrics": metrics},  # no kept model
        {"label": "generalist_d", "seed": 0, "metrics": metrics, "models": model},
    ]
    assert drift.kept_references(entries, "/repo") == {
        "ref_pgd_at_eps0.1": "/repo/models/R/ref_pgd_at_eps0.1_seed0.keras"
    }


def test_largest_gain_is_read_only_inside_the_reference_range():
    """A standard-like end (clean 0.88 at robust 0.03) is not compared with a flat extension of
    the reference's least robust point."""
    points = [{"test_clean": 0.88, "test_pgd": 0.03}, {"test_clean": 0.78, "test_pgd": 0.67}]
    summary = drift.curve_summary(points, [(0.78, 0.67), (0.81, 0.60)], 0.67)
    assert summary["largest_gain_at"] >= 0.60
    assert summary["largest_gain"] < 0.05
