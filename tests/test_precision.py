"""Mixed precision: bf16 and fp16 train and evaluate on CPU; weights and mixing stay float32."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from generalist_tf import data, models, precision, train
from tests.helpers_train import config_from


def half_precision_ops(function) -> list[str]:
    """Ops of a concrete function (its nested functions included) with a bf16/fp16 dtype."""
    graph = function.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    half = {tf.bfloat16.as_datatype_enum, tf.float16.as_datatype_enum}
    return [node.name for node in nodes if any(value.type in half for value in node.attr.values())]


@pytest.mark.parametrize("precision", ["bf16", pytest.param("fp16", marks=pytest.mark.slow)])
def test_half_precision_trains_and_evaluates(tmp_path, precision):
    cfg = config_from(
        "smoke.cfg",
        precision=precision,
        epochs=2,
        num_steps=2,
        eval_num_steps=2,
        eval_examples=64,
        workdir=str(tmp_path),
        verbose=0,
    )
    results = train.train(cfg)
    # The global policy is restored after the run.
    assert keras.mixed_precision.dtype_policy().name == "float32"
    test = results["test"]
    assert np.isfinite(test["global/loss"])
    assert test["global/clean_accuracy"] > 0.3  # well above chance (0.1) after two epochs
    with open(os.path.join(tmp_path, "results.json")) as f:
        written = json.load(f)["test"]
    assert written == test  # the file holds what the run returned
    # The attack ran in the policy's run: it breaks examples the clean pass gets right.
    assert written["global/pgd_accuracy"] < written["global/clean_accuracy"]
    loaded = tf.saved_model.load(os.path.join(tmp_path, "export"))
    assert all(w.dtype == tf.float32 for w in loaded.weights)
    # The served (and attacked) network computes in float32: no half-precision op anywhere.
    assert half_precision_ops(loaded.signatures["serving_default"]) == []
    logits = loaded.signatures["serving_default"](images=tf.zeros((2, 8, 8, 1)))["logits"]
    assert logits.dtype == tf.float32
    # The final table is a float32 measurement: the exported G's clean accuracy in it is the
    # float32 export's, to the example (its attack runs in float32: the test below).
    arrays = data.load(cfg.data.dataset)
    examples = data.eval_dataset(
        arrays.x_test,
        arrays.y_test,
        batch_size=cfg.evaluation.eval_batch_size,
        num_examples=cfg.evaluation.table_examples,
    )
    serve = loaded.signatures["serving_default"]
    correct = sum(
        int(tf.reduce_sum(tf.cast(tf.argmax(serve(images=x)["logits"], 1) == y, tf.int32)))
        for x, y in examples
    )
    total = sum(len(y) for _, y in examples)
    assert test["best/clean_accuracy"] == pytest.approx(correct / total, abs=1e-6)


def test_the_final_evaluation_step_of_a_bf16_generalist_runs_in_float32():
    """`train` evaluates the table inside `precision.float32_compute`: there `test_step` (clean
    pass and PGD of every evaluated network) has no half-precision op; outside it, it has."""
    import generalist_tf as gtf

    with precision.dtype_policy("bf16"):
        model = gtf.build_generalist(
            lambda: models.build("digits_cnn", (8, 8, 1), 10),
            epochs=2,
            steps_per_epoch=1,
            linf_attack=gtf.Attack("linf", 0.1, 0.05, 2),
            communication=None,
        )
    model.set_evaluated(best=True, emas=True)
    x = tf.random.stateless_uniform((4, 8, 8, 1), seed=[0, 1])
    y = tf.constant([0, 1, 2, 3], tf.int64)

    def traced_test_step():
        return tf.function(model.test_step).get_concrete_function((x, y))

    assert half_precision_ops(traced_test_step())
    with precision.float32_compute(model.evaluated_networks().values()):
        assert half_precision_ops(traced_test_step()) == []
    assert half_precision_ops(traced_test_step())


def test_float32_compute_runs_a_bf16_network_in_float32_and_restores_it():
    with precision.dtype_policy("bf16"):
        network = models.build("digits_cnn", (8, 8, 1), 10)
    x = tf.random.stateless_uniform((4, 8, 8, 1), seed=[0, 1])
    assert network(x).dtype == tf.bfloat16
    with precision.float32_compute([network]):
        traced = tf.function(lambda images: network(images, training=False))
        concrete = traced.get_concrete_function(x)
        assert half_precision_ops(concrete) == []
        assert network(x).dtype == tf.float32
    assert network(x).dtype == tf.bfloat16
    assert half_precision_ops(tf.function(lambda i: network(i)).get_concrete_function(x))


def test_precision_auto_detects_native_bf16(monkeypatch):
    from generalist_tf import distribute

    assert distribute.fast_bf16({"avx2", "amx_bf16"})[0]
    assert distribute.fast_bf16({"avx512f", "avx512_bf16"})[0]
    fast, reason = distribute.fast_bf16({"avx", "avx2", "fma"})
    assert not fast and "emulated" in reason
    monkeypatch.setattr(distribute, "fast_bf16", lambda: (False, "test"))
    assert distribute.resolve_precision("auto") == "fp32"
    monkeypatch.setattr(distribute, "fast_bf16", lambda: (True, "test"))
    assert distribute.resolve_precision("auto") == "bf16"
    assert distribute.resolve_precision("fp16") == "fp16"
