"""A model as the evaluation's attacks call it: inference mode, float32 logits, honest gradients."""

from __future__ import annotations

import keras
import tensorflow as tf


class Classifier:
    """`classifier(images, training=False) -> float32 logits` around a model.

    Wraps a Keras model or any callable `images -> logits` (an exported SavedModel's serving
    function). The logits get `0 * sum(images)` added: a model with a non-differentiable op on
    its input path (`tf.round`, as in input quantisation) otherwise has a None input gradient,
    which crashes a gradient attack; with it the gradient is an honest zero, the attack fails
    and the alarms report the masking.
    """

    def __init__(self, model):
        self.model = model
        self._takes_training = isinstance(model, keras.Model)

    @property
    def compute_dtype(self):
        """The wrapped model's compute dtype (the compiled attacks' trace key)."""
        return getattr(self.model, "compute_dtype", None)

    def __call__(self, images, training=False):
        del training  # Attacks and evaluation always run the model in inference mode.
        images = tf.convert_to_tensor(images, tf.float32)
        logits = self.model(images, training=False) if self._takes_training else self.model(images)
        logits = tf.cast(logits, tf.float32)
        axes = list(range(1, images.shape.rank))
        return logits + 0.0 * tf.reduce_sum(images, axis=axes)[:, None]


def as_classifier(model) -> Classifier:
    """`model` wrapped as a `Classifier` (returned unchanged if it already is one)."""
    return model if isinstance(model, Classifier) else Classifier(model)
