"""`FitTimer`: `fit`'s wall time split into training, tracing, validation, set-up and teardown."""

import time
import types

import keras
import numpy as np
import pytest

from generalist_tf import fit_timer, timing


def test_phases_from_a_hand_made_clock(monkeypatch):
    """Three epochs (the first two validated) on a clock read at known times."""
    clock = iter([1.0, 3.0, 4.0, 5.0, 6.0, 7.0, 7.5, 8.0, 9.0, 11.0, 12.0])
    monkeypatch.setattr(fit_timer, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    phases = timing.Phases()
    timer = fit_timer.FitTimer(phases)
    for epoch, validated in enumerate((True, True, False)):
        timer.on_epoch_begin(epoch)
        if validated:
            timer.on_test_begin()
            timer.on_test_end()
        timer.on_epoch_end(epoch)
    timer.record(fit_start=0.0)
    assert timer.train_seconds == [3.0, 1.5, 2.0]
    assert phases.wall == pytest.approx(
        {
            "first validation": 1.0,
            "between epochs": 2.0,
            "validation": 0.5,
            "first epoch's extra (tracing)": 1.25,  # 3 - median(1.5, 2)
            "training epochs": 5.25,  # 6.5 - 3 + 1.75
            "fit set-up": 1.0,
            "fit teardown": 1.0,
        }
    )


def test_a_fit_without_epochs_records_nothing():
    phases = timing.Phases()
    fit_timer.FitTimer(phases).record(fit_start=0.0)
    assert phases.wall == {}


def test_a_real_fit_adds_every_phase():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    phases = timing.Phases()
    timer = fit_timer.FitTimer(phases)
    x, y = np.zeros((8, 4), np.float32), np.zeros((8, 2), np.float32)
    start = time.perf_counter()
    model.fit(x, y, epochs=2, batch_size=4, validation_data=(x, y), callbacks=[timer], verbose=0)
    timer.record(start)
    assert len(timer.train_seconds) == 2
    assert set(phases.wall) == {
        "first validation",
        "validation",
        "between epochs",
        "first epoch's extra (tracing)",
        "training epochs",
        "fit set-up",
        "fit teardown",
    }
    elapsed = time.perf_counter() - start
    # The phases partition fit's wall time: each epoch, validation, gap and the ends, once.
    assert sum(phases.wall.values()) == pytest.approx(elapsed, rel=0.05)
    assert sum(phases.wall.values()) <= elapsed
    assert phases.wall["training epochs"] > 0
