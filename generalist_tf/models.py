"""Image classifiers by name: CIFAR ResNets, Wide ResNets, the MNIST SmallCNN and a digits CNN.

Every model maps float32 images in [0, 1] (NHWC) to logits. Optional per-channel normalisation
happens inside the model, so attacks, learners and the exported SavedModel all work in pixel
space. BatchNorm uses the PyTorch defaults the paper was trained with (momentum 0.1 in PyTorch's
convention = 0.9 in Keras', epsilon 1e-5) and is synchronized across replicas: with the default,
each replica of a `MirroredStrategy` keeps its own moving statistics, which silently diverge,
while checkpoints, export and the Generalist weight mixing read only replica 0's copy.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
from keras import layers

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _kernel_initializer():
    # PyTorch's default Conv2d / Linear initialisation (kaiming_uniform with a=sqrt(5)) is a
    # uniform fan-in scaling with scale 1/3; using it keeps our runs comparable with the paper's.
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


def _bn(name: str | None = None):
    return layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=True, name=name
    )


def _conv(filters: int, kernel: int, stride: int = 1, use_bias: bool = False):
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=use_bias,
        kernel_initializer=_kernel_initializer(),
    )


def _dense(units: int, activation=None):
    return layers.Dense(units, activation=activation, kernel_initializer=_kernel_initializer())


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


def _preact_block(x, filters: int, stride: int):
    """Pre-activation basic block: BN-ReLU-conv twice; the shortcut taps the activated input."""
    activated = layers.ReLU()(_bn()(x))
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, stride)(activated)
    y = _conv(filters, 3, stride)(activated)
    y = _conv(filters, 3)(layers.ReLU()(_bn()(y)))
    return layers.Add()([y, shortcut])


def resnet18(input_shape, num_classes, *, mean=None, std=None) -> keras.Model:
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool)."""
    inputs = keras.Input(input_shape)
    x = layers.ReLU()(_bn()(_conv(64, 3)(_stem(inputs, mean, std))))
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            x = _basic_block(x, filters, 2 if stage > 0 and block == 0 else 1)
    logits = _dense(num_classes)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, logits, name="resnet18")


def preact_resnet18(input_shape, num_classes, *, mean=None, std=None) -> keras.Model:
    """Pre-activation ResNet-18 (He et al. 2016b) with the CIFAR stem."""
    inputs = keras.Input(input_shape)
    x = _conv(64, 3)(_stem(inputs, mean, std))
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            x = _preact_block(x, filters, 2 if stage > 0 and block == 0 else 1)
    x = layers.ReLU()(_bn()(x))
    logits = _dense(num_classes)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, logits, name="preact_resnet18")


def wide_resnet(
    input_shape, num_classes, *, depth: int = 34, width: int = 10, mean=None, std=None
) -> keras.Model:
    """Wide ResNet WRN-depth-width (Zagoruyko & Komodakis 2016), pre-activation blocks.

    WRN-34-10 is the usual adversarial-training model (the official Generalist code calls it
    WRN-32-10).
    """
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ValueError(f"--wrn_depth must be 6n+4 and at least 10, got {depth}")
    if width < 1:
        raise ValueError(f"--wrn_width must be at least 1, got {width}")
    blocks = (depth - 4) // 6
    inputs = keras.Input(input_shape)
    x = _conv(16, 3)(_stem(inputs, mean, std))
    for stage, filters in enumerate((16 * width, 32 * width, 64 * width)):
        for block in range(blocks):
            x = _preact_block(x, filters, 2 if stage > 0 and block == 0 else 1)
    x = layers.ReLU()(_bn()(x))
    logits = _dense(num_classes)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, logits, name=f"wrn_{depth}_{width}")


def small_cnn(input_shape, num_classes, *, mean=None, std=None) -> keras.Model:
    """The MNIST SmallCNN of TRADES (Zhang et al. 2019): 4 convs, 2 max-pools, 2x200 dense."""
    inputs = keras.Input(input_shape)
    x = _stem(inputs, mean, std)
    for filters in (32, 64):
        x = layers.Conv2D(filters, 3, activation="relu", kernel_initializer=_kernel_initializer())(
            x
        )
        x = layers.Conv2D(filters, 3, activation="relu", kernel_initializer=_kernel_initializer())(
            x
        )
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = _dense(200, "relu")(x)
    x = layers.Dropout(0.5)(x)
    x = _dense(200, "relu")(x)
    logits = _dense(num_classes)(x)
    return keras.Model(inputs, logits, name="small_cnn")


def digits_cnn(input_shape, num_classes, *, mean=None, std=None) -> keras.Model:
    """A 94.6k-parameter CNN for 8x8 digits: three conv-BN-ReLU layers and global pooling."""
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


def build(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs,
) -> keras.Model:
    """Builds a model from the registry.

    Args:
      name: a key of `MODELS`.
      input_shape: (H, W, C) of the images.
      num_classes: number of logits.
      mean, std: optional per-channel normalisation applied inside the model.
      **kwargs: architecture arguments (`depth`, `width` for `wide_resnet`).

    Returns:
      A functional `keras.Model` (its weights exist) mapping images to logits.

    Raises:
      ValueError: unknown name or invalid architecture arguments.
    """
    if name not in MODELS:
        raise ValueError(f"--model={name!r} is unknown; choose one of {', '.join(MODELS)}")
    return MODELS[name](tuple(input_shape), num_classes, mean=mean, std=std, **kwargs)
