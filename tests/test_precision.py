"""Mixed precision: bf16 and fp16 train and evaluate on CPU; weights and mixing stay float32."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from generalist_tf import train
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
        assert json.load(f)["test"]["global/pgd_accuracy"] >= 0.0
    loaded = tf.saved_model.load(os.path.join(tmp_path, "export"))
    assert all(w.dtype == tf.float32 for w in loaded.weights)
    # The served (and attacked) network computes in float32: no half-precision op anywhere.
    assert half_precision_ops(loaded.signatures["serving_default"]) == []
    logits = loaded.signatures["serving_default"](images=tf.zeros((2, 8, 8, 1)))["logits"]
    assert logits.dtype == tf.float32


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
