"""Interleaved timing: every compared variant once per repeat, medians, paired ratios, floors."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import tensorflow as tf
from absl import logging

from generalist_tf.experiments.bench_settings import DIGITS
from generalist_tf.precision import dtype_policy


# --- timing -------------------------------------------------------------------------------------
def block(outputs) -> None:
    """Waits until `outputs` (tensors, dicts of them, per-replica values) are computed."""
    for value in tf.nest.flatten(outputs, expand_composites=True):
        if isinstance(value, tf.Tensor):
            value.numpy()
    # GPU kernels run asynchronously; this waits for every device (cheap on CPU).
    tf.test.experimental.sync_devices()


def time_interleaved(
    variants: dict[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int,
    number: int | dict[str, int],
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Times compared variants repeat by repeat, in rotating order.

    Args:
      variants: name -> a function of no argument; its output is waited for (`block`).
      repeats: timed samples per variant.
      warmup: untimed calls per variant first (at least 1: the first call traces/compiles).
      number: calls per sample (or per variant name); a sample is their mean time.

    Returns:
      (samples, first_call): seconds per call of every sample, and of each variant's first call
      (tracing and compilation included).
    """
    numbers = number if isinstance(number, dict) else dict.fromkeys(variants, number)
    if repeats < 1 or warmup < 1 or min(numbers.values()) < 1:
        raise ValueError(
            f"repeats, warmup and number must be >= 1, got {repeats}, {warmup}, {number}"
        )
    first_call = {}
    for name, fn in variants.items():
        start = time.perf_counter()
        block(fn())
        first_call[name] = time.perf_counter() - start
        for _ in range(warmup - 1):
            block(fn())
    names = list(variants)
    samples = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = variants[name]
            start = time.perf_counter()
            for _ in range(numbers[name]):
                out = fn()
            block(out)
            samples[name].append((time.perf_counter() - start) / numbers[name])
    return samples, first_call


class Recorder:
    """Collects the samples of every timed variant, under `<model>/<group>/<variant>` names."""

    def __init__(self):
        self.samples: dict[str, list[float]] = {}
        self.first_call: dict[str, float] = {}
        self.ratios: dict[str, tuple[str, str]] = {}
        # model prefix -> (K, precisions) of a `bench_steps` group, for `floors`.
        self.floors: dict[str, tuple[int, tuple[str, ...]]] = {}

    def time(self, prefix: str, variants: dict, **kwargs) -> None:
        logging.info("timing %s: %s", prefix, ", ".join(variants))
        samples, first_call = time_interleaved(variants, **kwargs)
        for name in variants:
            self.samples[f"{prefix}/{name}"] = samples[name]
            self.first_call[f"{prefix}/{name}"] = first_call[name]

    def add(self, name: str, samples: list[float], first_call: float) -> None:
        """Records samples timed elsewhere (seconds per call)."""
        self.samples[name] = list(samples)
        self.first_call[name] = first_call

    def ratio(self, key: str, numerator: str, denominator: str) -> None:
        """Declares `key` = median time of `numerator` / median time of `denominator`."""
        self.ratios[key] = (numerator, denominator)

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(s) for name, s in self.samples.items()}

    def ratio_values(self) -> dict[str, float]:
        medians = self.medians()
        return {key: medians[a] / medians[b] for key, (a, b) in self.ratios.items()}

    def paired_ratio_medians(self) -> dict[str, float]:
        """Each ratio as the median of its per-repeat ratios (a second, paired estimate)."""
        return {
            key: statistics.median(x / y for x, y in zip(self.samples[a], self.samples[b]))
            for key, (a, b) in self.ratios.items()
        }

    def ratio_ranges(self) -> dict[str, list[float]]:
        """Min and max of the per-repeat (paired) ratios: how much load moved each ratio."""
        out = {}
        for key, (a, b) in self.ratios.items():
            paired = [x / y for x, y in zip(self.samples[a], self.samples[b])]
            out[key] = [min(paired), max(paired)]
        return out


def suffix(precision: str) -> str:
    """The name suffix of a precision's variants and keys: none for fp32, `_bf16` for bf16."""
    return "" if precision == "fp32" else f"_{precision}"


def in_policy(precision: str, fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` called under the precision's policy (its first call traces under it)."""
    if precision == "fp32":
        return fn

    def run():
        with dtype_policy(precision):
            return fn()

    return run


def floor_ratio(attack_seconds: float, step_seconds: float) -> float:
    """The lowest Generalist-D / PGD-AT step-time ratio this device allows: (K*a + 2t)/(K*a + t).

    `attack_seconds` is the training attack's time (K iterations of `a` each) and `step_seconds`
    the time `t` of one training pass (forward, backward, update) on the batch. Generalist-D adds
    one such pass (the natural learner) to PGD-AT's attack and pass; mixing is its only extra.
    """
    return (attack_seconds + 2.0 * step_seconds) / (attack_seconds + step_seconds)


def floors(rec: Recorder) -> dict[str, float]:
    """Per model and precision: `a`, `t`, the floor and Generalist-D/PGD-AT over it.

    Keys: `<model>/attack_iteration_s<sfx>` (a), `<model>/train_step_s<sfx>` (t),
    `<model>/floor<sfx>`, and `<name>generalist_d_over_floor<sfx>` (`<name>` empty for digits,
    as the other digits headline keys), sfx `suffix(precision)`; all from medians of one group.
    """
    medians, ratios, out = rec.medians(), rec.ratio_values(), {}
    for prefix, (k, precisions) in rec.floors.items():
        name = "" if prefix == DIGITS else f"{prefix}/"
        for precision in precisions:
            s = suffix(precision)
            attack = medians[f"{prefix}/attack/pgd{s}"]
            step = medians[f"{prefix}/step/standard{s}"]
            floor = floor_ratio(attack, step)
            out[f"{prefix}/attack_iteration_s{s}"] = attack / k
            out[f"{prefix}/train_step_s{s}"] = step
            out[f"{prefix}/floor{s}"] = floor
            out[f"{name}generalist_d_over_floor{s}"] = (
                ratios[f"{name}generalist_d_over_pgd_at{s}"] / floor
            )
    return out
