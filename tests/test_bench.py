"""The bench's machinery in its tiny mode: every number present and sane, ratios consistent.

Timings belong to `python -m generalist_tf.experiments.bench`: no test here asserts a timing target, only that
each reported ratio is the ratio of the reported times, that each target flag agrees with its
value, and that the cost model counts FLOPs as derived by hand.
"""

import json
import math
import statistics

import pytest
from absl import flags

from generalist_tf.experiments import (
    bench,
    bench_models,
    bench_settings,
    bench_setup,
    bench_table,
)

HEADLINE_KEYS = (
    "pgd_speedup_vs_cleverhans",
    "generalist_d_over_pgd_at",
    "mixing_fraction",
    "pipeline_over_training",
    "two_replicas_over_one",
    "resnet18_forward_gflops",
    "generalist_d_epoch_tflop",
    "generalist_d_over_pgd_at_floor",
    "generalist_d_over_floor",
    "generalist_d_over_floor_bf16",
)
# CIFAR ResNet-18 by hand, in multiply-adds: the 3x3 stem (3 -> 64 at 32x32), four 3x3 64 -> 64
# convs at 32x32, then per later stage (output side s = 16, 8, 4; width c = 128, 256, 512) one
# stride-2 3x3 conv c/2 -> c, three 3x3 c -> c and a 1x1 projection c/2 -> c; the 512 -> 10 dense.
RESNET18_MACS = (
    32 * 32 * 9 * 3 * 64
    + 4 * 32 * 32 * 9 * 64 * 64
    + sum(
        s * s * (9 * (c // 2) * c + 3 * 9 * c * c + (c // 2) * c)
        for s, c in ((16, 128), (8, 256), (4, 512))
    )
    + 512 * 10
)
RESNET18_FORWARD_GFLOPS = 2 * RESNET18_MACS / 1e9  # 1.1108


@pytest.fixture(scope="module")
def result():
    return bench.run(tiny=True)


def positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_headline_keys_are_positive_and_finite(result):
    for key in HEADLINE_KEYS:
        assert positive_finite(result.get(key)), f"{key}: {result.get(key)!r}"


def test_every_time_is_a_median_of_its_samples(result):
    settings = bench_settings.SETTINGS["tiny"]
    assert result["times_s"], "no time was measured"
    for name, median in result["times_s"].items():
        samples = result["samples_s"][name]
        assert all(positive_finite(s) for s in samples), (name, samples)
        assert median == statistics.median(samples), name
        assert positive_finite(result["first_call_s"][name]), name
        expected = settings.epoch_repeats if "/epoch/" in name else settings.repeats
        assert len(samples) == expected, (name, len(samples))


def test_every_ratio_is_the_ratio_of_the_reported_times(result):
    times = result["times_s"]
    assert set(HEADLINE_KEYS[:5]) <= set(result["ratio_definitions"])
    for key, (numerator, denominator) in result["ratio_definitions"].items():
        assert result[key] == pytest.approx(times[numerator] / times[denominator], rel=1e-12), key
        low, high = result["ratio_ranges"][key]
        assert 0 < low <= high and math.isfinite(high), (key, low, high)
        assert positive_finite(result["paired_ratio_medians"][key]), key


def test_images_per_second_follow_from_the_times(result):
    times, ips = result["times_s"], result["images_per_second"]
    training = ips["digits_cnn/fit_generalist_d_epoch"]
    pipeline = ips["digits_cnn/input_pipeline"]
    assert pipeline / training == pytest.approx(result["pipeline_over_training"], rel=1e-12)
    assert ips["digits_cnn/generalist_d_step"] == pytest.approx(
        bench_settings.DIGITS_BATCH_SIZE / times["digits_cnn/step/generalist_d"]
    )


def test_floor_follows_from_the_times_of_its_group(result):
    """a = attack time / K, t = standard step, floor = (K*a + 2t)/(K*a + t), overhead = the
    Generalist-D / PGD-AT ratio over it, for both precisions; each from the reported medians."""
    times, floors = result["times_s"], result["floors"]
    k = bench_setup.make_config(
        bench_settings.DIGITS_FLAGFILE, variant="pgd_at"
    ).attacks.linf_attack.num_steps
    for sfx in ("", "_bf16"):
        attack = times[f"digits_cnn/attack/pgd{sfx}"]
        t = times[f"digits_cnn/step/standard{sfx}"]
        assert floors[f"digits_cnn/attack_iteration_s{sfx}"] == pytest.approx(attack / k)
        floor = (attack + 2 * t) / (attack + t)
        assert floors[f"digits_cnn/floor{sfx}"] == pytest.approx(floor)
        assert 1.0 < floor < 2.0
        ratio = times[f"digits_cnn/step/generalist_d{sfx}"] / times[f"digits_cnn/step/pgd_at{sfx}"]
        assert result[f"generalist_d_over_floor{sfx}"] == pytest.approx(ratio / floor)
    assert result["targets"]["generalist_d_over_floor"]["threshold"] == 1.03
    assert result["reported"]["clean_accuracy_pass_cost"]["value"] == pytest.approx(
        times["digits_cnn/step/generalist_d_clean_accuracy"] / times["digits_cnn/step/generalist_d"]
    )
    assert "generalist_d_over_pgd_at" not in result["targets"]  # the FLOPs-floor target is retired


def test_bf16_cause_times_every_case_and_counts_its_casts(result):
    for case in bench_models.BF16_CAUSES:
        speedup = result[f"bf16_cause/{case}/speedup"]
        times = result["times_s"]
        assert speedup == pytest.approx(
            times[f"bf16_cause/{case}/fp32"] / times[f"bf16_cause/{case}/bf16"]
        )
        assert result["bf16_casts"][case] > 0  # mixed precision casts at the layer boundaries
    table = bench_table.format_table(result)
    assert "where bf16 pays" in table and "the device's floor, bf16" in table


def test_target_flags_agree_with_their_values(result):
    targets = result["targets"]
    assert set(bench_settings.TARGETS) <= set(targets)
    for key, entry in targets.items():
        target = bench_settings.TARGETS[key.split("/")[-1]]
        assert entry["value"] == result[key], key
        assert (entry["op"], entry["threshold"]) == (target.op, target.threshold), key
        if target.op == ">=":
            assert entry["met"] == (entry["value"] >= entry["threshold"]), key
        else:
            assert entry["met"] == (entry["value"] <= entry["threshold"]), key
    assert result["all_targets_met"] == all(entry["met"] for entry in targets.values())


def test_result_is_strict_json_with_machine_info(result):
    text = json.dumps(result, allow_nan=False)
    machine = json.loads(text)["machine"]
    assert machine["cpu_count"] >= 1 and machine["tensorflow"] and machine["logical_devices"]


def test_table_names_every_target(result):
    table = bench_table.format_table(result)
    last = [line for line in table.splitlines() if line.startswith("targets met:")]
    assert len(last) == 1
    for key in result["targets"]:
        assert key in last[0], key


def test_cost_model_of_resnet18(result):
    cost = result["cost_model"]
    assert result["resnet18_forward_gflops"] == pytest.approx(RESNET18_FORWARD_GFLOPS, rel=1e-12)
    k = cost["num_steps"]
    assert cost["forward_passes_per_image_generalist_d"] == 3 * (k + 2)
    assert cost["forward_passes_per_image_pgd_at"] == 3 * (k + 1)
    assert result["generalist_d_over_pgd_at_floor"] == pytest.approx((k + 2) / (k + 1))
    expected_tflop = (
        cost["train_images_per_epoch"] * (3 * (k + 2)) * RESNET18_FORWARD_GFLOPS * 1e9 / 1e12
    )
    assert result["generalist_d_epoch_tflop"] == pytest.approx(expected_tflop, rel=1e-3)
    assert cost["generalist_d_epoch_gpu_seconds"] == pytest.approx(
        result["generalist_d_epoch_tflop"] / bench_settings.ASSUMED_GPU_TFLOPS
    )


def test_standard_autoattack_estimate_by_hand(result):
    """Per image and norm: APGD-CE 100 x 3, APGD-T 9 x 100 x 3, FAB-T 9 x 100 x (3 + 1), Square
    5,000 forwards = 11,600; both norms on 10,000 CIFAR-10 test images with ResNet-18."""
    cost = result["cost_model"]
    passes = cost["standard_autoattack_passes_per_image_per_norm"]
    assert passes == {"apgd_ce": 300, "apgd_t": 2700, "fab_t": 3600, "square": 5000}
    tflop = 2 * 11_600 * 10_000 * RESNET18_FORWARD_GFLOPS * 1e9 / 1e12
    assert cost["standard_autoattack_cifar10_test_tflop"] == pytest.approx(tflop, rel=1e-9)
    assert cost["standard_autoattack_cifar10_test_gpu_hours"] == pytest.approx(
        tflop / bench_settings.ASSUMED_GPU_TFLOPS / 3600
    )
    assert "standard AutoAttack, both norms" in bench_table.format_table(result)


def test_importing_bench_defines_no_flags():
    assert "quick" not in flags.FLAGS and "json" not in flags.FLAGS


def test_the_table_says_what_was_skipped(result):
    note = "bf16 groups: this CPU has no native bf16"
    assert f"skipped: {note}" in bench_table.format_table({**result, "skipped": [note]})
    assert result["skipped"] == [] and "skipped:" not in bench_table.format_table(result)
