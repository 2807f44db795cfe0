"""The bench's timing (`experiments.bench_timing`): the floor ratio and interleaved timing."""

import pytest

from generalist_tf.experiments import (
    bench_timing,
)


def test_floor_ratio_by_hand():
    # K*a = 10 x 5 ms, t = 10 ms: (50 + 20) / (50 + 10).
    assert bench_timing.floor_ratio(0.05, 0.01) == pytest.approx(70 / 60)


def test_time_interleaved_rotates_the_order_and_counts_calls():
    calls = []
    variants = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples, first = bench_timing.time_interleaved(
        variants, repeats=3, warmup=2, number={"a": 1, "b": 2, "c": 1}
    )
    warm = ["a", "a", "b", "b", "c", "c"]
    assert calls[: len(warm)] == warm
    assert calls[len(warm) :] == ["a", "b", "b", "c"] + ["b", "b", "c", "a"] + ["c", "a", "b", "b"]
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert set(first) == set(variants)


def test_time_interleaved_rejects_empty_budgets():
    with pytest.raises(ValueError, match="got 0"):
        bench_timing.time_interleaved({"a": lambda: None}, repeats=0, warmup=1, number=1)
