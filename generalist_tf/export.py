"""Exporting the global learner as a SavedModel that serves without this project.

The signature `serving_default` takes float32 images in [0, 1] of shape (batch, H, W, C) under
the input name `images` and returns `{"logits": (batch, classes)}`. The export is written to a
temporary directory next to the target and renamed into place only when complete, so a failed
or interrupted run never leaves a partial export and never replaces a finished one.

Loading a SavedModel runs its graph: load only files you trust.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from generalist_tf import files, precision

SIGNATURE = "serving_default"


class _Serving(tf.Module):
    def __init__(self, network, image_shape):
        super().__init__()
        self.network = network
        # The weights as a flat list of tf.Variables: `loaded.weights` after loading.
        self.weights = [w.value for w in network.weights]

        @tf.function(input_signature=[tf.TensorSpec((None, *image_shape), tf.float32, "images")])
        def serve(images):
            return {"logits": tf.cast(self.network(images, training=False), tf.float32)}

        self.serve = serve


def export_saved_model(network, build_network, path: str) -> None:
    """Writes `network` as a SavedModel at `path`, atomically.

    Args:
      network: the trained network (may hold mirrored variables of a distribution strategy).
      build_network: a function returning a fresh network of the same architecture; the export is
        a plain copy built outside any strategy, so the SavedModel holds no distributed state.
      path: target directory; replaced only after the new export is complete.

    The copy is built under the float32 dtype policy whatever the training precision: a
    bf16-trained G is served, and attacked by the evaluation suite, as a float32 network
    (half-precision gradients would blunt the attacks and overstate robustness).
    """
    with precision.dtype_policy("fp32"):
        copy = build_network()
    copy.set_weights(network.get_weights())
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        module = _Serving(copy, tuple(copy.input_shape[1:]))
        tf.saved_model.save(module, staging, signatures={SIGNATURE: module.serve})
        if os.path.exists(path):
            retired = tempfile.mkdtemp(prefix=".retired-", dir=parent)
            os.replace(path, os.path.join(retired, "export"))
            os.replace(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, path)
    except Exception as e:
        if files.is_disk_full(e):
            raise files.DiskFullError(path) from None
        raise
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    export_keras(copy, keras_path(path))


def keras_path(export_dir: str) -> str:
    """Where the `.keras` twin of a SavedModel export goes: `<workdir>/export.keras`."""
    return os.path.abspath(export_dir).rstrip(os.sep) + ".keras"


def export_keras(network, path: str) -> None:
    """Writes `network` as a `.keras` file at `path`, atomically (a finished file is replaced
    only by a complete new one).

    The file holds only stock Keras layers (`portable`): it reloads with plain
    `keras.models.load_model(path)` in any process, without `generalist_tf`, giving the same
    logits as the SavedModel, and unlike the SavedModel it can be trained further.
    """
    portable_network = portable(network)
    with files.staged(path) as staging:
        portable_network.save(staging, overwrite=True)


def portable(network):
    """`network` with our training-only layers replaced by stock Keras ones, same weights.

    Our `BatchNorm` differs from `keras.layers.BatchNormalization` only in how training
    updates its moving variance (PyTorch's unbiased convention); at inference both compute
    the same function of the same weights, so the export uses the stock layer. A network
    without our layers (or one `keras.models.clone_model` cannot rebuild, such as a subclassed
    model) is returned as it is.
    """
    from generalist_tf import models

    if not any(isinstance(layer, models.BatchNorm) for layer in models.layers_of(network)):
        return network

    def stock(layer):
        config = layer.get_config()
        if isinstance(layer, models.BatchNorm):
            config.pop("moving_variance", None)
            return keras.layers.BatchNormalization.from_config(config)
        return layer.__class__.from_config(config)

    try:
        copy = keras.models.clone_model(network, clone_function=stock)
    except (ValueError, TypeError, NotImplementedError):
        return network
    copy.set_weights(network.get_weights())
    return copy


def load_serving(path: str, argument: str = "model"):
    """Loads an exported model; returns a function `images -> logits`.

    Args:
      path: the SavedModel directory.
      argument: how the caller names `path` in errors (`model` from Python; the command line
        passes its flag, `--model` or `--surrogate`).

    Raises:
      ValueError: `path` is not a SavedModel with the `serving_default` signature.
    """
    try:
        loaded = tf.saved_model.load(path)
    except (OSError, IOError, ValueError) as e:
        raise ValueError(
            f"{argument}={path}: not a readable SavedModel ({type(e).__name__})"
        ) from None
    signatures = getattr(loaded, "signatures", {})
    if SIGNATURE not in signatures:
        raise ValueError(f"{argument}={path}: SavedModel has no {SIGNATURE!r} signature")
    serve = signatures[SIGNATURE]
    _, inputs = serve.structured_input_signature
    if len(inputs) != 1 or len(serve.structured_outputs) != 1:
        raise ValueError(
            f"{argument}={path}: {SIGNATURE!r} must take one image tensor and return one logits "
            f"tensor, got inputs {sorted(inputs)} and outputs {sorted(serve.structured_outputs)}"
        )
    input_name = next(iter(inputs))
    output_name = next(iter(serve.structured_outputs))

    def logits(images):
        return serve(**{input_name: tf.convert_to_tensor(images, tf.float32)})[output_name]

    logits.input_shape = tuple(inputs[input_name].shape[1:])
    logits.num_classes = serve.structured_outputs[output_name].shape[-1]
    logits.path = path
    # The signature holds only weak references to the model's variables: keep the model alive
    # as long as the function is (otherwise "referencing variables which have been deleted").
    logits.saved_model = loaded
    return logits


def check_fits(model, x, y, *, flag: str, dataset: str) -> None:
    """Refuses evaluation data the served model (from `load_serving`) cannot take.

    Raises:
      ValueError: image shape (height, width, channels) differs from the signature's input, or
        a label reaches the model's class count; the message names `flag` and `dataset`.
    """
    expected = model.input_shape
    if len(expected) != len(x.shape[1:]) or any(
        e is not None and e != a for e, a in zip(expected, x.shape[1:])
    ):
        raise ValueError(
            f"{flag}={model.path} takes images of shape {_shape(expected)}, but --dataset={dataset} "
            f"has {_shape(x.shape[1:])} (height, width, channels)"
        )
    if model.num_classes is not None and len(y) and int(np.max(y)) >= model.num_classes:
        raise ValueError(
            f"{flag}={model.path} has {model.num_classes} classes, but --dataset={dataset} has "
            f"label {int(np.max(y))}"
        )


def _shape(shape) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)
