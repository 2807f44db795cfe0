"""The bench's groups (`experiments.bench_groups`): the epoch timer of the `fit` group.

The groups themselves time real steps (`tests/test_bench.py` runs them in the tiny bench)."""

import keras
import numpy as np

from generalist_tf.experiments import bench_groups


def test_epoch_timer_records_one_positive_time_per_epoch():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    timer = bench_groups.EpochTimer()
    x, y = np.zeros((8, 4), np.float32), np.zeros((8, 2), np.float32)
    model.fit(x, y, epochs=3, batch_size=4, callbacks=[timer], verbose=0)
    assert len(timer.seconds) == 3
    assert all(seconds > 0 for seconds in timer.seconds)
