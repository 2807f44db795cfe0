"""The one compile dispatch of every attack: TF graph mode or XLA, per device, one trace per key.

Every attack loop is wrapped once by `compiled`. Calling the wrapper with a compile policy picks
the graph-mode or the XLA `tf.function`; the model's compute dtype is part of the trace key
(`trace_key`), and budgets enter as float32 tensors (`scalar`), so one trace serves every epsilon
and step size: only the norm, the loss and the exact step count shape the graph.

Compile policy: `auto` compiles with XLA where an accelerator is present and uses TF graph mode
on CPU, where XLA's convolutions run PGD about 3x slower than TF's oneDNN kernels (measured on a
90k-parameter CNN, batch 128, PGD-10).
"""

from __future__ import annotations

import tensorflow as tf

from generalist_tf.attacks.budget import JIT_POLICIES


def resolve_jit_compile(policy: str | bool) -> bool:
    """Whether to compile with XLA: `auto` means yes on GPU/TPU and no on CPU.

    Raises:
      ValueError: `policy` is not one of `JIT_POLICIES` (or a bool).
    """
    if isinstance(policy, bool):
        return policy
    if policy not in JIT_POLICIES:
        raise ValueError(f"--jit_compile must be one of {JIT_POLICIES}, got {policy!r}")
    if policy == "auto":
        return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    return policy == "true"


def trace_key(model) -> str | None:
    """The model's compute dtype, part of every compiled attack's trace key.

    `tf.function` keys its traces on the model object, not on the dtype policy its layers had
    when traced: without this key, a network traced in bf16 during training would be attacked
    by that bf16 trace after `precision.float32_compute` switched it to float32.
    """
    return getattr(model, "compute_dtype", None)


def scalar(value) -> tf.Tensor:
    """A budget (epsilon, step size, ...) as a float32 tensor: it does not retrace the attack."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.cast(value, tf.float32)
    return tf.constant(float(value), tf.float32)


def compiled(loop):
    """`loop(model, *args)` compiled twice; returns `run(jit_compile, model, *args)`."""

    def keyed(compute_dtype, model, *args):
        del compute_dtype  # Part of the trace key only.
        return loop(model, *args)

    graph = tf.function(keyed, jit_compile=False)
    xla = tf.function(keyed, jit_compile=True)

    def run(jit_compile, model, *args):
        function = xla if resolve_jit_compile(jit_compile) else graph
        return function(trace_key(model), model, *args)

    run.__doc__ = loop.__doc__
    run.graph, run.xla = graph, xla  # For tests: their tracing counts.
    return run
