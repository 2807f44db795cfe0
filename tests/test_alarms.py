"""Gradient-masking alarms fire on two masked digits models and stay quiet on a normal one.

The masked models are the textbook cases of Carlini et al. 2019: (a) logit saturation, the
fitted CNN with its logits multiplied by 1e6, so the float32 softmax is exactly one-hot and
the cross-entropy gradient exactly zero; (b) input quantisation round(x * 4) / 4 in front of a
CNN fitted through it, whose gradient is zero almost everywhere (TensorFlow even returns None).
"""

import logging

import numpy as np
import pytest

from generalist_tf.evaluation import alarms, runner, suite
from tests import helpers_eval

MODELS = {
    "normal": helpers_eval.fitted,
    "saturated": helpers_eval.saturated,
    "quantised": helpers_eval.quantised,
}
MASKED = ("saturated", "quantised")


@pytest.fixture(scope="module")
def batch():
    return helpers_eval.subset()


@pytest.mark.parametrize("name", list(MODELS))
def test_gradient_health(batch, name):
    x, y = batch
    found = alarms.gradient_health(MODELS[name](), x, y)
    stats = alarms.gradient_statistics(MODELS[name](), x, y)
    if name == "normal":
        assert found == [], found
        assert stats == {"zero_share": 0.0, "nonfinite_share": 0.0, "disagreement_share": 0.0}
    else:
        assert alarms.ZERO_GRADIENT in alarms.kinds(found), (found, stats)
        assert stats["zero_share"] > 0.9
    if name == "quantised":
        # Piecewise constant: the loss jumps along a random direction, the gradient says 0.
        assert alarms.FINITE_DIFFERENCES in alarms.kinds(found), (found, stats)


@pytest.mark.parametrize("name", list(MODELS))
def test_unbounded_attack(batch, name):
    x, y = batch
    found = alarms.unbounded_attack(MODELS[name](), x, y)
    if name == "normal":
        assert found == [] and alarms.unbounded_accuracy(MODELS[name](), x, y) == 0.0
    else:
        assert alarms.kinds(found) == {alarms.UNBOUNDED}, found


def test_epsilon_curve_alarms():
    quiet = alarms.epsilon_curve(
        "linf", [0, 0.1, 0.2, 0.4], [0.99, 0.6, 0.1, 0.0], clean_accuracy=0.99
    )
    assert quiet == []
    rising = alarms.epsilon_curve(
        "linf", [0, 0.1, 0.2, 0.4], [0.99, 0.5, 0.6, 0.0], clean_accuracy=0.99
    )
    assert alarms.kinds(rising) == {alarms.NOT_MONOTONE}
    assert "0.1" in rising[0] and "0.2" in rising[0]
    flat = alarms.epsilon_curve("l2", [0, 0.5, 2.0], [0.99, 0.95, 0.9], clean_accuracy=0.99)
    assert alarms.kinds(flat) == {alarms.LARGE_EPSILON}
    with pytest.raises(ValueError, match="increasing epsilons"):
        alarms.epsilon_curve("l2", [0.5, 0.0], [0.5, 0.9], clean_accuracy=0.9)


def test_comparison_alarms():
    assert alarms.black_box("linf", 0.55, 0.58) == []
    assert alarms.kinds(alarms.black_box("linf", 0.95, 0.8)) == {alarms.BLACK_BOX}
    assert alarms.transfer("linf", 0.5, 0.52) == []
    assert alarms.kinds(alarms.transfer("linf", 0.95, 0.3)) == {alarms.TRANSFER}
    pairs = [
        ("pgd20_linf", "pgd100_linf"),
        ("pgd20_linf", "apgd_ce_linf"),
        ("pgd20_l2", "pgd100_l2"),
    ]
    accuracies = {"pgd20_linf": 0.5, "pgd100_linf": 0.51, "apgd_ce_linf": 0.6}
    found = alarms.more_iterations(accuracies, pairs)
    assert len(found) == 1 and "apgd_ce_linf" in found[0]
    assert alarms.kinds(found) == {alarms.MORE_STEPS}
    assert alarms.robust_above_clean(0.9, {"fgsm_linf": 0.8, "pgd20_linf": 0.9}) == []
    found = alarms.robust_above_clean(0.9, {"fgsm_linf": 0.95})
    assert alarms.kinds(found) == {alarms.ROBUST_ABOVE_CLEAN} and "fgsm_linf" in found[0]


def _evaluate(tmp_path, model, **kwargs):
    x, y = helpers_eval.subset()
    return runner.evaluate_model(
        model,
        x,
        y,
        workdir=str(tmp_path),
        epsilon_linf=helpers_eval.EPSILON_LINF,
        epsilon_l2=helpers_eval.EPSILON_L2,
        square_queries=500,
        apgd_steps=20,
        verbose=0,
        **kwargs,
    )


LINF_SUBSET = ["pgd20_linf", "cw_linf", "apgd_t_linf", "square_linf"]


def test_evaluation_of_the_quantised_model_raises_the_alarms(tmp_path, caplog):
    """Every gradient attack stalls; Square and a transfer from a normal model do not."""
    with caplog.at_level(logging.WARNING):
        report = _evaluate(
            tmp_path, helpers_eval.quantised(), attacks=LINF_SUBSET, surrogate=helpers_eval.fitted()
        )
    found = alarms.kinds(report["alarms"])
    expected = {
        alarms.ZERO_GRADIENT,
        alarms.FINITE_DIFFERENCES,
        alarms.UNBOUNDED,
        alarms.LARGE_EPSILON,
        alarms.BLACK_BOX,
        alarms.TRANSFER,
    }
    assert expected <= found, report["alarms"]
    # Each alarm is also logged as a warning.
    for alarm in report["alarms"]:
        assert alarm in caplog.text
    attacks = report["attacks"]
    assert attacks["square_linf"]["accuracy"] < attacks["pgd20_linf"]["accuracy"] - 0.05


def test_evaluation_of_the_saturated_model_raises_the_alarms(tmp_path):
    """Cross-entropy attacks stall; the margin-type attacks keep the worst case honest."""
    report = _evaluate(tmp_path, helpers_eval.saturated(), attacks=LINF_SUBSET)
    found = alarms.kinds(report["alarms"])
    assert {alarms.ZERO_GRADIENT, alarms.UNBOUNDED, alarms.LARGE_EPSILON} <= found, report["alarms"]
    attacks = report["attacks"]
    assert attacks["pgd20_linf"]["accuracy"] > report["clean_accuracy"] - 0.05
    assert report["worst_case"]["linf"] < 0.75 * report["clean_accuracy"]


def test_evaluation_of_the_normal_model_is_quiet(tmp_path):
    report = _evaluate(
        tmp_path,
        helpers_eval.fitted(),
        attacks=LINF_SUBSET + ["pgd20_l2"],
        surrogate=helpers_eval.fitted(1),
    )
    assert report["alarms"] == []
    assert 0.2 < report["worst_case"]["linf"] < report["clean_accuracy"] - 0.2
    # A transfer attack is weaker than white-box attacks on an unmasked model.
    assert report["attacks"][suite.TRANSFER_ATTACK]["accuracy"] > report["worst_case"]["linf"]


def test_alarm_kinds_are_parsed_strictly():
    assert alarms.kind_of(f"{alarms.BLACK_BOX}: something") == alarms.BLACK_BOX
    with pytest.raises(ValueError, match="not an alarm"):
        alarms.kind_of("hello: world")
    assert np.all([kind == kind.lower() for kind in alarms.KINDS])
