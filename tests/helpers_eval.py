"""Shared helpers of the evaluation tests: digits models fitted in seconds, cached per process.

Every model is fitted once per pytest process (`functools.cache`), whichever test file asks
first, so the three evaluation test files share them. Budgets are those of the digits
evaluation: at l_inf 0.1 / l_2 0.5 a standard digits CNN keeps about 60% accuracy under attack,
so a weaker or a stronger attack shows, and 4x those radii break it completely.
"""

import functools

import keras
import numpy as np
import tensorflow as tf

from generalist_tf import attacks, data, models
from generalist_tf.evaluation import runner

EPSILON_LINF = 0.1
EPSILON_L2 = 0.5
# Test examples of the fast tests (the whole test split has 360).
NUM_EXAMPLES = 128
# Logit scale of the saturated model: float32 softmax becomes exactly one-hot beyond a logit
# margin of about 100, so the cross-entropy gradient of every confident example is exactly 0.
SATURATION = 1e6
# Input quantisation round(x * 4) / 4: piecewise constant, zero gradient almost everywhere.
QUANTISATION_LEVELS = 4
FIT_EPOCHS = 8
# PGD adversarial training (Madry et al. 2018) of the slow tests: PGD-10 at the evaluation
# epsilon, step 2.5 * epsilon / 10.
AT_EPOCHS = 15
AT_STEPS = 10
# The attack budgets of the fast evaluations (`evaluate`).
FAST_BUDGET = dict(square_queries=300, apgd_steps=50)
# Evaluations that skip the accuracy-vs-epsilon curves and TensorBoard.
NO_CURVES = dict(epsilon_fractions=(), tensorboard=False)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@functools.cache
def digits() -> data.Arrays:
    return data.load("digits")


def subset(num_examples: int = NUM_EXAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """The first `num_examples` test digits (float32 in [0, 1]) and their labels."""
    arrays = digits()
    return arrays.x_test[:num_examples], arrays.y_test[:num_examples]


def _compile(model: keras.Model) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def build_digits_cnn() -> keras.Model:
    arrays = digits()
    return models.build("digits_cnn", arrays.image_shape, arrays.num_classes)


@functools.cache
def fitted(seed: int = 0) -> keras.Model:
    """digits_cnn fitted with Adam for 8 epochs (~99% clean test accuracy, a few seconds)."""
    arrays = digits()
    keras.utils.set_random_seed(seed)
    model = _compile(build_digits_cnn())
    model.fit(arrays.x_train, arrays.y_train, batch_size=64, epochs=FIT_EPOCHS, verbose=0)
    return model


@functools.cache
def saturated() -> keras.Model:
    """The fitted model with its logits multiplied by `SATURATION` (same predictions)."""
    return keras.Sequential([fitted(), keras.layers.Rescaling(SATURATION)])


@functools.cache
def quantised() -> keras.Model:
    """A digits_cnn behind round(x * 4) / 4, fitted through the quantisation (~98% clean).

    `keras.ops.round` has no gradient at all (TensorFlow returns None): the way a real
    "defense" by input quantisation masks gradients.
    """
    arrays = digits()
    keras.utils.set_random_seed(0)
    inputs = keras.Input(arrays.image_shape)
    levels = float(QUANTISATION_LEVELS)
    quantise = keras.layers.Lambda(lambda images: keras.ops.round(images * levels) / levels)
    model = _compile(keras.Model(inputs, build_digits_cnn()(quantise(inputs))))
    model.fit(arrays.x_train, arrays.y_train, batch_size=64, epochs=FIT_EPOCHS, verbose=0)
    return model


@functools.cache
def pgd_trained() -> keras.Model:
    """digits_cnn adversarially trained with l_inf PGD-10 at `EPSILON_LINF` (slow tests)."""
    arrays = digits()
    keras.utils.set_random_seed(0)
    model = build_digits_cnn()
    optimizer = keras.optimizers.Adam(3e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(x, y):
        x_adv = attacks.pgd(
            model,
            x,
            y,
            norm="linf",
            epsilon=EPSILON_LINF,
            step_size=2.5 * EPSILON_LINF / AT_STEPS,
            num_steps=AT_STEPS,
            jit_compile="false",
        )
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x_adv, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    dataset = tf.data.Dataset.from_tensor_slices((arrays.x_train, arrays.y_train))
    for epoch in range(AT_EPOCHS):
        for x, y in dataset.shuffle(len(arrays.x_train), seed=epoch).batch(64):
            train_step(x, y)
    return model


def accuracy(model, x, y) -> float:
    logits = model(tf.convert_to_tensor(x, tf.float32), training=False)
    return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == np.asarray(y)))


def linf_distance(x_adv, x) -> np.ndarray:
    return np.max(np.abs(np.asarray(x_adv) - x).reshape(len(x), -1), axis=1)


def l2_distance(x_adv, x) -> np.ndarray:
    delta = (np.asarray(x_adv, np.float64) - x).reshape(len(x), -1)
    return np.sqrt(np.sum(np.square(delta), axis=1))


class Counting:
    """A model that counts its calls in a variable (the count survives tf.function)."""

    def __init__(self, model):
        self.model = model
        self.calls = tf.Variable(0, dtype=tf.int64)

    def __call__(self, images, training=False):
        self.calls.assign_add(1)
        return self.model(images, training=training)


def evaluate(model, workdir, x=None, y=None, **kwargs):
    """`runner.evaluate_model` at the digits budgets with the fast suite (a few seconds)."""
    if x is None:
        x, y = subset()
    arguments = dict(
        workdir=str(workdir),
        epsilon_linf=EPSILON_LINF,
        epsilon_l2=EPSILON_L2,
        verbose=0,
        **FAST_BUDGET,
    )
    arguments.update(kwargs)
    return runner.evaluate_model(model, x, y, **arguments)
