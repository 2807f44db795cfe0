"""Confidence intervals, epsilon text, AutoAttack-standard bookkeeping and the epsilon mix-up alarm."""

import numpy as np
import pytest

from generalist_tf.evaluation import reporting, suite


@pytest.mark.parametrize(
    "accuracy, n, low, high",
    [
        # Textbook Wilson 95% intervals (e.g. 0 of 10: [0, 0.2775]; 50 of 100: [0.4038, 0.5962]).
        (0.5, 100, 0.4038, 0.5962),
        (0.0, 10, 0.0, 0.2775),
        (1.0, 10, 0.7225, 1.0),
        (0.9, 1000, 0.8798, 0.9171),
    ],
)
def test_wilson_interval_matches_the_formula(accuracy, n, low, high):
    interval = reporting.wilson_interval(accuracy, n)
    assert interval == pytest.approx([low, high], abs=1e-4)


def test_wilson_interval_contains_the_estimate_exactly_at_the_ends():
    assert reporting.wilson_interval(0.0, 48)[0] == 0.0
    assert reporting.wilson_interval(1.0, 48)[1] == 1.0


def test_wilson_interval_rejects_bad_input():
    with pytest.raises(ValueError, match="n must be"):
        reporting.wilson_interval(0.5, 0)
    with pytest.raises(ValueError, match="accuracy must be"):
        reporting.wilson_interval(1.5, 10)


@pytest.mark.parametrize(
    "epsilon, text",
    [
        (8 / 255, "8/255"),
        (2 / 255, "2/255"),
        (0.031, "0.031"),
        (0.1, "0.1"),
        (1.0, "1"),
        (0.5, "0.5"),
    ],
)
def test_epsilon_text(epsilon, text):
    assert reporting.epsilon_text(epsilon) == text


def test_mixup_alarm_fires_for_0031_vs_8_over_255_only():
    alarm = reporting.epsilon_mixup_alarm({"linf": 0.031}, {"linf": 8 / 255, "l2": 0.5})
    assert len(alarm) == 1 and "0.031" in alarm[0] and "8/255" in alarm[0]
    assert reporting.epsilon_mixup_alarm({"linf": 8 / 255}, {"linf": 8 / 255}) == []
    assert reporting.epsilon_mixup_alarm({"linf": 0.1}, {"linf": 0.3}) == []
    assert reporting.epsilon_mixup_alarm({"l2": 0.5}, {"linf": 0.5}) == []


def _entries(names):
    return {name: {"norm": name.rsplit("_", 1)[1], "accuracy": 0.0} for name in names}


def test_standard_autoattack_is_the_worst_case_over_exactly_the_standard_list():
    clean = np.array([True, True, True, True, False])
    masks = {
        "apgd_ce_linf": np.array([True, False, True, True, False]),
        "apgd_t_linf": np.array([True, True, False, True, False]),
        "fab_t_linf": np.array([True, True, True, True, False]),
        "square_linf": np.array([True, True, True, True, False]),
        # Not in the standard list: must not count.
        "pgd20_linf": np.array([False, False, False, False, False]),
        "apgd_ce_l2": np.array([True, True, True, True, True]),
    }
    entries = _entries(masks)
    entries["square_linf"]["queries"] = 5000
    accuracy, budgets = reporting.standard_autoattack(
        clean,
        masks,
        entries,
        suite.STANDARD_ATTACKS,
        iterations=100,
        square_queries=5000,
        standard_iterations=100,
        standard_queries=5000,
    )
    assert accuracy == {"linf": 0.4, "l2": None}
    assert budgets["linf"]["standard"] is True and budgets["linf"]["missing"] == []
    assert budgets["l2"]["missing"] == ["apgd_t_l2", "fab_t_l2", "square_l2"]
    _, weaker = reporting.standard_autoattack(
        clean,
        masks,
        entries,
        suite.STANDARD_ATTACKS,
        iterations=100,
        square_queries=1000,
        standard_iterations=100,
        standard_queries=5000,
    )
    assert weaker["linf"]["standard"] is False and weaker["linf"]["square_queries"] == 1000
