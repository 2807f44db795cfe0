"""The graph/XLA dispatch (`attacks.compile`): the jit policy and the trace key."""

import keras
import pytest

from generalist_tf.attacks import compile as attack_compile


def test_jit_policy_true_false_and_bools():
    assert attack_compile.resolve_jit_compile("true") is True
    assert attack_compile.resolve_jit_compile("false") is False
    assert attack_compile.resolve_jit_compile(True) is True
    assert attack_compile.resolve_jit_compile(False) is False


def test_an_unknown_jit_policy_is_refused_naming_the_flag():
    with pytest.raises(ValueError, match=r"--jit_compile must be one of .*got 'yes'"):
        attack_compile.resolve_jit_compile("yes")


def test_trace_key_is_the_compute_dtype():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    assert attack_compile.trace_key(model) == "float32"
    assert attack_compile.trace_key(lambda x: x) is None
