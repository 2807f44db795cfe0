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
from keras import ops


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

    def __init__(self, learning_rate=0.01, momentum=0.9, l2=0.0, name="coupled_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if l2 < 0.0:
            raise ValueError(f"weight decay must be >= 0, got {l2}")
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
        m = self.momentums[self._get_variable_index(variable)]
        self.assign(m, ops.cast(self.momentum, variable.dtype) * m + gradient)
        self.assign_sub(variable, learning_rate * m)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "l2": self.l2})
        return config
