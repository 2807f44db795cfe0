"""`--init_from`: every learner, EMA, G and best G start at the given weights; mismatches fail."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from generalist_tf import data, experiment, export, init_from, models
from generalist_tf.algorithm import mixing
from tests.helpers_train import config_from


def pretrained(width_model="digits_cnn", shape=(8, 8, 1)):
    network = models.build(width_model, shape, 10)
    rng = np.random.default_rng(7)
    network.set_weights(
        [w + rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in network.get_weights()]
    )
    return network


def every_network(model):
    yield model.global_network
    yield model.best_network
    for learner in model.learners:
        yield learner.network
        yield learner.ema_network


def assert_starts_at(model, source):
    want = [w.numpy() for w in mixing.mixable_weights(source)]
    for network in every_network(model):
        for got, expected in zip(mixing.mixable_weights(network), want, strict=True):
            np.testing.assert_array_equal(got.numpy(), expected)


def build_from(init, tmp_path):
    cfg = config_from("smoke.cfg", workdir=str(tmp_path), init_from=init)
    exp = experiment.build_experiment(
        cfg, tf.distribute.get_strategy(), arrays=data.load("digits"), checkpointing=False
    )
    return exp.model


@pytest.mark.parametrize("kind", ["keras_file", "export_dir", "checkpoint"])
def test_every_network_starts_at_the_given_weights(tmp_path, kind):
    source = pretrained()
    if kind == "keras_file":
        path = str(tmp_path / "standard.keras")
        export.export_keras(source, path)
    elif kind == "export_dir":
        path = str(tmp_path / "export")
        export.export_saved_model(source, lambda: models.build("digits_cnn", (8, 8, 1), 10), path)
    else:
        path = tf.train.Checkpoint(**{"global": source}).save(
            str(tmp_path / "checkpoints" / "ckpt")
        )
        path = str(tmp_path)  # a workdir: its latest checkpoint
    model = build_from(path, tmp_path / "run")
    assert_starts_at(model, source)


def test_mismatched_weights_fail_in_one_line_naming_the_weight(tmp_path):
    other = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    path = str(tmp_path / "other.keras")
    other.save(path)
    with pytest.raises(init_from.InitError) as error:
        build_from(path, tmp_path / "run")
    assert "--init_from=" in str(error.value) and "\n" not in str(error.value)
    wide = models.build("digits_cnn", (8, 8, 1), 10)
    wide_path = str(tmp_path / "wide.keras")
    target = models.build("digits_cnn", (8, 8, 1), 10)
    export.export_keras(wide, wide_path)
    # Same count, one shape changed: named with both shapes.
    values = [w.numpy() for w in target.weights]
    values[0] = np.zeros((3, 3, 1, 31), np.float32)
    with pytest.raises(
        init_from.InitError,
        match=r"weight .* has shape \(3, 3, 1, 32\) in the model but \(3, 3, 1, 31\)",
    ):
        init_from._assign(target, values, wide_path)


def test_a_missing_source_is_refused_by_the_config(tmp_path):
    with pytest.raises(ValueError, match="--init_from=.*: no such file or directory"):
        config_from("smoke.cfg", workdir=str(tmp_path), init_from=str(tmp_path / "nope.keras"))


def test_python_names_the_argument_where_the_command_line_names_the_flag(tmp_path):
    other = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    path = str(tmp_path / "other.keras")
    other.save(path)
    import generalist_tf as gtf

    with pytest.raises(init_from.InitError, match=f"^init={path}: 2 weights, the model has"):
        gtf.build_generalist(
            lambda: models.build("digits_cnn", (8, 8, 1), 10),
            epochs=2,
            steps_per_epoch=1,
            communication=None,
            init=path,
        )
    with pytest.raises(init_from.InitError, match=f"^--init_from={path}: 2 weights"):
        build_from(path, tmp_path / "run")
