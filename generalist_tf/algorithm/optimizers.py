"""SGD with momentum and coupled L2 weight decay, in the PyTorch form the paper trained with.

PyTorch's `SGD(momentum=mu, weight_decay=wd)` does

    g <- g + wd * theta            (coupled L2: the decay enters the momentum buffer)
    v <- mu * v + g
    theta <- theta - lr * v

Keras 3's `SGD` differs twice: its `weight_decay` is decoupled (theta -= lr * wd * theta, outside
the momentum), and its momentum buffer accumulates `lr * g`, which is the same only while the
learning rate is constant. The official schedule changes the rate every epoch after E/3, so we
implement the PyTorch form as a Keras optimizer; it inherits Keras' distribution handling
(gradients summed across replicas, one update per mirrored variable).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from generalist_tf import compat, defaults
from generalist_tf.algorithm import schedules
from generalist_tf.algorithm.schedules import PiecewiseLinear


class CoupledSGD(keras.optimizers.Optimizer):
    """SGD with PyTorch-form momentum and coupled L2 weight decay on every trained variable.

    Args:
      learning_rate: float or `LearningRateSchedule`.
      momentum: mu in [0, 1).
      l2: the coupled weight decay `wd` (applied to all variables it updates, BN and biases
        included, as in the official code).
      name: optimizer name.
      **kwargs: other `keras.optimizers.Optimizer` arguments (e.g. `loss_scale_factor`).
    """

    def __init__(
        self, learning_rate=0.01, momentum=defaults.MOMENTUM, l2=0.0, name="coupled_sgd", **kwargs
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        schedules.check_momentum(momentum)
        schedules.check_weight_decay(l2, "l2")
        self.momentum = momentum
        self.l2 = l2

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.l2:
            gradient = gradient + ops.cast(self.l2, variable.dtype) * variable
        m = self.momentums[compat.variable_index(self, variable)]
        self.assign(m, ops.cast(self.momentum, variable.dtype) * m + gradient)
        self.assign_sub(variable, learning_rate * m)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "l2": self.l2})
        return config


class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate that is a `PiecewiseLinear` function of the integer epoch.

    The optimizer's step counter is converted to the 1-indexed epoch `step // steps_per_epoch +
    1`, so the rate is constant within an epoch, as in the official code.
    """

    def __init__(
        self,
        schedule: PiecewiseLinear,
        *,
        epochs: int,
        steps_per_epoch: int,
        scale: float = 1.0,
        scale_from_epoch: int = 1,
    ):
        self.schedule = schedule
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        # From 1-indexed epoch `scale_from_epoch` on, the rate is multiplied by `scale` (the
        # natural learner's free windows, `natural_lr_scale`).
        self.scale = float(scale)
        self.scale_from_epoch = int(scale_from_epoch)

    def __call__(self, step):
        epoch = tf.cast(step, tf.int64) // self.steps_per_epoch + 1
        # `schedule(epoch, epochs)` on a tensor: the same interpolation inside the compiled step.
        t = tf.cast(epoch, tf.float32) / float(self.epochs)
        points = self.schedule.points
        value = tf.constant(points[0][1], tf.float32)
        for (f0, v0), (f1, v1) in zip(points, points[1:]):
            inside = v0 + (v1 - v0) * (t - f0) / (f1 - f0)
            value = tf.where(t > f0, tf.where(t <= f1, inside, v1), value)
        if self.scale != 1.0:
            value = tf.where(epoch >= self.scale_from_epoch, value * self.scale, value)
        return value

    def get_config(self):
        return {
            "points": [list(p) for p in self.schedule.points],
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "scale": self.scale,
            "scale_from_epoch": self.scale_from_epoch,
        }
