"""The per-step mixing on known weights (EMA, interpolation, exact 0/1, redistribution) and the
callbacks that schedule it and keep the best G."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from generalist_tf.algorithm import callbacks, generalist, learners, mixing, optimizers, schedules

SHAPE, CLASSES = (2, 2, 1), 3
TASKS = ("natural", "linf_pgd", "l2_pgd")


def bn_network():
    """Dense + BatchNorm: the mixing must carry BN moving statistics too."""
    inputs = keras.Input(SHAPE)
    x = keras.layers.Dense(CLASSES)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.9)(x))


def build_model(alpha=0.999, random_start=True):
    attack = learners.Attack("linf", 0.1, 0.05, 1, random_start=random_start)
    base = []
    for task in TASKS:
        learner = learners.LEARNERS[task](bn_network(), bn_network(), attack=attack)
        learner.compile(optimizer=optimizers.CoupledSGD(0.1, momentum=0.9))
        learner.optimizer.build(learner.network.trainable_variables)
        base.append(learner)
    return generalist.Generalist(
        base, bn_network(), bn_network(), eval_attack=attack, ema_alpha=alpha
    )


def set_known_weights(model, rng):
    """Distinct random values in every floating weight of every network (BN stats included)."""
    networks = [model.global_network] + [
        n for learner in model.learners for n in (learner.network, learner.ema_network)
    ]
    for network in networks:
        for w in mixing.mixable_weights(network):
            w.assign(rng.normal(size=w.shape).astype(np.float32) + 2.0)


def values(network):
    return [w.numpy() for w in mixing.mixable_weights(network)]


def constant(value):
    return schedules.PiecewiseLinear(((0.0, value), (1.0, value)))


def test_mixable_weights_include_batchnorm_statistics():
    names = [w.path for w in mixing.mixable_weights(bn_network())]
    assert any("moving_mean" in n for n in names) and any("moving_variance" in n for n in names)


@pytest.mark.parametrize("count", [0, 5, 10_000])
def test_ema_and_three_learner_interpolation(count):
    rng = np.random.default_rng(count)
    model = build_model()
    set_known_weights(model, rng)
    model.ema_updates.assign(count)
    coefficients = [0.2, 0.3, 0.5]
    theta = [values(learner.network) for learner in model.learners]
    ema = [values(learner.ema_network) for learner in model.learners]
    g = values(model.global_network)
    model.mix(coefficients)
    d = min(0.999, (count + 1) / (count + 10))
    for i, learner in enumerate(model.learners):
        expected = [d * e + (1 - d) * t for e, t in zip(ema[i], theta[i])]
        for got, want in zip(values(learner.ema_network), expected):
            np.testing.assert_allclose(got, want, rtol=1e-5)
    new_ema = [[d * e + (1 - d) * t for e, t in zip(ema[i], theta[i])] for i in range(3)]
    mixed = [sum(c * new_ema[i][j] for i, c in enumerate(coefficients)) for j in range(len(g))]
    for got, want, old in zip(values(model.global_network), mixed, g):
        np.testing.assert_allclose(got, d * old + (1 - d) * want, rtol=1e-5)
    assert int(model.ema_updates.numpy()) == count + 1
    # The learners themselves are untouched by mixing.
    for learner, old in zip(model.learners, theta):
        for got, want in zip(values(learner.network), old):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("one", [0, 1, 2])
def test_weights_zero_and_one_are_exact(one):
    """w = (0, .., 1, .., 0): G follows learner `one` bit for bit (official truthiness bug)."""
    rng = np.random.default_rng(one)
    model = build_model(alpha=0.0)  # d = 0: G becomes exactly the mix of the EMAs
    set_known_weights(model, rng)
    coefficients = [0.0, 0.0, 0.0]
    coefficients[one] = 1.0
    model.mix(coefficients)
    # With alpha = 0 every EMA equals its learner, and G equals the chosen learner exactly.
    for got, want in zip(values(model.global_network), values(model.learners[one].network)):
        np.testing.assert_array_equal(got, want)


def test_redistribution_copies_g_including_bn_and_keeps_momentum():
    rng = np.random.default_rng(3)
    model = build_model()
    set_known_weights(model, rng)
    for learner in model.learners:
        for m in learner.optimizer.momentums:
            m.assign(np.full(m.shape, 0.5, np.float32))
    model.redistribute()
    g = values(model.global_network)
    for learner in model.learners:
        for got, want in zip(values(learner.network), g):
            np.testing.assert_array_equal(got, want)
        for m in learner.optimizer.momentums:
            np.testing.assert_array_equal(m.numpy(), 0.5)


def tiny_dataset(steps, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(steps * batch, *SHAPE)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=steps * batch)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()


class _Recorder(keras.callbacks.Callback):
    """After each epoch: whether every learner equals G bit for bit, and the epoch's logs."""

    def __init__(self):
        super().__init__()
        self.equal, self.logs = [], []

    def on_epoch_end(self, epoch, logs=None):
        g = values(self.model.global_network)
        self.equal.append(
            all(
                all(np.array_equal(a, b) for a, b in zip(values(learner.network), g))
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
    model = build_model()
    model.compile(steps_per_execution=steps_per_execution)
    mix = {t: constant(1 / 3) for t in TASKS}
    comm = schedules.Communication(start=0.5, period=2, mode=mode)
    recorder = _Recorder()
    model.fit(
        tiny_dataset(steps),
        epochs=epochs,
        steps_per_epoch=steps,
        callbacks=[callbacks.GeneralistCallback(mix, comm, epochs), recorder],
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
    g = values(model.global_network)
    model.train_step(next(iter(tiny_dataset(1))))
    assert int(model.ema_updates.numpy()) == epochs * steps
    for got, want in zip(values(model.global_network), g):
        np.testing.assert_array_equal(got, want)


def test_train_step_runs_the_same_mixing_as_mix():
    """A scheduled train step = the learners' steps, then `mix` with the epoch's values."""
    rng = np.random.default_rng(11)
    stepped, reference = build_model(random_start=False), build_model(random_start=False)
    set_known_weights(stepped, rng)
    for a, b in zip(stepped.weights, reference.weights):
        b.assign(a)
    batch = next(iter(tiny_dataset(1)))
    stepped.set_schedule([0.2, 0.3, 0.5], redistributing=True)
    stepped.train_step(batch)
    reference.stop_mixing()
    reference.train_step(batch)
    reference.mix([0.2, 0.3, 0.5], redistribute=True)
    for a, b in zip(stepped.weights, reference.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_callback_logs_schedule_values():
    epochs = 6
    model = build_model()
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
    model = build_model()
    cb = callbacks.BestGlobalCallback("val_global/pgd_accuracy")
    cb.set_model(model)
    rng = np.random.default_rng(0)
    snapshots = {}
    for epoch, score in enumerate([0.2, 0.5, 0.4, 0.5]):
        set_known_weights(model, rng)
        snapshots[epoch + 1] = values(model.global_network)
        cb.on_epoch_end(epoch, {"val_global/pgd_accuracy": score, "val_global/clean_accuracy": 0.9})
    assert int(model.best_epoch.numpy()) == 2  # ties keep the earlier epoch
    for got, want in zip(values(model.best_network), snapshots[2]):
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
    model = build_model()
    cb = callbacks.BestGlobalCallback("clean_plus_pgd", clean_floor=floor)
    cb.set_model(model)
    rng = np.random.default_rng(0)
    snapshots = {}
    for epoch, (clean, pgd) in enumerate(history):
        set_known_weights(model, rng)
        snapshots[epoch + 1] = values(model.global_network)
        cb.on_epoch_end(epoch, epoch_logs(clean, pgd))
    assert int(model.best_epoch.numpy()) == best
    for got, want in zip(values(model.best_network), snapshots[best]):
        np.testing.assert_array_equal(got, want)


def test_unvalidated_epochs_are_skipped_by_the_selection():
    model = build_model()
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


def test_mixing_under_two_replicas_keeps_replicas_identical():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build_model()
    set_known_weights(model, np.random.default_rng(7))
    model.mix([0.2, 0.3, 0.5], redistribute=True)
    for network in [model.global_network] + [learner.network for learner in model.learners]:
        for w in mixing.mixable_weights(network):
            replicas = strategy.experimental_local_results(w.value)
            assert len(replicas) == 2
            np.testing.assert_array_equal(replicas[0].numpy(), replicas[1].numpy())
