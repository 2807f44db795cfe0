"""The callbacks that schedule the mixing (communication epochs, logged schedule values), keep
the best G and stop on a NaN loss. The mixing itself is in test_generalist.py."""

import keras
import numpy as np
import pytest

from generalist_tf.algorithm import callbacks, schedules
from tests import helpers_train


def constant(value):
    return schedules.PiecewiseLinear(((0.0, value), (1.0, value)))


class _Recorder(keras.callbacks.Callback):
    """After each epoch: whether every learner equals G bit for bit, and the epoch's logs."""

    def __init__(self):
        super().__init__()
        self.equal, self.logs = [], []

    def on_epoch_end(self, epoch, logs=None):
        g = helpers_train.values(self.model.global_network)
        self.equal.append(
            all(
                all(np.array_equal(a, b) for a, b in zip(helpers_train.values(learner.network), g))
                for learner in self.model.learners
            )
        )
        self.logs.append(dict(logs))


@pytest.mark.parametrize(
    "mode, steps_per_execution",
    [
        ("every_batch", 1),
        # N = 3 compiles the N-step loop (slow on CPU); test_distributed checks N > 1 fast.
        pytest.param("every_batch", 3, marks=pytest.mark.slow),
        ("once_per_period", 1),
    ],
)
def test_fit_redistributes_exactly_in_communication_epochs(mode, steps_per_execution):
    """Real training steps: G reaches the learners only in communication epochs, once per
    step (every_batch) or once at the epoch's end, and every step updates the EMAs and G."""
    epochs, steps = 10, 3
    comm = schedules.Communication(start=0.5, period=2, mode=mode)
    # Equal weights 1/3; `fit` attaches the GeneralistCallback of these settings itself.
    model = helpers_train.build_model(communication=comm, epochs=epochs)
    model.compile(steps_per_execution=steps_per_execution)
    recorder = _Recorder()
    model.fit(
        helpers_train.tiny_dataset(steps),
        epochs=epochs,
        steps_per_epoch=steps,
        callbacks=[recorder],
        verbose=0,
    )
    # start = 0.5 * 10 = epoch 5; period 2: epochs 6, 8, 10 end with theta_i = G.
    assert recorder.equal == [e in (6, 8, 10) for e in range(1, epochs + 1)]
    per_epoch = steps if mode == "every_batch" else 1
    assert [logs["communication/redistributions"] for logs in recorder.logs] == [
        per_epoch if e in (6, 8, 10) else 0 for e in range(1, epochs + 1)
    ]
    assert int(model.ema_updates.numpy()) == epochs * steps
    # The mixing is off after fit: a bare train step leaves G and the counter alone.
    g = helpers_train.values(model.global_network)
    model.train_step(next(iter(helpers_train.tiny_dataset(1))))
    assert int(model.ema_updates.numpy()) == epochs * steps
    for got, want in zip(helpers_train.values(model.global_network), g):
        np.testing.assert_array_equal(got, want)


def test_callback_logs_schedule_values():
    epochs = 6
    model = helpers_train.build_model()
    mix = schedules.parse_mixing(
        "natural=0:0,2/3:0,1:0.6;linf_pgd=0:0.5,2/3:0.5,1:0.2;l2_pgd=0:0.5,2/3:0.5,1:0.2"
    )
    cb = callbacks.GeneralistCallback(mix, schedules.Communication(1.0, 6), epochs)
    cb.set_model(model)
    logs = {}
    cb.on_epoch_begin(4)  # epoch 5 of 6: t = 5/6, halfway from 2/3 to 1
    cb.on_epoch_end(4, logs)
    assert logs["mixing/natural"] == pytest.approx(0.3)
    assert logs["mixing/linf_pgd"] == pytest.approx(0.35)
    assert logs["learning_rate"] == pytest.approx(0.1)


def test_best_global_callback_keeps_best_validation_epoch():
    model = helpers_train.build_model()
    cb = callbacks.BestGlobalCallback("val_global/pgd_accuracy")
    cb.set_model(model)
    rng = np.random.default_rng(0)
    snapshots = {}
    for epoch, score in enumerate([0.2, 0.5, 0.4, 0.5]):
        helpers_train.set_known_weights(model, rng)
        snapshots[epoch + 1] = helpers_train.values(model.global_network)
        cb.on_epoch_end(epoch, {"val_global/pgd_accuracy": score, "val_global/clean_accuracy": 0.9})
    assert int(model.best_epoch.numpy()) == 2  # ties keep the earlier epoch
    for got, want in zip(helpers_train.values(model.best_network), snapshots[2]):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="select_metric"):
        cb.on_epoch_end(5, {"val_other": 1.0, "val_global/clean_accuracy": 0.9})


def epoch_logs(clean, pgd):
    return {"val_global/clean_accuracy": clean, "val_global/pgd_accuracy": pgd}


@pytest.mark.parametrize(
    "floor, history, best",
    [
        # The official rule: clean + PGD. PGD alone would pick epoch 1 (0.6).
        (0.0, [(0.70, 0.60), (0.85, 0.50), (0.80, 0.52)], 2),
        # With a floor: only epochs at or above it compete (epoch 3 is the best of those).
        (0.82, [(0.70, 0.60), (0.90, 0.30), (0.83, 0.45)], 3),
        # No epoch reaches the floor (a baseline under Generalist's floor): best sum anyway.
        (0.95, [(0.70, 0.60), (0.85, 0.50), (0.80, 0.52)], 2),
    ],
)
def test_clean_plus_pgd_rule_with_a_clean_floor(floor, history, best):
    model = helpers_train.build_model()
    cb = callbacks.BestGlobalCallback("clean_plus_pgd", clean_floor=floor)
    cb.set_model(model)
    rng = np.random.default_rng(0)
    snapshots = {}
    for epoch, (clean, pgd) in enumerate(history):
        helpers_train.set_known_weights(model, rng)
        snapshots[epoch + 1] = helpers_train.values(model.global_network)
        cb.on_epoch_end(epoch, epoch_logs(clean, pgd))
    assert int(model.best_epoch.numpy()) == best
    for got, want in zip(helpers_train.values(model.best_network), snapshots[best]):
        np.testing.assert_array_equal(got, want)


def test_unvalidated_epochs_are_skipped_by_the_selection():
    model = helpers_train.build_model()
    cb = callbacks.BestGlobalCallback("clean_plus_pgd")
    cb.set_model(model)
    cb.on_epoch_end(0, epoch_logs(0.5, 0.2))
    cb.on_epoch_end(1, {"natural/loss": 0.1})  # --val_every: no validation this epoch
    cb.on_epoch_end(2, epoch_logs(0.6, 0.2))
    assert int(model.best_epoch.numpy()) == 3
    assert float(model.best_score.numpy()) == pytest.approx(2.8)  # 0.8 + 2 (floor 0 reached)


def test_nan_guard_names_the_loss_and_step():
    guard = callbacks.NaNGuard()
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(0, {"natural/loss": 1.0})
    with pytest.raises(
        callbacks.TrainingDivergedError, match=r"linf_pgd/loss is nan at epoch 3 step 4"
    ):
        guard.on_train_batch_end(3, {"linf_pgd/loss": float("nan")})
