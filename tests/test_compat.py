"""The Keras/TF workarounds of `generalist_tf.compat`: upstream still needs them, and they work.

Each upstream test reproduces the behaviour on a plain Keras model; when it stops failing,
upstream has changed and the workaround (and this test) should go.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from generalist_tf import compat, data, experiment
from tests.helpers_train import config_from, two_replica_strategy

UNEVEN = 127  # one partial batch: 64 + 63 examples on two replicas


def test_upstream_keras_still_merges_the_first_batch_with_an_elementwise_mean():
    with two_replica_strategy().scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.zeros((UNEVEN, 4), np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(UNEVEN, np.int32))).batch(256)
    try:
        model.evaluate(ds, verbose=0)
    except tf.errors.InvalidArgumentError as error:
        assert "AddN" in str(error)
    else:
        pytest.fail(
            "Keras now evaluates an uneven first batch on 2 replicas: "
            "remove compat.first_replica_batch and KerasLoopFixes._maybe_symbolic_build"
        )


def test_upstream_keras_n_step_loop_still_fails_on_two_replicas():
    """keras-team/keras#19246, worked around by `compat.KerasLoopFixes.make_train_function`."""
    with two_replica_strategy().scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        model.compile(
            loss="sparse_categorical_crossentropy", optimizer="sgd", steps_per_execution=2
        )
    ds = tf.data.Dataset.from_tensor_slices(
        (np.zeros((64, 4), np.float32), np.zeros(64, np.int32))
    ).batch(16)
    try:
        model.fit(ds, epochs=1, verbose=0)
    except tf.errors.InvalidArgumentError as error:
        assert "Placeholder" in str(error)
    else:
        pytest.fail(
            "Keras' N-step loop now trains on 2 replicas: remove "
            "compat.KerasLoopFixes.make_train_function and evaluate_one_step"
        )


def build(strategy, cfg, arrays):
    cfg = cfg.replace(steps_per_epoch=4)
    return experiment.build_experiment(cfg, strategy, arrays=arrays, checkpointing=False).model


def test_uneven_evaluation_batches_give_the_one_device_numbers():
    cfg = config_from("smoke.cfg", workdir="/tmp/unused")
    # No random start: the PGD start is drawn per replica, so only then are the adversarial
    # examples the same on one and two devices.
    cfg = cfg.replace(
        eval_attack=dataclasses.replace(cfg.evaluation.eval_attack, random_start=False)
    )
    arrays = data.load("digits")
    one = build(tf.distribute.OneDeviceStrategy("/cpu:0"), cfg, arrays)
    stream = data.train_dataset(
        arrays, batch_size=cfg.optimisation.batch_size, seed=cfg.runtime.seed
    )
    one.fit(stream, epochs=1, steps_per_epoch=4, verbose=0)  # away from chance
    two = build(two_replica_strategy(), cfg, arrays)
    two.set_weights(one.get_weights())
    for batch_size in (256, 50):  # one partial batch; full batches then 27 = 14 + 13
        ds = data.eval_dataset(arrays.x_val, arrays.y_val, batch_size=batch_size)
        ds = ds.take(1) if batch_size == 256 else ds
        subset = data.eval_dataset(
            arrays.x_val, arrays.y_val, batch_size=batch_size, num_examples=UNEVEN
        )
        for split in (ds, subset):
            a = one.evaluate(split, return_dict=True, verbose=0)
            b = two.evaluate(split, return_dict=True, verbose=0)
            assert a.keys() == b.keys()
            for key in a:
                tolerance = 1e-5 if key.endswith("loss") else 0
                np.testing.assert_allclose(b[key], a[key], atol=tolerance, err_msg=key)
    assert 0.2 < a["global/clean_accuracy"] < 1  # trained past chance, not trivially equal


def test_a_built_generalist_skips_keras_symbolic_build(monkeypatch):
    """Every learner, EMA and G is built by its builder, so `fit` and `evaluate` (validation
    included) never run Keras' symbolic pre-build nor draw its probe batch."""
    from keras.src.trainers import trainer as keras_trainer

    calls = []
    original = keras_trainer.Trainer._symbolic_build
    monkeypatch.setattr(
        keras_trainer.Trainer,
        "_symbolic_build",
        lambda self, *a, **k: calls.append(1) or original(self, *a, **k),
    )
    cfg = config_from("smoke.cfg", workdir="/tmp/unused")
    arrays = data.load("digits")
    model = build(tf.distribute.OneDeviceStrategy("/cpu:0"), cfg, arrays)
    assert model._nothing_to_build()
    stream = data.train_dataset(
        arrays, batch_size=cfg.optimisation.batch_size, seed=cfg.runtime.seed
    )
    val = data.eval_dataset(arrays.x_val, arrays.y_val, batch_size=64, num_examples=64)
    model.fit(stream, epochs=2, steps_per_epoch=2, validation_data=val, verbose=0)
    model.evaluate(val, verbose=0)
    assert calls == []
    # An unbuilt layer brings the build back (Keras' own test, which ours mirrors).
    model.learners[0].built = False
    assert not model._nothing_to_build()


# --- fast: the shims and the strategy choice, in this process ------------------------------
def test_shim_reduces_scalar_logs_that_upstream_rejects():
    strategy = compat.MultiWorkerMirroredStrategy()  # no TF_CONFIG: one local worker
    per_replica = strategy.run(lambda: (tf.fill([4, 2], 3.0), tf.constant(2.0)))
    # Keras reduces scalar logs with axis=0 (tensorflow/tensorflow#72388).
    assert float(strategy.reduce("MEAN", per_replica[1], axis=0)) == 2.0
    # A batch tuple, as Keras' symbolic build passes it; non-scalars keep their axis.
    x, y = strategy.reduce("MEAN", per_replica, axis=None)
    assert x.shape == (4, 2) and float(y) == 2.0
    np.testing.assert_allclose(strategy.reduce("SUM", per_replica[0], axis=0), [12.0, 12.0])
    # When this stops raising, upstream is fixed: see compat's multi-worker notes to remove the shim.
    with pytest.raises(ValueError, match="Invalid reduction dimension 0"):
        tf.distribute.MultiWorkerMirroredStrategy().reduce("MEAN", per_replica[1], axis=0)


def _foreign_private_names() -> dict[str, list[str]]:
    """Private attributes (`x._name`) read in the package but defined by none of its modules."""
    import ast
    import glob
    import os

    root = os.path.dirname(compat.__file__)
    trees = {p: ast.parse(open(p).read()) for p in glob.glob(f"{root}/**/*.py", recursive=True)}
    ours = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                ours.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if not node.attr.startswith("_collective"):  # compat's own assignment
                    ours.add(node.attr)
    found = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            private = (
                node.attr.startswith("_") and not node.attr.startswith("__")
                if isinstance(node, ast.Attribute)
                else False
            )
            if private and node.attr not in ours:
                found.setdefault(os.path.relpath(path, root), []).append(node.attr)
    return found


def test_keras_and_tensorflow_private_names_are_read_only_in_compat():
    found = _foreign_private_names()
    assert set(found) <= {"compat.py"}, found
    listed = {name.rsplit(".", 1)[1] for name in compat.PRIVATE_NAMES}
    assert set(found["compat.py"]) <= listed, set(found["compat.py"]) - listed


def test_every_private_name_compat_reads_still_exists_where_it_is_read():
    """Fails when Keras or TF moves an internal: the accessor in compat must follow it."""
    import keras.src.backend.tensorflow.trainer as trainer

    with two_replica_strategy().scope():
        model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.BatchNormalization()])
        model.compile(loss="mse")
        model.fit(np.zeros((4, 4, 4, 1)), np.zeros((4, 4, 4, 1)), verbose=0)
    bn = model.layers[0]
    assert [layer.name for layer in compat.all_layers(model)][-1] == bn.name
    mean, variance = compat.batch_moments(bn, tf.ones((2, 4, 4, 1)))
    assert mean.shape == (1,) and float(variance[0]) == 0.0
    assert compat.reduction_axes(bn) == [0, 1, 2]
    assert compat.flatten_logs(model, {"loss": 1.0}) == 1.0
    assert compat.variable_index(model.optimizer, model.trainable_variables[1]) == 1
    assert model._distribute_strategy is not None and hasattr(model, "_eval_epoch_iterator")
    assert model._compile_loss is not None and hasattr(model, "_compile_metrics")
    assert callable(keras.Model._maybe_symbolic_build) and callable(trainer.reduce_per_replica)
    assert isinstance(tf.distribute.MirroredStrategy._collective_key_base, int)
    for name, checked in compat.PRIVATE_NAMES.items():
        assert checked.split()[0] in (keras.__version__, "TF"), (name, checked)
