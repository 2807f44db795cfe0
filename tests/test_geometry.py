"""Balls and steps (`attacks.geometry`): projections stay inside the ball and are the identity
inside it; `feasible` also stays in [0, 1]; steepest-ascent directions have unit norm."""

import numpy as np
import pytest
import tensorflow as tf

from generalist_tf.attacks import geometry

EPSILON = {"linf": 0.1, "l2": 0.5}


def _norms(delta, norm):
    flat = tf.reshape(delta, [delta.shape[0], -1]).numpy()
    return np.abs(flat).max(axis=1) if norm == "linf" else np.linalg.norm(flat, axis=1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_lands_in_the_ball_and_keeps_what_is_inside(norm):
    epsilon = EPSILON[norm]
    rng = np.random.default_rng(0)
    outside = tf.constant(rng.normal(size=(8, 4, 4, 1)).astype(np.float32))
    projected = geometry.project(outside, norm=norm, epsilon=epsilon)
    assert np.all(_norms(projected, norm) <= epsilon * (1 + 1e-5))
    assert np.all(_norms(outside, norm) > epsilon)  # so the projection had work to do
    inside = geometry.project(outside, norm=norm, epsilon=epsilon)
    inside = inside * 0.5  # strictly inside the ball
    np.testing.assert_allclose(
        geometry.project(inside, norm=norm, epsilon=epsilon).numpy(), inside.numpy(), rtol=1e-5
    )


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_feasible_points_are_in_the_ball_around_x_and_in_the_box(norm):
    epsilon = EPSILON[norm]
    rng = np.random.default_rng(1)
    x = tf.constant(rng.uniform(size=(8, 4, 4, 1)).astype(np.float32))
    candidate = x + tf.constant(rng.normal(scale=2.0, size=(8, 4, 4, 1)).astype(np.float32))
    result = geometry.feasible(x, candidate, norm=norm, epsilon=epsilon)
    assert np.all(_norms(result - x, norm) <= epsilon * (1 + 1e-5))
    assert result.numpy().min() >= 0.0 and result.numpy().max() <= 1.0


def test_ascent_directions_have_unit_norm():
    gradient = tf.constant([[3.0, -4.0, 0.0], [0.0, 0.5, -0.5]])
    np.testing.assert_array_equal(
        geometry.ascent_direction(gradient, norm="linf").numpy(), np.sign(gradient.numpy())
    )
    l2 = geometry.ascent_direction(gradient, norm="l2")
    np.testing.assert_allclose(np.linalg.norm(l2.numpy(), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(l2.numpy()[0], [0.6, -0.8, 0.0], rtol=1e-5)
