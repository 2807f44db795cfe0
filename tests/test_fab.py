"""FAB-T (`generalist_tf.attacks.fab`): the projection it is built on, and minimum norms on linear models.

On a linear classifier the smallest perturbation that changes the class from y is, per target t,
|z_y - z_t| / ||w_y - w_t||_q (q the dual norm: l_1 for l_inf, l_2 for l_2), and the untargeted
minimum is the smallest over t. FAB reaches the boundary in one step and then tracks it; with the
reference's overshoot eta = 1.05, bias alpha_max = 0.1 and backward step beta = 0.9, its best point
on a linear model is, exactly, 1 + 0.05 - 0.05 * 0.945 * (1 - 0.055 / 1.055) = 1.005213 times the
true distance (the second iterate; later ones overshoot more), when the pixel box does not bind.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from generalist_tf.attacks import fab

# The second FAB iterate on a linear model, as a multiple of the distance (module docstring).
LINEAR_RATIO = 1.05 - 0.05 * 0.945 * (1 - 0.055 / 1.055)


def _linear_model(rng, num_classes=10, side=8):
    dim = side * side
    weights = (rng.normal(size=(dim, num_classes)) * 0.05).astype(np.float32)
    bias = (rng.normal(size=num_classes) * 0.1).astype(np.float32)
    inputs = keras.Input((side, side, 1))
    dense = keras.layers.Dense(num_classes)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    dense.set_weights([weights, bias])
    return model, weights, bias


@pytest.mark.parametrize("norm, dual", [("linf", 1), ("l2", 2)])
def test_distance_on_a_linear_model_is_the_closed_form(norm, dual):
    rng = np.random.default_rng(0)
    model, weights, bias = _linear_model(rng)
    # Pixels in [0.4, 0.6] and distances of about 0.1 (l_inf) / 0.6 (l_2): the box never binds.
    x = (0.4 + 0.2 * rng.random((24, 8, 8, 1))).astype(np.float32)
    logits = x.reshape(len(x), -1) @ weights + bias
    y = logits.argmax(axis=1)
    expected = np.array(
        [
            min(
                (logits[i, y[i]] - logits[i, t])
                / np.linalg.norm(weights[:, t] - weights[:, y[i]], ord=dual)
                for t in range(10)
                if t != y[i]
            )
            for i in range(len(x))
        ]
    )
    found, distance = fab.minimal_adversarial(model, x, y, norm=norm, num_steps=100)
    ratio = distance.numpy() / expected
    np.testing.assert_allclose(ratio, LINEAR_RATIO, atol=1e-3)
    predicted = model(found).numpy().argmax(axis=1)
    assert (predicted != y).all()
    delta = (found.numpy() - x).reshape(len(x), -1)
    measured = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    np.testing.assert_allclose(measured, distance.numpy(), rtol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_reaches_the_plane_with_the_smallest_step(norm):
    rng = np.random.default_rng(1)
    w = tf.constant(rng.normal(size=(6, 50)), tf.float32)
    c = tf.constant(rng.normal(size=6) * 0.1, tf.float32)
    wide = tf.fill([6, 50], 10.0)
    d = fab.project_onto_hyperplane(w, c, -wide, wide, norm).numpy()
    # With a box that does not bind: -c w / |w|_2^2 (l_2) and -c sign(w) / |w|_1 (l_inf).
    w_, c_ = w.numpy(), c.numpy()[:, None]
    if norm == "l2":
        expected = -c_ * w_ / np.sum(w_**2, axis=1, keepdims=True)
    else:
        expected = -c_ * np.sign(w_) / np.sum(np.abs(w_), axis=1, keepdims=True)
    np.testing.assert_allclose(d, expected, rtol=1e-4, atol=1e-7)
    # A tight box: the step stays inside it and still reaches the plane (w.d = -c).
    lower, upper = -0.05 * np.ones((6, 50), np.float32), 0.05 * np.ones((6, 50), np.float32)
    d = fab.project_onto_hyperplane(w, c, lower, upper, norm).numpy()
    assert (d >= lower - 1e-7).all() and (d <= upper + 1e-7).all()
    np.testing.assert_allclose(np.sum(w_ * d, axis=1), -c.numpy(), rtol=1e-4, atol=1e-6)


def test_fab_t_returns_x_outside_epsilon_and_misclassified_points_at_zero_distance():
    rng = np.random.default_rng(2)
    model, _, _ = _linear_model(rng)
    x = (0.4 + 0.2 * rng.random((16, 8, 8, 1))).astype(np.float32)
    y = model(x).numpy().argmax(axis=1)
    y_wrong = (y + 1) % 10
    _, distance = fab.minimal_adversarial(model, x, y_wrong, norm="l2", num_steps=5)
    np.testing.assert_array_equal(distance.numpy(), 0.0)
    tiny = fab.fab_t(model, x, y, norm="l2", epsilon=1e-4, num_steps=20)
    np.testing.assert_array_equal(tiny.numpy(), x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"norm": "l1"}, "norm must be one of"),
        ({"num_steps": 0}, "num_steps must be an integer >= 1"),
        ({"eta": 0.9}, "eta must be >= 1"),
        ({"beta": 1.5}, "beta must be in [0, 1]"),
        ({"restarts": 2}, "start_radius must be > 0"),
    ],
)
def test_fab_rejects_invalid_arguments(kwargs, message):
    rng = np.random.default_rng(3)
    model, _, _ = _linear_model(rng)
    x = np.full((2, 8, 8, 1), 0.5, np.float32)
    arguments = dict(norm="linf") | kwargs
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        fab.minimal_adversarial(model, x, np.zeros(2, np.int64), **arguments)
