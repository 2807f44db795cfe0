"""The bench's cost model (`experiments.bench_costs`): FLOPs and forward passes by hand."""

import keras
import pytest

from generalist_tf.experiments import (
    bench_costs,
)


def test_forward_flops_of_a_small_model_by_hand():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)  # 4x4x4 out
    x = keras.layers.Conv2D(6, 1)(x)  # 4x4x6 out
    logits = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, logits)
    by_hand = 2 * 4 * 4 * 3 * 3 * 1 * 4 + 2 * 4 * 4 * 1 * 1 * 4 * 6 + 2 * 6 * 10
    assert bench_costs.forward_flops(model) == by_hand


def test_forward_passes_cover_only_known_learners():
    assert bench_costs.forward_passes_per_image(("natural", "linf_pgd"), 10) == 36
    assert bench_costs.forward_passes_per_image(("linf_pgd",), 10) == 33
    with pytest.raises(ValueError, match="trades"):
        bench_costs.forward_passes_per_image(("trades",), 10)
