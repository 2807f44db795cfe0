"""Training precision: `--precision` as a Keras dtype policy, and float32 for whatever is measured.

Half precision (bf16, fp16) is a training speed-up only. What the project reports and serves
computes in float32: the exported G (`export`), the evaluation suite that attacks it, and the
final table of the exported and last G, because attack gradients taken in half precision are
blunted and overstate robustness. Validation during training (the per-epoch selection) runs in
the training precision: it is part of training, and what it picks is then measured in float32.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import keras

from generalist_tf import compat

# `--precision` -> Keras' global dtype policy (variables stay float32 under the mixed ones).
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Keras' global dtype policy of `precision` for the block (layers built in it keep it)."""
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(POLICIES[precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


@contextlib.contextmanager
def float32_compute(networks: Iterable[keras.Model]) -> Iterator[None]:
    """Every layer of `networks` computes in float32 for the block, then returns to its policy.

    The variables are float32 under every policy we use, so this changes only the compute dtype
    (and the casts it needs); functions traced inside the block compute in float32. A no-op for
    float32 networks.
    """
    saved = []
    for network in networks:
        for layer in compat.all_layers(network):
            if layer.dtype_policy.name != "float32":
                saved.append((layer, layer.dtype_policy))
                layer.dtype_policy = "float32"
    try:
        yield
    finally:
        for layer, policy in saved:
            layer.dtype_policy = policy
