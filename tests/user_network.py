"""A network that is not in our registry, as a user writes it: functional, BatchNorm, Dropout.

Trained by `tests/test_api.py` through the command line (`--model=tests.user_network:build`)
and through the Python API, on 2 replicas, to show that both give the same G.
"""

import keras


def build(image_shape, num_classes) -> keras.Model:
    inputs = keras.Input(image_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPool2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.2)(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
