"""One step of each learner against a hand-derived update on a tiny linear model.

The model is Flatten -> Dense, so the gradient of the mean cross-entropy is
dW = X^T (softmax(XW + b) - onehot(y)) / B, and the optimizer is the PyTorch-form SGD with
coupled L2: v <- mu v + g + wd W; W <- W - lr v. Adversarial inputs are fixed in advance (the
attacks have their own tests), so the check isolates loss, gradient, scaling and update.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from generalist_tf import attacks
from generalist_tf.algorithm import generalist, learners, optimizers
from tests import helpers_train

LR, MU, WD = 0.1, 0.9, 0.01
SHAPE, CLASSES, BATCH = (2, 2, 1), 3, 6


def tiny_network():
    inputs = keras.Input(SHAPE)
    logits = keras.layers.Dense(CLASSES)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, logits)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ce_grads(w, b, x, y):
    """Gradient of the mean CE of a linear softmax model (per example, then averaged)."""
    xf = x.reshape(len(x), -1).astype(np.float64)
    dz = softmax(xf @ w + b) - np.eye(CLASSES)[y]
    return xf.T @ dz / len(x), dz.sum(0) / len(x)


def per_example_ce(w, b, x, y):
    p = softmax(x.reshape(len(x), -1) @ w + b)
    return -np.log(p[np.arange(len(y)), y])


def kl_grads(w, b, x, x_adv):
    """Gradient of mean KL(p(x) || p(x_adv)) w.r.t. W and b (both passes depend on W)."""
    xf, xa = x.reshape(len(x), -1), x_adv.reshape(len(x), -1)
    pc, pa = softmax(xf @ w + b), softmax(xa @ w + b)
    kl = (pc * (np.log(pc) - np.log(pa))).sum(-1, keepdims=True)
    dzc = pc * (np.log(pc) - np.log(pa)) - pc * kl  # d KL / d clean logits
    dza = pa - pc  # d KL / d adversarial logits
    return (xf.T @ dzc + xa.T @ dza) / len(x), (dzc.sum(0) + dza.sum(0)) / len(x)


def expected_grads(task, w, b, x, inputs, y, beta=6.0):
    if task in ("natural", "linf_pgd", "l2_pgd", "msd"):
        return ce_grads(w, b, inputs, y)
    if task == "trades":
        gw, gb = ce_grads(w, b, x, y)
        kw, kb = kl_grads(w, b, x, inputs)
        return gw + beta * kw, gb + beta * kb
    x_linf, x_l2 = inputs
    if task == "avg":
        (aw, ab), (cw, cb) = ce_grads(w, b, x_linf, y), ce_grads(w, b, x_l2, y)
        return (aw + cw) / 2, (ab + cb) / 2
    assert task == "max"
    linf_worse = per_example_ce(w, b, x_linf, y) >= per_example_ce(w, b, x_l2, y)
    x_worst = np.where(linf_worse[:, None, None, None], x_linf, x_l2)
    return ce_grads(w, b, x_worst, y)


def make_learner(task):
    keras.utils.set_random_seed(1)
    network = tiny_network()
    ema = tiny_network()
    kwargs = {}
    if task in ("avg", "max", "msd"):
        kwargs["l2_attack"] = learners.Attack("l2", 0.5, 0.2, 3, random_start=False)
    attack = learners.Attack(
        "l2" if task == "l2_pgd" else "linf",
        0.5 if task == "l2_pgd" else 0.2,
        0.1,
        3,
        random_start=False,
    )
    learner = learners.LEARNERS[task](network, ema, attack=attack, jit_compile="false", **kwargs)
    learner.compile(optimizer=optimizers.CoupledSGD(LR, momentum=MU, l2=WD))
    learner.optimizer.build(network.trainable_variables)
    return learner


@pytest.mark.parametrize("task", sorted(learners.LEARNERS))
def test_two_steps_match_hand_derived_update(task):
    rng = np.random.default_rng(0)
    learner = make_learner(task)
    velocity_w = velocity_b = 0.0
    for _ in range(2):  # two steps: the second one checks the momentum buffer
        x = rng.uniform(0, 1, (BATCH, *SHAPE)).astype(np.float32)
        y = rng.integers(0, CLASSES, BATCH)
        inputs = learner.make_inputs(tf.constant(x), tf.constant(y))
        fixed = tf.nest.map_structure(lambda t: t.numpy(), inputs)
        learner.make_inputs = lambda *_: tf.nest.map_structure(tf.constant, fixed)
        w, b = (v.numpy().astype(np.float64) for v in learner.network.trainable_variables)
        gw, gb = expected_grads(task, w, b, x, fixed, y)
        velocity_w = MU * velocity_w + gw + WD * w
        velocity_b = MU * velocity_b + gb + WD * b
        logs = learner.train_step((tf.constant(x), tf.constant(y)))
        new_w, new_b = (v.numpy() for v in learner.network.trainable_variables)
        np.testing.assert_allclose(new_w, w - LR * velocity_w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(new_b, b - LR * velocity_b, rtol=1e-4, atol=1e-6)
        del learner.make_inputs  # back to the class hook for the next batch
    assert np.isfinite(float(logs["loss"]))
    assert ("adv_accuracy" in logs) == (task != "natural")


def test_only_the_stepping_learner_moves():
    natural, robust = make_learner("natural"), make_learner("linf_pgd")
    model = generalist.Generalist(
        [natural, robust],
        tiny_network(),
        tiny_network(),
        algorithm=helpers_train.algorithm_settings(tiny_network, ("natural", "linf_pgd")),
        eval_attack=learners.Attack("linf", 0.1, 0.05, 2),
    )
    before = {
        learner.name: [w.numpy().copy() for w in learner.network.weights]
        for learner in model.learners
    }
    ema_before = [w.numpy().copy() for w in robust.ema_network.weights]
    x = tf.random.uniform((BATCH, *SHAPE))
    y = tf.constant([0, 1, 2, 0, 1, 2])
    natural.train_step((x, y))
    for after, old in zip(robust.network.weights, before["linf_pgd"]):
        np.testing.assert_array_equal(after.numpy(), old)
    for after, old in zip(robust.ema_network.weights, ema_before):
        np.testing.assert_array_equal(after.numpy(), old)
    assert any(
        not np.array_equal(a.numpy(), o) for a, o in zip(natural.network.weights, before["natural"])
    )


def test_adversarial_inputs_are_made_in_inference_mode():
    """A BN network's moving statistics must not move while the attack runs."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(SHAPE)
    x = keras.layers.BatchNormalization(momentum=0.5)(keras.layers.Flatten()(inputs))
    network = keras.Model(inputs, keras.layers.Dense(CLASSES)(x))
    learner = learners.LinfPGDLearner(
        network, tiny_network(), attack=learners.Attack("linf", 0.3, 0.1, 5), jit_compile="false"
    )
    stats = [w.numpy().copy() for w in network.non_trainable_weights]
    learner.make_inputs(tf.random.uniform((BATCH, *SHAPE)) + 3.0, tf.zeros(BATCH, tf.int64))
    for w, old in zip(network.non_trainable_weights, stats):
        np.testing.assert_array_equal(w.numpy(), old)


def test_pgd_learner_attacks_its_own_network():
    learner = make_learner("linf_pgd")
    x = tf.random.stateless_uniform((BATCH, *SHAPE), seed=(1, 2))
    y = tf.constant([0, 1, 2, 2, 1, 0])
    expected = attacks.pgd(
        learner.network,
        x,
        y,
        norm="linf",
        epsilon=0.2,
        step_size=0.1,
        num_steps=3,
        random_start=False,
        jit_compile="false",
    )
    np.testing.assert_allclose(learner.make_inputs(x, y).numpy(), expected.numpy())
