"""The trade-off library: interpolation, scoring ends, validation-only choice, BN, fine-tune."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from generalist_tf import tradeoff as frontier
from generalist_tf.algorithm import callbacks, mixing, schedules
from generalist_tf.attacks.budget import Attack
from tests import helpers_eval, helpers_train

ATTACK = Attack("linf", 0.1, 0.025, 3)


def test_interpolated_weights_are_the_numpy_convex_combination(ends):
    robust, natural = ends
    target = frontier.copy_network(robust)
    frontier.interpolate_into(target, robust, natural, 0.3)
    got = [w.numpy() for w in mixing.mixable_weights(target)]
    want = [
        0.3 * a.numpy() + 0.7 * b.numpy()
        for a, b in zip(mixing.mixable_weights(robust), mixing.mixable_weights(natural))
    ]
    assert any("moving_variance" in w.path for w in mixing.mixable_weights(target))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_end_points_score_as_the_two_networks(ends, split):
    robust, natural = ends
    validation, _ = split
    points = frontier.sweep(
        robust, natural, validation=validation, attack=ATTACK, lambdas=[0.0, 0.5, 1.0]
    )
    x, y = validation
    for point, network in ((points[0], natural), (points[-1], robust)):
        assert point.val_clean == frontier.accuracy(network, x, y)
        assert point.val_pgd == frontier.accuracy(network, x, y, attack=ATTACK)
    # The two ends differ, so the check above cannot pass by both being one network.
    assert (points[0].val_clean, points[0].val_pgd) != (points[-1].val_clean, points[-1].val_pgd)


def _points(*triples):
    return [frontier.Point(lam=w, val_clean=c, val_pgd=r) for w, c, r in triples]


def test_choose_reads_only_validation_scores():
    points = _points((0.0, 0.90, 0.10), (0.5, 0.85, 0.50), (1.0, 0.80, 0.60))
    # Test scores that would choose otherwise: a choice that read them picks lambda 0.
    for p, (tc, tr) in zip(points, ((0.99, 0.99), (0.10, 0.10), (0.10, 0.10))):
        p.test_clean, p.test_pgd = tc, tr
    assert frontier.choose(points, ("clean", 0.84)).lam == 0.5
    assert frontier.choose(points, ("robust", 0.55)).lam == 1.0
    with pytest.raises(ValueError, match=r"operating_point=clean:0.95: .*best reaches 0.9000"):
        frontier.choose(points, ("clean", 0.95))


def test_run_chooses_before_reading_the_test_split(ends, split, tmp_path):
    """An unreachable operating point fails after the validation sweep and before any test
    image is scored: a test split that raises when read proves it."""
    robust, natural = ends
    validation, _ = split

    class Unread:
        def __len__(self):
            raise AssertionError("the test split was read")

        def __getitem__(self, index):
            raise AssertionError("the test split was read")

    with pytest.raises(ValueError, match="operating_point=robust:1: no point reaches"):
        frontier.run(
            robust,
            natural,
            validation=validation,
            test=(Unread(), Unread()),
            attack=ATTACK,
            out=str(tmp_path),
            points=3,
            operating_point="robust:1.0",
        )


def test_run_writes_json_plot_and_operating_point(ends, split, tmp_path):
    robust, natural = ends
    validation, test = split
    record = frontier.run(
        robust,
        natural,
        validation=validation,
        test=test,
        attack=ATTACK,
        out=str(tmp_path),
        points=3,
        operating_point="clean:0.5",
        baselines={"baseline": (0.9, 0.5)},
    )
    saved = json.loads((tmp_path / frontier.FRONTIER_JSON).read_text())
    assert saved == json.loads(json.dumps(record))
    assert [p["lambda"] for p in saved["points"]] == [0.0, 0.5, 1.0]
    assert {"val_clean", "val_pgd", "test_clean", "test_pgd", "pareto"} <= set(saved["points"][0])
    assert (tmp_path / frontier.FRONTIER_PNG).stat().st_size > 0
    chosen = saved["operating_point"]
    exported = keras.models.load_model(str(tmp_path / "operating_point.keras"), compile=False)
    x, y = test
    assert frontier.accuracy(exported, x, y) == chosen["test_clean"]


@pytest.mark.parametrize(
    "text", ["clean", "clean:", "robust:0", "robust:1.5", "both:0.5", "clean:x"]
)
def test_bad_operating_point(text):
    with pytest.raises(ValueError, match="operating_point must be clean:A or robust:A"):
        frontier.parse_operating_point(text)


def test_other_architecture_refused(ends):
    robust, _ = ends
    other = helpers_train.bn_network()
    with pytest.raises(ValueError, match="natural does not share robust's architecture"):
        frontier.check_same_architecture(robust, other)


def test_pareto_and_gain():
    points = _points((0.0, 0.9, 0.1), (0.5, 0.8, 0.1), (1.0, 0.7, 0.6))
    assert frontier.pareto(points) == [True, False, True]
    curve = [(0.9, 0.1), (0.7, 0.6)]
    reference = [(0.88, 0.1), (0.6, 0.6)]
    assert frontier.clean_at(curve, 0.35) == pytest.approx(0.8)
    assert frontier.gain_at(curve, reference, 0.6) == pytest.approx(0.1)
    assert frontier.gain_at(curve, reference, 0.7) is None  # beyond both curves
    # Below a curve's least robust point, a more robust point of it already reaches its clean.
    assert frontier.clean_at([(0.9, 0.3), (0.8, 0.5)], 0.1) == pytest.approx(0.9)
    assert frontier.clean_at([(0.9, 0.5), (0.9, 0.3)], 0.4) == pytest.approx(0.9)


@pytest.mark.parametrize("frozen", [False, True])
def test_reestimated_batchnorm_is_the_mean_of_batch_statistics(frozen):
    """Also on a frozen network, as a run's EMAs and G are kept (it kept the reset 0 and 1)."""
    inputs = keras.Input((3,))
    bn = keras.layers.BatchNormalization(momentum=0.99)
    network = keras.Model(inputs, bn(inputs))
    network.trainable = not frozen
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32) * 3 + 1
    assert frontier.reestimate_batchnorm(network, x, batch_size=10, batches=4) == 1
    order = np.random.default_rng(0).permutation(40)
    batches = [x[order[k * 10 : (k + 1) * 10]] for k in range(4)]
    np.testing.assert_allclose(
        bn.moving_mean.numpy(), np.mean([b.mean(axis=0) for b in batches], axis=0), rtol=1e-5
    )
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), np.mean([b.var(axis=0) for b in batches], axis=0), rtol=1e-4
    )
    assert bn.momentum == 0.99 and bn.trainable == (not frozen)


def test_fine_tune_moves_a_copy_only(ends):
    robust, _ = ends
    before = [w.numpy().copy() for w in robust.weights]
    arrays = helpers_eval.digits()
    dataset = tf.data.Dataset.from_tensor_slices((arrays.x_train, arrays.y_train)).batch(32)
    tuned = frontier.fine_tune(robust, dataset.repeat(), steps=3, learning_rate=0.05)
    for w, b in zip(robust.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)
    assert any(not np.array_equal(t.numpy(), b) for t, b in zip(tuned.weights, before))
    with pytest.raises(ValueError, match="natural_learning_rate must be > 0"):
        frontier.fine_tune(robust, dataset, steps=1, learning_rate=0.0)


class _Learner:
    def __init__(self, name, network):
        self.name, self.ema_network = name, network


class _Model:
    def __init__(self, network):
        self.learners = [_Learner("natural", network), _Learner("linf_pgd", network)]
        self.learner_names = ("natural", "linf_pgd")


def test_free_window_kept_before_each_redistribution_only(tmp_path):
    """Period 2 from epoch 3 of 8: communication epochs 4, 6, 8; free windows end at 3, 5, 7."""
    callback = callbacks.FreeWindowCallback(
        str(tmp_path), schedules.Communication(start=0.375, period=2), epochs=8
    )
    callback.set_model(_Model(helpers_train.bn_network()))
    written = []
    for keras_epoch in range(8):
        callback.on_epoch_begin(keras_epoch)
        meta = tmp_path / "epoch.json"
        if meta.exists():
            written.append(json.loads(meta.read_text())["last_free_epoch"])
            meta.unlink()
    assert written == [3, 5, 7]
    assert sorted(os.listdir(tmp_path)) == ["linf_pgd.keras", "natural.keras"]
