"""APGD (`attacks.auto_pgd`): the paper's checkpoints, its exact step count, determinism and argument errors."""

import numpy as np
import pytest

from generalist_tf.attacks import auto_pgd
from tests import helpers_eval


def test_apgd_checkpoints_follow_the_paper():
    # p: 0, .22, .41, .57, .70, .80, .87, .93, .99 (Croce & Hein 2020, Sec. 3.2).
    assert auto_pgd.apgd_checkpoints(100) == (0, 22, 41, 57, 70, 80, 87, 93, 99)
    assert auto_pgd.apgd_checkpoints(1000)[:3] == (0, 220, 410)
    for steps in (1, 5, 10, 37):
        checkpoints = auto_pgd.apgd_checkpoints(steps)
        assert checkpoints[0] == 0 and checkpoints[-1] <= steps
        assert list(checkpoints) == sorted(set(checkpoints))


def test_apgd_takes_exactly_num_steps_per_run(batch):
    x, y = batch
    counting = helpers_eval.Counting(helpers_eval.fitted())
    auto_pgd.apgd(counting, x, y, norm="linf", epsilon=0.1, num_steps=13, restarts=2)
    # One clean call to find the classes, then per run: x, the random start and 13 steps.
    assert int(counting.calls.numpy()) == 1 + 2 * (2 + 13)


def test_apgd_is_deterministic_given_seed(model, batch):
    x, y = batch

    def run(seed):
        return auto_pgd.apgd(model, x, y, norm="linf", epsilon=0.1, num_steps=10, seed=seed)

    np.testing.assert_array_equal(run(3).numpy(), run(3).numpy())
    assert not np.array_equal(run(3).numpy(), run(4).numpy())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(norm="l3"), "norm"),
        (dict(loss="hinge"), "loss"),
        (dict(epsilon=-0.1), "epsilon"),
        (dict(num_steps=0), "num_steps"),
        (dict(restarts=0), "restarts"),
        (dict(target_classes=1.5), "target_classes"),
    ],
)
def test_apgd_rejects_invalid_arguments(batch, kwargs, message):
    x, y = batch
    arguments = dict(norm="linf", epsilon=0.1, num_steps=5)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        auto_pgd.apgd(None, x, y, **arguments)
