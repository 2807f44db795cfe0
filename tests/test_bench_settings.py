"""The bench's constants (`experiments.bench_settings`): targets and each mode's settings."""

import os

from generalist_tf.experiments import bench_settings


def test_a_target_is_met_on_its_side_of_the_threshold():
    at_least = bench_settings.Target(">=", 1.3, "speedup")
    at_most = bench_settings.Target("<=", 0.03, "fraction")
    assert at_least.met(1.3) and at_least.met(2.0) and not at_least.met(1.29)
    assert at_most.met(0.03) and at_most.met(0.0) and not at_most.met(0.031)
    assert str(at_least) == ">= 1.3" and str(at_most) == "<= 0.03"


def test_every_mode_names_itself_and_the_tiny_mode_skips_the_large_models():
    assert set(bench_settings.SETTINGS) == {"full", "quick", "tiny"}
    for mode, settings in bench_settings.SETTINGS.items():
        assert settings.mode == mode
        assert set(settings.policies) <= set(bench_settings.ALL_POLICIES), mode
        assert settings.repeats >= 2 and settings.warmup >= 1, mode
    tiny = bench_settings.SETTINGS["tiny"]
    assert tiny.resnet18_batch_size == tiny.small_cnn_batch_size == tiny.standard_repeats == 0


def test_the_flagfiles_exist_and_targets_and_reported_keys_are_disjoint():
    for flagfile in (
        bench_settings.DIGITS_FLAGFILE,
        bench_settings.CIFAR10_FLAGFILE,
        bench_settings.FASHION_FLAGFILE,
    ):
        assert os.path.isfile(os.path.join(bench_settings.ROOT, flagfile)), flagfile
    assert not set(bench_settings.TARGETS) & set(bench_settings.REPORTED)
