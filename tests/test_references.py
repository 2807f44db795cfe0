"""The third-party cross-check (`evaluation.references`): ART's PGD and APGD agree with ours."""

import json
import os

import numpy as np
import pytest

from generalist_tf.evaluation import references, writers
from tests import helpers_eval

ART_PGD_AGREEMENT = 0.02


ART_APGD_AGREEMENT = 0.015


def _check_art_reference(tmp_path, names):
    try:
        import art  # noqa: F401
    except ImportError as e:  # A failure, not a skip: the cross-check must not vanish silently.
        pytest.fail(f"ART is not installed ({e}): pip install -r requirements-art.txt")
    arrays = helpers_eval.digits()
    report = helpers_eval.evaluate(
        helpers_eval.fitted(),
        tmp_path,
        arrays.x_test,
        arrays.y_test,
        attacks=names,
        apgd_steps=100,
        reference="art",
        batch_size=360,
        epsilon_fractions=(),
    )
    reference = report["reference"]
    assert (
        reference["library"] == "adversarial-robustness-toolbox"
        and reference["labels"] == "true labels y"
    )
    assert set(reference["attacks"]) == {f"art_{name}" for name in names}
    for name in names:
        entry = reference["attacks"][f"art_{name}"]
        parameters = entry["parameters"]
        epsilon = report["attacks"][name]["epsilon"]
        assert parameters["eps"] == epsilon and parameters["targeted"] is False
        if name.startswith("pgd20"):
            assert entry["class"] == "art.attacks.evasion.ProjectedGradientDescent"
            assert parameters["max_iter"] == 20 and parameters["num_random_init"] == 1
            assert parameters["eps_step"] == pytest.approx(epsilon / 4)
            tolerance = ART_PGD_AGREEMENT
        else:
            assert entry["class"] == "art.attacks.evasion.AutoProjectedGradientDescent"
            assert parameters["max_iter"] == 100 and parameters["nb_random_init"] == 1
            assert parameters["eps_step"] == pytest.approx(2 * epsilon)
            assert parameters["loss_type"] == "cross_entropy"
            tolerance = ART_APGD_AGREEMENT
        assert entry["ours_accuracy"] == report["attacks"][name]["accuracy"]
        assert abs(entry["difference"]) <= tolerance, (name, entry)
    with open(os.path.join(str(tmp_path), writers.REPORT_JSON)) as f:
        assert json.load(f)["reference"] == reference


def test_art_reference_linf(tmp_path):
    _check_art_reference(tmp_path, ["pgd20_linf", "apgd_ce_linf"])


@pytest.mark.slow
def test_art_reference_l2(tmp_path):
    _check_art_reference(tmp_path, ["pgd20_l2", "apgd_ce_l2"])


def test_art_estimator_predicts_the_models_logits_in_the_pixel_box():
    model = helpers_eval.fitted()
    x, _ = helpers_eval.subset(16)
    estimator = references.art_estimator(model, x)
    assert estimator.nb_classes == 10
    np.testing.assert_array_equal(estimator.clip_values, [0.0, 1.0])
    np.testing.assert_allclose(estimator.predict(x), model(x, training=False).numpy(), atol=1e-5)
