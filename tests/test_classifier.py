"""The evaluation's model wrapper (`attacks.classifier`): a bf16 Keras model is attacked in float32."""

import pytest

from generalist_tf.attacks import classifier
from generalist_tf.evaluation import runner
from tests import helpers_eval


def test_a_bf16_keras_model_is_attacked_in_float32(tmp_path, monkeypatch):
    """A network built under the bf16 policy gives, by default, the numbers of its float32 copy
    (same weights, same seed); `compute_dtype=None` attacks it in bf16; it is restored after."""
    from generalist_tf import models, precision

    fitted = helpers_eval.fitted()
    with precision.dtype_policy("bf16"):
        half = models.build("digits_cnn", (8, 8, 1), 10)
    half.set_weights(fitted.get_weights())
    seen = set()
    as_classifier = classifier.as_classifier

    def spy(model):
        if model is half:
            seen.add(model.compute_dtype)
        return as_classifier(model)

    monkeypatch.setattr(runner, "as_classifier", spy)
    x, y = helpers_eval.subset(64)
    options = dict(x=x, y=y, attacks=["pgd20_linf"], **helpers_eval.NO_CURVES)
    ours = helpers_eval.evaluate(half, tmp_path / "half", **options)
    assert seen == {"float32"}
    reference = helpers_eval.evaluate(fitted, tmp_path / "fp32", **options)
    seen.clear()
    helpers_eval.evaluate(half, tmp_path / "as_is", compute_dtype=None, **options)  # as it is
    assert seen == {"bfloat16"}
    assert half.compute_dtype == "bfloat16"
    for key in ("clean_accuracy", "union_accuracy"):
        assert ours[key] == reference[key], key
    assert (
        ours["attacks"]["pgd20_linf"]["accuracy"] == reference["attacks"]["pgd20_linf"]["accuracy"]
    )
    with pytest.raises(ValueError, match="compute_dtype"):
        helpers_eval.evaluate(half, tmp_path / "bad", compute_dtype="bfloat16", **options)
