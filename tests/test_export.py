"""Exports: the SavedModel and its `.keras` twin serve the same float32 G, written atomically."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from generalist_tf import export, models


def build():
    return models.build("digits_cnn", (8, 8, 1), 10)


def trained_like_network():
    network = build()
    rng = np.random.default_rng(0)
    network.set_weights(
        [w + rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in network.get_weights()]
    )
    return network


def test_keras_file_reloads_with_plain_keras_and_equals_the_saved_model(tmp_path):
    network = trained_like_network()
    path = str(tmp_path / "export")
    export.export_saved_model(network, build, path)
    assert export.keras_path(path) == str(tmp_path / "export.keras")
    reloaded = keras.models.load_model(export.keras_path(path))  # our BatchNorm is registered
    images = np.random.default_rng(1).uniform(size=(5, 8, 8, 1)).astype(np.float32)
    served = tf.saved_model.load(path).signatures["serving_default"](images=images)["logits"]
    np.testing.assert_allclose(reloaded(images, training=False), served, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reloaded(images, training=False), network(images), atol=1e-5)
    # It is a Keras model users can keep training (fine-tuning).
    reloaded.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    reloaded.fit(images, np.arange(5) % 10, epochs=1, verbose=0)


def test_a_failed_keras_write_keeps_the_finished_file(tmp_path, monkeypatch):
    network = trained_like_network()
    path = str(tmp_path / "g.keras")
    export.export_keras(network, path)
    before = open(path, "rb").read()

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", broken_save)
    try:
        export.export_keras(network, path)
    except OSError:
        pass
    assert open(path, "rb").read() == before
    assert [f for f in os.listdir(tmp_path) if f.startswith(".export-")] == []


def test_load_serving_names_the_argument_its_caller_gave(tmp_path):
    missing = str(tmp_path / "nothing")
    with pytest.raises(ValueError, match=f"^model={missing}: not a readable SavedModel"):
        export.load_serving(missing)
    with pytest.raises(ValueError, match=f"^--surrogate={missing}: not a readable SavedModel"):
        export.load_serving(missing, "--surrogate")


PLAIN_KERAS = """
import sys
sys.path = [p for p in sys.path if p not in ("", {root!r}) and "generalist" not in p]
import numpy as np, keras
try:
    import generalist_tf
    raise SystemExit("generalist_tf is importable")
except ImportError:
    pass
model = keras.models.load_model(sys.argv[1], compile=False)
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(model(x, training=False)))
"""


@pytest.mark.parametrize("name", ["digits_cnn", "resnet18"])
def test_keras_export_loads_in_plain_keras_with_the_saved_model_s_logits(name, tmp_path):
    """`export.keras` of a network with our BatchNorm reloads where generalist_tf cannot be
    imported, with the SavedModel's logits to 1e-5."""
    import subprocess
    import sys

    shape = (8, 8, 1) if name == "digits_cnn" else (32, 32, 3)
    network = models.build(name, shape, 10)
    rng = np.random.default_rng(0)
    for w in network.weights:  # moving statistics away from 0 / 1, so they matter
        if "moving" in w.path:
            w.assign(rng.uniform(0.5, 1.5, size=w.shape).astype(np.float32))
    path = str(tmp_path / "export")
    export.export_saved_model(network, lambda: models.build(name, shape, 10), path)
    x = rng.uniform(size=(4, *shape)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = PLAIN_KERAS.format(root=root)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            path + ".keras",
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        cwd=str(tmp_path),
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    served = export.load_serving(path)(tf.constant(x)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), served, atol=1e-5)
