"""Schedules as a fraction of training (`algorithm.schedules`): piecewise-linear weights, their
parsing and checks, and the communication epochs."""

import pytest

from generalist_tf.algorithm import schedules


def test_piecewise_linear_interpolates_and_is_constant_outside():
    schedule = schedules.parse_points("1/4:0,3/4:1", flag="--x")
    assert schedule(1, 8) == 0.0  # t = 1/8, before the first point
    assert schedule(4, 8) == pytest.approx(0.5)  # t = 1/2, halfway
    assert schedule(8, 8) == 1.0  # t = 1, after the last point
    assert str(schedule) == "0.25:0,0.75:1"


def test_bad_points_are_refused_naming_the_flag():
    with pytest.raises(ValueError, match=r"--beta must look like"):
        schedules.parse_points("0:1,x", flag="--beta")
    with pytest.raises(ValueError, match="strictly increasing"):
        schedules.PiecewiseLinear(((0.5, 1.0), (0.5, 0.0)))


def test_mixing_weights_must_sum_to_one_at_every_epoch():
    mixing = schedules.parse_mixing("a=0:1,1:0;b=0:0,1:1")
    assert schedules.mixing_weights(mixing, ["a", "b"], 5, 10) == pytest.approx([0.5, 0.5])
    schedules.check_mixing(mixing, ["a", "b"], 10, flag="--mixing")
    lopsided = schedules.parse_mixing("a=0:1,1:1;b=0:0,1:1")
    with pytest.raises(ValueError, match="sum to 1"):
        schedules.check_mixing(lopsided, ["a", "b"], 10, flag="--mixing")
    with pytest.raises(ValueError, match="one schedule per learner"):
        schedules.check_mixing(mixing, ["a", "c"], 10, flag="--mixing")


def test_communication_epochs():
    communication = schedules.Communication(start=0.5, period=2)
    epochs = [e for e in range(1, 11) if communication.is_communication_epoch(e, 10)]
    assert epochs == [6, 8, 10]


def test_check_scale_names_its_argument():
    schedules.check_scale(0.5, "natural_lr_scale")
    with pytest.raises(ValueError, match="natural_lr_scale must be > 0, got 0"):
        schedules.check_scale(0, "natural_lr_scale")
