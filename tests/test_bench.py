"""The bench's machinery in its tiny mode: every number present and sane, ratios consistent.

Timings belong to `python -m generalist_tf.experiments.bench`: no test here asserts a timing target, only that
each reported ratio is the ratio of the reported times, that each target flag agrees with its
value, and that the cost model counts FLOPs as derived by hand.
"""

import json
import math
import statistics

import keras
import pytest
from absl import flags

from generalist_tf.experiments import (
    bench,
    bench_costs,
    bench_models,
    bench_settings,
    bench_setup,
    bench_table,
    bench_timing,
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


def test_floor_ratio_by_hand():
    # K*a = 10 x 5 ms, t = 10 ms: (50 + 20) / (50 + 10).
    assert bench_timing.floor_ratio(0.05, 0.01) == pytest.approx(70 / 60)


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


def test_forward_flops_of_a_small_model_by_hand():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)  # 4x4x4 out
    x = keras.layers.Conv2D(6, 1)(x)  # 4x4x6 out
    logits = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, logits)
    by_hand = 2 * 4 * 4 * 3 * 3 * 1 * 4 + 2 * 4 * 4 * 1 * 1 * 4 * 6 + 2 * 6 * 10
    assert bench_costs.forward_flops(model) == by_hand


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


def test_standard_list_against_art_declares_paired_ratios():
    """The standard l_inf list vs ART (tiny budgets): every variant timed, the shared-list sums
    are the per-repeat sums of their three attacks, each ratio is art / ours."""
    from tests import helpers_eval

    arrays = helpers_eval.digits()
    rec = bench_timing.Recorder()
    network = helpers_eval.build_digits_cnn()
    x, y = arrays.x_test[:16], arrays.y_test[:16]
    assert bench_models.bench_standard_vs_art(
        rec, network, x, y, epsilon=0.1, apgd_steps=2, square_queries=4, repeats=2
    )
    prefix = f"{bench_settings.DIGITS}/standard"
    for side, attacks in (
        ("ours", ("apgd_ce_linf", "apgd_t_linf", "fab_t_linf", "square_linf")),
        ("art", ("apgd_ce_linf", "apgd_t_linf", "square_linf")),
    ):
        for attack in attacks:
            assert len(rec.samples[f"{prefix}/{side}_{attack}"]) == 2
        shared = [rec.samples[f"{prefix}/{side}_{a}"] for a in attacks if a != "fab_t_linf"]
        assert rec.samples[f"{prefix}/{side}_shared"] == pytest.approx(
            [sum(parts) for parts in zip(*shared)]
        )
    ratios, medians = rec.ratio_values(), rec.medians()
    assert set(ratios) == {
        f"standard_{a}_speedup_vs_art" for a in ("apgd_ce_linf", "apgd_t_linf", "square_linf")
    } | {"standard_shared_speedup_vs_art"}
    for attack in ("apgd_t_linf", "shared"):
        expected = medians[f"{prefix}/art_{attack}"] / medians[f"{prefix}/ours_{attack}"]
        assert ratios[f"standard_{attack}_speedup_vs_art"] == pytest.approx(expected)


def test_forward_passes_cover_only_known_learners():
    assert bench_costs.forward_passes_per_image(("natural", "linf_pgd"), 10) == 36
    assert bench_costs.forward_passes_per_image(("linf_pgd",), 10) == 33
    with pytest.raises(ValueError, match="trades"):
        bench_costs.forward_passes_per_image(("trades",), 10)


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


def test_importing_bench_defines_no_flags():
    assert "quick" not in flags.FLAGS and "json" not in flags.FLAGS
