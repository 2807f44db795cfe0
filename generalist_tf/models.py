"""Image classifiers by name: CIFAR ResNets, Wide ResNets, the MNIST SmallCNN and a digits CNN.

Every model maps float32 images in [0, 1] (NHWC) to logits. Optional per-channel normalisation
happens inside the model, so attacks, learners and the exported SavedModel all work in pixel
space. BatchNorm uses the PyTorch defaults the paper was trained with (momentum 0.1 in PyTorch's
convention = 0.9 in Keras', epsilon 1e-5, the moving variance updated with the *unbiased* batch
variance; `BatchNorm`) and is synchronized across replicas: with the default, each replica of a
`MirroredStrategy` keeps its own moving statistics, which silently diverge, while checkpoints,
export and the Generalist weight mixing read only replica 0's copy.

Initialisation follows each architecture's reference (generalist_tf/docs/algorithm.md, "Initialisation"): the
ResNets keep PyTorch's defaults, the WRN and the SmallCNN their authors' explicit schemes.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import keras
import tensorflow as tf
from keras import layers

from generalist_tf import compat, names
from generalist_tf.names import (  # noqa: F401
    BN_MOVING_VARIANCE,
    check_bn_moving_variance,
    is_user_model,
    user_builder,
)

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="generalist_tf")
class BatchNorm(layers.BatchNormalization):
    """BatchNormalization whose moving variance can follow PyTorch's (unbiased) convention.

    Both frameworks normalise a training batch with its biased variance. PyTorch then updates
    the moving variance with the unbiased one, `var * n / (n - 1)` with `n` the number of
    values per channel (batch x H x W, over all replicas when synchronized); Keras with the
    biased one. Inference-mode attacks read the moving statistics, so the convention changes
    the robust learner's training examples (generalist_tf/docs/algorithm.md, "BatchNorm moving variance").

    Args:
      moving_variance: `unbiased` (PyTorch's, the paper's) or `biased` (Keras').
      **kwargs: `keras.layers.BatchNormalization` arguments.
    """

    def __init__(self, *, moving_variance: str = "unbiased", **kwargs):
        check_bn_moving_variance(moving_variance, "moving_variance")
        super().__init__(**kwargs)
        self.moving_variance_convention = moving_variance

    def call(self, inputs, training=None, mask=None):
        plain = (
            mask is None
            and not self.renorm
            and self.axis in (-1, len(inputs.shape) - 1)
            and self.moving_variance_convention == "unbiased"
        )
        if not (training and self.trainable and plain):
            return super().call(inputs, training=training, mask=mask)
        # The statistics in the variables' dtype: float32 under the mixed policies (as Keras'
        # own layer), float64 under a float64 policy.
        dtype = self.moving_mean.dtype
        x = tf.cast(inputs, dtype)
        mean, variance = compat.batch_moments(self, x)
        n = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), compat.reduction_axes(self))), dtype)
        context = tf.distribute.get_replica_context()
        if self.synchronized and context is not None:
            n *= context.num_replicas_in_sync  # the moments were reduced over every replica.
        unbiased = variance * n / tf.maximum(n - 1.0, 1.0)
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m + unbiased * (1.0 - m))
        outputs = tf.nn.batch_normalization(
            x,
            mean,
            variance,
            offset=None if self.beta is None else tf.cast(self.beta, dtype),
            scale=None if self.gamma is None else tf.cast(self.gamma, dtype),
            variance_epsilon=self.epsilon,
        )
        return tf.cast(outputs, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "moving_variance": self.moving_variance_convention}


def layers_of(network) -> Iterator:
    """Every layer inside `network`, nested models and blocks included, depth first."""
    for layer in getattr(network, "layers", ()):
        yield layer
        yield from layers_of(layer)


def _torch_default_kernel():
    # PyTorch's default Conv2d / Linear weight initialisation, kaiming_uniform with a=sqrt(5),
    # is a uniform fan-in scaling with scale 1/3.
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


def _torch_default_bias(fan_in: int):
    # PyTorch's default Conv2d / Linear bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def _kaiming_normal_fan_in():
    # torch.nn.init.kaiming_normal_ defaults: fan_in, ReLU gain sqrt(2), untruncated normal.
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_in", distribution="untruncated_normal"
    )


def _wrn_conv_kernel():
    # The WRN authors' (and TRADES', Generalist's) WRN: N(0, sqrt(2 / (k * k * C_out))).
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


# The moving-variance convention of the BatchNorm layers the builders below create; `build`
# sets it for the duration of one call (the builders are plain functions of the architecture).
_bn_convention = ["unbiased"]


def _bn(name: str | None = None):
    return BatchNorm(
        moving_variance=_bn_convention[0],
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        synchronized=True,
        name=name,
    )


def _conv(filters: int, kernel: int, stride: int = 1, use_bias: bool = False, initializer=None):
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=use_bias,
        kernel_initializer=initializer or _torch_default_kernel(),
    )


def _dense(units: int, activation=None, *, fan_in: int | None = None):
    """A dense layer with PyTorch's default weight init; its default bias too given `fan_in`."""
    bias = "zeros" if fan_in is None else _torch_default_bias(fan_in)
    return layers.Dense(
        units,
        activation=activation,
        kernel_initializer=_torch_default_kernel(),
        bias_initializer=bias,
    )


def _stem(inputs, mean: Sequence[float] | None, std: Sequence[float] | None):
    """Per-channel normalisation inside the model, so every caller feeds [0, 1] pixels."""
    if mean is None and std is None:
        return inputs
    channels = inputs.shape[-1]
    mean = list(mean) if mean is not None else [0.0] * channels
    std = list(std) if std is not None else [1.0] * channels
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(
            f"normalisation needs {channels} means and {channels} positive stds, got mean={mean} "
            f"std={std}"
        )
    return layers.Normalization(mean=mean, variance=[s * s for s in std])(inputs)


def _basic_block(x, filters: int, stride: int):
    """ResNet v1 basic block (two 3x3 convs); projection shortcut when the shape changes."""
    shortcut = x
    y = layers.ReLU()(_bn()(_conv(filters, 3, stride)(x)))
    y = _bn()(_conv(filters, 3)(y))
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _bn()(_conv(filters, 1, stride)(x))
    return layers.ReLU()(layers.Add()([y, shortcut]))


def _preact_block(x, filters: int, stride: int, initializer=None):
    """Pre-activation basic block: BN-ReLU-conv twice; the shortcut taps the activated input."""
    activated = layers.ReLU()(_bn()(x))
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, stride, initializer=initializer)(activated)
    y = _conv(filters, 3, stride, initializer=initializer)(activated)
    y = _conv(filters, 3, initializer=initializer)(layers.ReLU()(_bn()(y)))
    return layers.Add()([y, shortcut])


def resnet18(input_shape, num_classes, *, mean=None, std=None) -> keras.Model:
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool).

    Initialisation: PyTorch's defaults, as the official Generalist ResNet-18 (kaiming-uniform
    a=sqrt(5) weights, the classifier's bias U(+-1/sqrt(fan_in)); BN gamma 1, beta 0).
    """
    inputs = keras.Input(input_shape)
    x = layers.ReLU()(_bn()(_conv(64, 3)(_stem(inputs, mean, std))))
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            x = _basic_block(x, filters, 2 if stage > 0 and block == 0 else 1)
    logits = _dense(num_classes, fan_in=512)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, logits, name="resnet18")


def preact_resnet18(input_shape, num_classes, *, mean=None, std=None) -> keras.Model:
    """Pre-activation ResNet-18 (He et al. 2016b) with the CIFAR stem; PyTorch's default init."""
    inputs = keras.Input(input_shape)
    x = _conv(64, 3)(_stem(inputs, mean, std))
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            x = _preact_block(x, filters, 2 if stage > 0 and block == 0 else 1)
    x = layers.ReLU()(_bn()(x))
    logits = _dense(num_classes, fan_in=512)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, logits, name="preact_resnet18")


def wide_resnet(
    input_shape, num_classes, *, depth: int = 34, width: int = 10, mean=None, std=None
) -> keras.Model:
    """Wide ResNet WRN-depth-width (Zagoruyko & Komodakis 2016), pre-activation blocks.

    WRN-34-10 is the usual adversarial-training model (the official Generalist code calls it
    WRN-32-10). Initialisation as the WRN authors' and the official code's: every conv
    N(0, sqrt(2 / (k * k * C_out))), BN gamma 1 and beta 0, the classifier's bias 0 (its weight
    keeps PyTorch's default).
    """
    names.check_wide_resnet(depth, width)
    blocks = (depth - 4) // 6
    inputs = keras.Input(input_shape)
    x = _conv(16, 3, initializer=_wrn_conv_kernel())(_stem(inputs, mean, std))
    for stage, filters in enumerate((16 * width, 32 * width, 64 * width)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _preact_block(x, filters, stride, initializer=_wrn_conv_kernel())
    x = layers.ReLU()(_bn()(x))
    logits = _dense(num_classes)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, logits, name=f"wrn_{depth}_{width}")


def small_cnn(input_shape, num_classes, *, mean=None, std=None) -> keras.Model:
    """The MNIST SmallCNN of TRADES (Zhang et al. 2019): 4 convs, 2 max-pools, 2x200 dense.

    Initialisation as the TRADES reference: conv weights kaiming-normal (fan-in, ReLU gain),
    conv biases 0, the hidden dense layers PyTorch's defaults, the last dense layer's weight and
    bias 0 (so every class starts at the same logit).
    """
    inputs = keras.Input(input_shape)
    x = _stem(inputs, mean, std)
    for filters in (32, 64):
        for _ in range(2):
            x = layers.Conv2D(
                filters, 3, activation="relu", kernel_initializer=_kaiming_normal_fan_in()
            )(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = _dense(200, "relu", fan_in=x.shape[-1])(x)
    x = layers.Dropout(0.5)(x)
    x = _dense(200, "relu", fan_in=200)(x)
    logits = layers.Dense(num_classes, kernel_initializer="zeros", bias_initializer="zeros")(x)
    return keras.Model(inputs, logits, name="small_cnn")


def digits_cnn(input_shape, num_classes, *, mean=None, std=None) -> keras.Model:
    """A 94.6k-parameter CNN for 8x8 digits: three conv-BN-ReLU layers and global pooling.

    Ours (no published reference): PyTorch's default weight init, zero biases.
    """
    inputs = keras.Input(input_shape)
    x = _stem(inputs, mean, std)
    for filters, stride in ((32, 1), (64, 2), (128, 2)):
        x = layers.ReLU()(_bn()(_conv(filters, 3, stride)(x)))
    logits = _dense(num_classes)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, logits, name="digits_cnn")


MODELS: dict[str, Callable[..., keras.Model]] = {
    "resnet18": resnet18,
    "preact_resnet18": preact_resnet18,
    "wide_resnet": wide_resnet,
    "small_cnn": small_cnn,
    "digits_cnn": digits_cnn,
}
assert tuple(MODELS) == names.MODELS, "models.MODELS and names.MODELS must list the same names"


def build(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    bn_moving_variance: str = "unbiased",
    argument: str = "name",
    **kwargs,
) -> keras.Model:
    """Builds a model from the registry.

    Args:
      name: a key of `MODELS`, or `package.module:function` (`user_builder`): the user's network,
        built as it is (mean, std and bn_moving_variance apply to our architectures only).
      input_shape: (H, W, C) of the images.
      num_classes: number of logits.
      mean, std: optional per-channel normalisation applied inside the model.
      bn_moving_variance: `unbiased` (PyTorch's convention) or `biased` (Keras'); see
        `BatchNorm`.
      argument: how errors name `name` (`name`; the command line's `--model`).
      **kwargs: architecture arguments (`depth`, `width` for `wide_resnet`).

    Returns:
      A functional `keras.Model` (its weights exist) mapping images to logits.

    Raises:
      ValueError: unknown name or invalid architecture arguments.
    """
    if is_user_model(name):
        # The user's own network: their layers, their BatchNorm and their normalisation.
        network = user_builder(name, argument)(tuple(input_shape), num_classes)
        if not isinstance(network, keras.Model):
            raise ValueError(
                f"{argument}={name} returned {type(network).__name__}, not a keras.Model"
            )
        return network
    if name not in MODELS:
        raise ValueError(f"{argument}={name!r} is unknown; choose one of {', '.join(MODELS)}")
    check_bn_moving_variance(bn_moving_variance)
    _bn_convention[0] = bn_moving_variance
    try:
        return MODELS[name](tuple(input_shape), num_classes, mean=mean, std=std, **kwargs)
    finally:
        _bn_convention[0] = "unbiased"
