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


def test_quick_bench_leaves_emulated_bf16_out_unless_asked():
    from generalist_tf.experiments import bench_settings

    amd = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
    xeon = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert not bench_settings.native_bf16(amd) and bench_settings.native_bf16(xeon)
    choose = bench_settings.include_bf16
    assert not choose(None, quick=True, gpu=False, native=False)  # --quick on this AMD EPYC
    assert choose(None, quick=True, gpu=False, native=True)
    assert choose(None, quick=True, gpu=True, native=False)
    assert choose(None, quick=False, gpu=False, native=False)  # the full run times it anyway
    assert choose(True, quick=True, gpu=False, native=False)  # --bf16
    assert not choose(False, quick=False, gpu=True, native=True)  # --nobf16
    fp32 = bench_settings.without_bf16(bench_settings.SETTINGS["quick"])
    assert fp32.precisions == ("fp32",) and not fp32.bf16_causes
