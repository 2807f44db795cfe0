"""The parent model (`algorithm.generalist`): EMAs, interpolation into G, redistribution, the train step's mixing."""

import numpy as np
import pytest
import tensorflow as tf

from generalist_tf.algorithm import generalist, mixing
from tests import helpers_train


@pytest.mark.parametrize("count", [0, 5, 10_000])
def test_ema_and_three_learner_interpolation(count):
    rng = np.random.default_rng(count)
    model = helpers_train.build_model()
    assert isinstance(model, generalist.Generalist)
    helpers_train.set_known_weights(model, rng)
    model.ema_updates.assign(count)
    coefficients = [0.2, 0.3, 0.5]
    theta = [helpers_train.values(learner.network) for learner in model.learners]
    ema = [helpers_train.values(learner.ema_network) for learner in model.learners]
    g = helpers_train.values(model.global_network)
    model.mix(coefficients)
    d = min(0.999, (count + 1) / (count + 10))
    for i, learner in enumerate(model.learners):
        expected = [d * e + (1 - d) * t for e, t in zip(ema[i], theta[i])]
        for got, want in zip(helpers_train.values(learner.ema_network), expected):
            np.testing.assert_allclose(got, want, rtol=1e-5)
    new_ema = [[d * e + (1 - d) * t for e, t in zip(ema[i], theta[i])] for i in range(3)]
    mixed = [sum(c * new_ema[i][j] for i, c in enumerate(coefficients)) for j in range(len(g))]
    for got, want, old in zip(helpers_train.values(model.global_network), mixed, g):
        np.testing.assert_allclose(got, d * old + (1 - d) * want, rtol=1e-5)
    assert int(model.ema_updates.numpy()) == count + 1
    # The learners themselves are untouched by mixing.
    for learner, old in zip(model.learners, theta):
        for got, want in zip(helpers_train.values(learner.network), old):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("one", [0, 1, 2])
def test_weights_zero_and_one_are_exact(one):
    """w = (0, .., 1, .., 0): G follows learner `one` bit for bit (official truthiness bug)."""
    rng = np.random.default_rng(one)
    model = helpers_train.build_model(alpha=0.0)  # d = 0: G becomes exactly the mix of the EMAs
    helpers_train.set_known_weights(model, rng)
    coefficients = [0.0, 0.0, 0.0]
    coefficients[one] = 1.0
    model.mix(coefficients)
    # With alpha = 0 every EMA equals its learner, and G equals the chosen learner exactly.
    for got, want in zip(
        helpers_train.values(model.global_network),
        helpers_train.values(model.learners[one].network),
    ):
        np.testing.assert_array_equal(got, want)


def test_redistribution_copies_g_including_bn_and_keeps_momentum():
    rng = np.random.default_rng(3)
    model = helpers_train.build_model()
    helpers_train.set_known_weights(model, rng)
    for learner in model.learners:
        for m in learner.optimizer.momentums:
            m.assign(np.full(m.shape, 0.5, np.float32))
    model.redistribute()
    assert model.evaluated_networks()[generalist.GLOBAL] is model.global_network
    g = helpers_train.values(model.global_network)
    for learner in model.learners:
        for got, want in zip(helpers_train.values(learner.network), g):
            np.testing.assert_array_equal(got, want)
        for m in learner.optimizer.momentums:
            np.testing.assert_array_equal(m.numpy(), 0.5)


def test_train_step_runs_the_same_mixing_as_mix():
    """A scheduled train step = the learners' steps, then `mix` with the epoch's helpers_train.values."""
    rng = np.random.default_rng(11)
    stepped, reference = (
        helpers_train.build_model(random_start=False),
        helpers_train.build_model(random_start=False),
    )
    helpers_train.set_known_weights(stepped, rng)
    for a, b in zip(stepped.weights, reference.weights):
        b.assign(a)
    batch = next(iter(helpers_train.tiny_dataset(1)))
    stepped.set_schedule([0.2, 0.3, 0.5], redistributing=True)
    stepped.train_step(batch)
    reference.stop_mixing()
    reference.train_step(batch)
    reference.mix([0.2, 0.3, 0.5], redistribute=True)
    for a, b in zip(stepped.weights, reference.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_mixing_under_two_replicas_keeps_replicas_identical():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = helpers_train.build_model()
    helpers_train.set_known_weights(model, np.random.default_rng(7))
    model.mix([0.2, 0.3, 0.5], redistribute=True)
    for network in [model.global_network] + [learner.network for learner in model.learners]:
        for w in mixing.mixable_weights(network):
            replicas = strategy.experimental_local_results(w.value)
            assert len(replicas) == 2
            np.testing.assert_array_equal(replicas[0].numpy(), replicas[1].numpy())
