"""`CoupledSGD` (PyTorch-form momentum, coupled L2) and `EpochSchedule` (a rate per epoch)."""

import numpy as np
import pytest
import tensorflow as tf

from generalist_tf.algorithm import optimizers, schedules


def test_coupled_sgd_follows_the_pytorch_update_by_hand():
    lr, mu, wd = 0.1, 0.9, 0.01
    variable = tf.Variable([1.0, -2.0])
    optimizer = optimizers.CoupledSGD(lr, momentum=mu, l2=wd)
    theta, velocity = np.array([1.0, -2.0]), np.zeros(2)
    for gradient in ([0.5, 0.25], [-1.0, 2.0]):
        optimizer.apply_gradients([(tf.constant(gradient), variable)])
        velocity = mu * velocity + np.array(gradient) + wd * theta
        theta = theta - lr * velocity
        np.testing.assert_allclose(variable.numpy(), theta, rtol=1e-6)
    np.testing.assert_allclose(optimizer.momentums[0].numpy(), velocity, rtol=1e-6)


def test_coupled_sgd_checks_its_arguments_and_round_trips_its_config():
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.0"):
        optimizers.CoupledSGD(momentum=1.0)
    with pytest.raises(ValueError, match="l2 must be >= 0, got -0.1"):
        optimizers.CoupledSGD(l2=-0.1)
    config = optimizers.CoupledSGD(0.05, momentum=0.5, l2=1e-4).get_config()
    again = optimizers.CoupledSGD.from_config(config)
    assert (again.momentum, again.l2) == (0.5, 1e-4)


def test_epoch_schedule_is_constant_within_an_epoch_and_follows_the_schedule():
    piecewise = schedules.PiecewiseLinear(((0.0, 0.1), (0.5, 0.1), (1.0, 0.001)))
    rate = optimizers.EpochSchedule(piecewise, epochs=4, steps_per_epoch=3)
    for step in range(12):
        epoch = step // 3 + 1
        assert float(rate(step)) == pytest.approx(piecewise(epoch, 4), rel=1e-5), step
    assert float(rate(3)) == float(rate(5)) and float(rate(5)) != float(rate(6))
    assert rate.get_config() == {
        "points": [[0.0, 0.1], [0.5, 0.1], [1.0, 0.001]],
        "epochs": 4,
        "steps_per_epoch": 3,
        "scale": 1.0,
        "scale_from_epoch": 1,
    }


def test_epoch_schedule_scales_from_its_epoch_on():
    base = schedules.parse_points("0:0.02,1:0.01", flag="learning_rate")
    plain = optimizers.EpochSchedule(base, epochs=4, steps_per_epoch=2)
    scaled = optimizers.EpochSchedule(
        base, epochs=4, steps_per_epoch=2, scale=4.0, scale_from_epoch=2
    )
    for step in range(8):
        factor = 4.0 if step // 2 + 1 >= 2 else 1.0
        assert float(scaled(step)) == pytest.approx(factor * float(plain(step))), step
