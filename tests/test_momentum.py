"""MIM (`attacks.momentum`): XLA equals graph mode."""

import numpy as np

from generalist_tf.attacks import momentum


def test_mim_xla_equals_graph_mode(model, batch):
    x, y = batch
    runs = [
        momentum.mim(model, x, y, epsilon=0.1, step_size=0.025, num_steps=5, jit_compile=jit)
        for jit in ("false", "true")
    ]
    np.testing.assert_allclose(runs[0].numpy(), runs[1].numpy(), atol=1e-5)
