"""Devices and strategies (`distribute`): the evaluation's one batch per replica."""

import tensorflow as tf

from generalist_tf import distribute
from tests import helpers_train


def test_map_batches_runs_each_batch_on_one_replica():
    strategy = helpers_train.two_replica_strategy()
    devices = []

    def batch(index):
        value = tf.identity(tf.constant([index, index]))
        devices.append((index, value.device))
        return value

    done = []
    results = distribute.map_batches(strategy, batch, 3, on_done=done.append)
    assert [r.tolist() for r in results] == [[0, 0], [1, 1], [2, 2]] and done == [2, 1]
    assert sorted(devices) == sorted(
        [
            (0, "/job:localhost/replica:0/task:0/device:CPU:0"),
            (1, "/job:localhost/replica:0/task:0/device:CPU:1"),
            (2, "/job:localhost/replica:0/task:0/device:CPU:0"),
        ]
    )
    assert distribute.eval_strategy(strategy) is strategy
    assert distribute.eval_strategy(tf.distribute.MirroredStrategy(["/cpu:0"])) is None
