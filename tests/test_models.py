"""The model registry: logits shapes, BatchNorm settings, in-model normalisation, synchronized BN.

Synchronized BatchNorm is checked on a real 2-replica `MirroredStrategy` over two logical CPUs:
after one train step where the replicas see different halves of the batch, every replica holds
the same moving statistics, equal to the statistics of the global batch.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from generalist_tf import models
from tests.helpers_train import config_from, two_replica_strategy

CIFAR_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
BATCH = 2
# Small versions of every registry entry (a WRN-10-1 stands in for WRN-34-10 in the fast suite).
FAST_MODELS = [
    ("resnet18", {}),
    ("preact_resnet18", {}),
    ("wide_resnet", {"depth": 10, "width": 1}),
    ("small_cnn", {}),
    ("digits_cnn", {}),
]
# digits_cnn on 8x8x1: 94,186 trainable weights + 448 BatchNorm moving statistics.
DIGITS_CNN_PARAMS = 94_634
# WRN-34-10 (Zagoruyko & Komodakis 2016) has 46.2M parameters on CIFAR-10.
WRN_34_10_PARAMS = (46.1e6, 46.3e6)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


def batch_norm_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def random_images(shape, *, batch=BATCH, seed=0):
    return np.random.default_rng(seed).uniform(size=(batch, *shape)).astype(np.float32)


def test_registry_is_covered():
    assert sorted(name for name, _ in FAST_MODELS) == sorted(models.MODELS)


@pytest.mark.parametrize("name, kwargs", FAST_MODELS, ids=[name for name, _ in FAST_MODELS])
def test_model_outputs_logits_with_pytorch_batch_norm(name, kwargs):
    model = models.build(name, CIFAR_SHAPE, NUM_CLASSES, **kwargs)
    logits = model(random_images(CIFAR_SHAPE), training=False)
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(logits))
    # Logits, not probabilities: nothing forces them onto the simplex.
    assert not np.allclose(np.sum(logits, axis=-1), 1.0)
    for layer in batch_norm_layers(model):
        assert layer.momentum == pytest.approx(models.BN_MOMENTUM) == 0.9, layer.name
        assert layer.epsilon == pytest.approx(models.BN_EPSILON) == 1e-5, layer.name
        assert layer.synchronized is True, layer.name
    # Only SmallCNN (TRADES' MNIST model) has no BatchNorm.
    assert bool(batch_norm_layers(model)) == (name != "small_cnn")


@pytest.mark.slow
def test_wide_resnet_34_10_builds():
    model = models.build("wide_resnet", CIFAR_SHAPE, NUM_CLASSES)
    assert model.name == "wrn_34_10"
    low, high = WRN_34_10_PARAMS
    assert low < model.count_params() < high
    assert model(random_images(CIFAR_SHAPE), training=False).shape == (BATCH, NUM_CLASSES)


def test_digits_cnn_size():
    model = models.build("digits_cnn", (8, 8, 1), NUM_CLASSES)
    assert model.count_params() == DIGITS_CNN_PARAMS


@pytest.mark.parametrize("name", ["digits_cnn", "small_cnn"])
def test_normalisation_happens_inside_the_model(name):
    """A model built with mean/std on [0, 1] pixels equals the plain model on normalised pixels."""
    normalised = models.build(name, CIFAR_SHAPE, NUM_CLASSES, mean=CIFAR_MEAN, std=CIFAR_STD)
    plain = models.build(name, CIFAR_SHAPE, NUM_CLASSES)
    # Random weights everywhere (SmallCNN's published init zeroes its last layer, whose
    # outputs would then be 0 with or without normalisation).
    rng = np.random.default_rng(0)
    weights = [w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in normalised.get_weights()]
    normalised.set_weights(weights)
    # The normalisation holds constants, not weights: both models have the same weights.
    plain.set_weights(weights)
    x = random_images(CIFAR_SHAPE, batch=4)
    expected = plain((x - np.array(CIFAR_MEAN, np.float32)) / np.array(CIFAR_STD, np.float32))
    np.testing.assert_allclose(normalised(x), expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(plain(x), expected, atol=1e-3)


def test_invalid_normalisation_raises():
    with pytest.raises(ValueError, match="positive stds"):
        models.build("digits_cnn", CIFAR_SHAPE, NUM_CLASSES, mean=CIFAR_MEAN, std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="3 means"):
        models.build("digits_cnn", CIFAR_SHAPE, NUM_CLASSES, mean=(0.5,), std=CIFAR_STD)


def test_unknown_model_name_raises():
    with pytest.raises(ValueError, match="'vgg16'"):
        models.build("vgg16", CIFAR_SHAPE, NUM_CLASSES)


@pytest.mark.parametrize("depth, width, name", [(12, 1, "depth"), (10, 0, "width")])
def test_invalid_wide_resnet_raises_alike_from_python_and_the_flags(depth, width, name):
    value = depth if name == "depth" else width
    with pytest.raises(ValueError, match=f"^{name} must .*got {value}$"):
        models.build("wide_resnet", CIFAR_SHAPE, NUM_CLASSES, depth=depth, width=width)
    with pytest.raises(ValueError, match=f"^--wrn_{name} must .*got {value}$"):
        config_from(
            "smoke.cfg",
            workdir="/tmp/unused",
            model="wide_resnet",
            wrn_depth=depth,
            wrn_width=width,
        )


def moving_means_after_one_step(model, strategy, optimizer, x, y):
    """Runs one SGD step with replica r on half r of (x, y); the first BN's moving mean per replica."""
    inputs = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))
    )

    @tf.function
    def train_step(images, labels):
        def replica_fn(images, labels):
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                per_example = keras.losses.sparse_categorical_crossentropy(
                    labels, logits, from_logits=True
                )
                loss = tf.reduce_sum(per_example) / len(x)
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(gradients, model.trainable_variables)

        strategy.run(replica_fn, args=(images, labels))

    train_step(*next(iter(inputs)))
    moving_mean = batch_norm_layers(model)[0].moving_mean
    return [
        component.numpy() for component in strategy.experimental_local_results(moving_mean.value)
    ]


def two_replica_batch():
    x = random_images((8, 8, 1), batch=16, seed=1)
    x[8:] = 0.8 + 0.2 * x[8:]  # replica 1's half is much brighter than replica 0's.
    y = np.random.default_rng(2).integers(0, NUM_CLASSES, size=16)
    return x, y


def test_synchronized_batch_norm_keeps_replicas_identical():
    strategy = two_replica_strategy()
    with strategy.scope():
        model = models.build("digits_cnn", (8, 8, 1), NUM_CLASSES)
        optimizer = keras.optimizers.SGD(0.1)
    x, y = two_replica_batch()
    first_conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    # The moving mean starts at 0; one update with momentum 0.9 gives 0.1 * the batch mean.
    expected = (1 - models.BN_MOMENTUM) * np.mean(first_conv(x).numpy(), axis=(0, 1, 2))
    replica_0, replica_1 = moving_means_after_one_step(model, strategy, optimizer, x, y)
    np.testing.assert_array_equal(replica_0, replica_1)
    np.testing.assert_allclose(replica_0, expected, atol=1e-6)


def test_unsynchronized_batch_norm_would_diverge(monkeypatch):
    """Guards the check above: with Keras' default BN the replicas' statistics differ."""

    def unsynchronized_bn(name=None):
        return keras.layers.BatchNormalization(
            momentum=models.BN_MOMENTUM, epsilon=models.BN_EPSILON, name=name
        )

    monkeypatch.setattr(models, "_bn", unsynchronized_bn)
    strategy = two_replica_strategy()
    with strategy.scope():
        model = models.build("digits_cnn", (8, 8, 1), NUM_CLASSES)
        optimizer = keras.optimizers.SGD(0.1)
    replica_0, replica_1 = moving_means_after_one_step(
        model, strategy, optimizer, *two_replica_batch()
    )
    assert np.max(np.abs(replica_0 - replica_1)) > 1e-3


def layers_of(model, kind):
    return [layer for layer in model.layers if isinstance(layer, kind)]


def test_small_cnn_has_the_trades_initialisation():
    """Kaiming-normal convs (fan-in, ReLU gain), zero conv biases, a zero last layer."""
    keras.utils.set_random_seed(0)
    model = models.build("small_cnn", (28, 28, 1), NUM_CLASSES)
    for conv in layers_of(model, keras.layers.Conv2D):
        kernel, bias = (w.numpy() for w in conv.weights)
        fan_in = np.prod(kernel.shape[:3])
        np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / fan_in), rtol=0.1)
        assert abs(kernel.mean()) < 0.1 * kernel.std()
        np.testing.assert_array_equal(bias, 0.0)
    *hidden, last = layers_of(model, keras.layers.Dense)
    np.testing.assert_array_equal(last.kernel.numpy(), 0.0)
    np.testing.assert_array_equal(last.bias.numpy(), 0.0)
    for dense in hidden:  # PyTorch's Linear default: U(+-1/sqrt(fan_in)) weights and biases.
        bound = 1.0 / np.sqrt(dense.kernel.shape[0])
        for w in (dense.kernel.numpy(), dense.bias.numpy()):
            assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    x = random_images((28, 28, 1))
    np.testing.assert_array_equal(model(x).numpy(), 0.0)  # every class starts at logit 0


def test_wide_resnet_has_the_official_initialisation():
    """Conv weights N(0, sqrt(2 / (k * k * C_out))), BN gamma 1 / beta 0, classifier bias 0."""
    keras.utils.set_random_seed(0)
    model = models.build("wide_resnet", CIFAR_SHAPE, NUM_CLASSES, depth=10, width=2)
    convs = layers_of(model, keras.layers.Conv2D)
    big = [c for c in convs if c.kernel.shape[0] == 3 and c.kernel.shape[-1] >= 32]
    assert big
    for conv in big:
        kernel = conv.kernel.numpy()
        k, _, _, c_out = kernel.shape
        np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (k * k * c_out)), rtol=0.1)
    for bn in batch_norm_layers(model):
        np.testing.assert_array_equal(bn.gamma.numpy(), 1.0)
        np.testing.assert_array_equal(bn.beta.numpy(), 0.0)
    np.testing.assert_array_equal(layers_of(model, keras.layers.Dense)[-1].bias.numpy(), 0.0)


def one_bn_update(convention, x):
    layer = models.BatchNorm(
        moving_variance=convention, momentum=models.BN_MOMENTUM, epsilon=models.BN_EPSILON
    )
    outputs = layer(x, training=True).numpy()
    return layer, outputs


@pytest.mark.parametrize("convention", ["unbiased", "biased"])
def test_batch_norm_moving_variance_follows_the_convention(convention):
    """One training call: moving var <- 0.9 * 1 + 0.1 * var * (n / (n-1) if unbiased)."""
    x = random_images((3, 3, 4), batch=5, seed=3) * np.arange(1, 5, dtype=np.float32)
    layer, outputs = one_bn_update(convention, x)
    n = 5 * 3 * 3
    mean = x.mean(axis=(0, 1, 2))
    biased = x.var(axis=(0, 1, 2))
    factor = n / (n - 1) if convention == "unbiased" else 1.0
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), 0.9 + 0.1 * biased * factor, rtol=1e-5
    )
    # The normalisation itself uses the biased batch variance in both conventions.
    expected = (x - mean) / np.sqrt(biased + models.BN_EPSILON)
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-4)


def test_unbiased_synchronized_batch_norm_counts_every_replica():
    """Under 2 replicas, n is the global count: the update equals one device's on the batch."""
    x = random_images((2, 2, 3), batch=8, seed=4)
    strategy = two_replica_strategy()
    with strategy.scope():
        layer = models.BatchNorm(momentum=models.BN_MOMENTUM, synchronized=True)
        layer.build(x.shape)
    inputs = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(x))
    tf.function(lambda batch: strategy.run(lambda b: layer(b, training=True), args=(batch,)))(
        next(iter(inputs))
    )
    n = 8 * 2 * 2
    expected = 0.9 + 0.1 * x.var(axis=(0, 1, 2)) * n / (n - 1)
    for component in strategy.experimental_local_results(layer.moving_variance.value):
        np.testing.assert_allclose(component.numpy(), expected, rtol=1e-5)


def test_bn_convention_reaches_every_layer_and_is_checked():
    model = models.build("digits_cnn", (8, 8, 1), NUM_CLASSES, bn_moving_variance="biased")
    assert {bn.moving_variance_convention for bn in batch_norm_layers(model)} == {"biased"}
    default = models.build("digits_cnn", (8, 8, 1), NUM_CLASSES)
    assert {bn.moving_variance_convention for bn in batch_norm_layers(default)} == {"unbiased"}
    with pytest.raises(ValueError, match="^bn_moving_variance.*'sample'"):
        models.build("digits_cnn", (8, 8, 1), NUM_CLASSES, bn_moving_variance="sample")


def test_a_users_builder_by_module_path():
    """`--model=package.module:function`: the user's network as built; bad paths in one line."""
    network = models.build("tests.user_network:build", (8, 8, 1), 10)
    assert network.output_shape == (None, 10)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in network.layers)
    with pytest.raises(ValueError, match=r"^name=tests.nowhere:build: cannot import"):
        models.build("tests.nowhere:build", (8, 8, 1), 10)
    with pytest.raises(ValueError, match=r"tests.user_network has no function 'nope'"):
        models.build("tests.user_network:nope", (8, 8, 1), 10)


def test_batch_norm_follows_a_float64_policy():
    """Under `float64` the unbiased update runs in float64 (it failed mixing float32 moments
    with float64 variables), to float64 precision, as Keras' own layer does."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        layer = models.BatchNorm(moving_variance="unbiased", momentum=0.9)
        x = random_images((3, 3, 2), batch=4, seed=5).astype(np.float64)
        outputs = layer(x, training=True)
    finally:
        keras.config.set_dtype_policy(previous)
    assert outputs.dtype == tf.float64 and layer.moving_variance.dtype == "float64"
    n = 4 * 3 * 3
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), 0.9 + 0.1 * x.var(axis=(0, 1, 2)) * n / (n - 1), rtol=1e-12
    )


def test_a_generalist_d_step_runs_under_a_float64_policy():
    import generalist_tf as gtf

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        model = gtf.build_generalist(
            lambda: models.build("digits_cnn", (8, 8, 1), NUM_CLASSES),
            epochs=1,
            steps_per_epoch=1,
            linf_attack=gtf.Attack("linf", 0.1, 0.05, 1),
            communication=None,
            jit_compile="false",
        )
        model.compile()
        x = random_images((8, 8, 1), batch=8, seed=2)  # images stay float32 (attacks take them)
        y = np.arange(8) % NUM_CLASSES
        history = model.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0)
    finally:
        keras.config.set_dtype_policy(previous)
    assert all(np.isfinite(v[0]) for v in history.history.values())
    variances = [bn.moving_variance for bn in batch_norm_layers(model.learners[0].network)]
    assert variances and all(v.dtype == "float64" for v in variances)
    assert not np.allclose(variances[0].numpy(), 1.0)  # the unbiased update ran
