"""The bench's table (`experiments.bench_table`) from a hand-made record: no timing is run."""

from generalist_tf.experiments import bench_table


def record() -> dict:
    """The smallest record `format_table` reads: digits only, fp32, two targets."""
    cost = {
        "generalist_d_over_pgd_at_floor": 12 / 11,
        "generalist_d_over_pgd_at_flops": 1.1,
        "forward_passes_per_image_generalist_d": 36,
        "forward_passes_per_image_pgd_at": 33,
        "num_steps": 10,
        "resnet18_forward_gflops": 1.1108,
        "train_images_per_epoch": 45_000,
        "generalist_d_epoch_tflop": 3600.0,
        "validation_epoch_tflop": 40.0,
        "assumed_gpu_tflops": 30.0,
        "assumed_gpu": "A100",
        "generalist_d_epoch_gpu_seconds": 120.0,
        "epochs": 100,
        "generalist_d_run_gpu_hours": 3.33,
        "generalist_d_run_with_validation_gpu_hours": 3.4,
        "standard_autoattack_passes_per_image_per_norm": {"apgd_ce": 300, "square": 5000},
        "standard_autoattack_cifar10_test_tflop": 257.0,
        "standard_autoattack_cifar10_test_gpu_hours": 0.0024,
    }
    return {
        "times_s": {
            "digits_cnn/pgd/ours_auto": 0.0123,
            "digits_cnn/pgd/cleverhans": 2.5,
            "digits_cnn/step/generalist_d": 0.05,
        },
        "machine": {
            "cpu_count": 2,
            "tensorflow": "2.x",
            "keras": "3.x",
            "logical_devices": ["/cpu:0", "/cpu:1"],
            "jit_compile_auto_means_xla": False,
        },
        "settings": {
            "mode": "tiny",
            "resnet18_batch_size": 0,
            "small_cnn_batch_size": 0,
            "precisions": ["fp32"],
        },
        "floors": {"floor": 1.05},
        "load_average_start": [1.5, 1.0, 1.0],
        "load_average_end": [2.25, 1.0, 1.0],
        "pgd_speedup_vs_cleverhans": 203.0,
        "mixing_fraction": 0.05,
        "ratio_ranges": {
            "pgd_speedup_vs_cleverhans": (150.0, 250.0),
            "mixing_fraction": (0.04, 0.06),
        },
        "targets": {
            "pgd_speedup_vs_cleverhans": {"target": ">= 1.3", "met": True},
            "mixing_fraction": {"target": "<= 0.03", "met": False},
        },
        "images_per_second": {
            "digits_cnn/fit_generalist_d_epoch": 900.4,
            "digits_cnn/input_pipeline": 90_000.0,
            "digits_cnn/input_pipeline_fresh_iterator": 30_000.0,
        },
        "cost_model": cost,
        "wall_seconds": 95.2,
    }


def line_with(table: str, start: str) -> str:
    (line,) = [line for line in table.splitlines() if line.startswith(start)]
    return line


def test_times_are_in_milliseconds_below_a_second_and_missing_ones_are_dashes():
    table = bench_table.format_table(record())
    assert line_with(table, "  ours, jit_compile=auto (default: graph)").endswith("12.3 ms")
    assert line_with(table, "  cleverhans as shipped (eager)").endswith("2.50 s")
    assert line_with(table, "  ours, jit_compile=true (XLA)").rstrip().endswith("-")
    assert line_with(table, "  floor").endswith("1.050")


def test_ratios_show_their_range_and_target_and_the_last_lines_sum_up():
    table = bench_table.format_table(record())
    assert line_with(table, "  speedup vs cleverhans as shipped").endswith(
        "203 (150-250) >= 1.3 met"
    )
    assert line_with(table, "  share of the Generalist-D step").endswith(
        "0.05 (0.04-0.06) <= 0.03 MISSED"
    )
    lines = table.splitlines()
    assert lines[0].startswith("generalist_tf bench (tiny): 2 CPUs") and "1.50 -> 2.25" in lines[0]
    assert lines[-2] == "targets met: pgd_speedup_vs_cleverhans; missed: mixing_fraction"
    assert lines[-1] == "wall time 95 s"
    assert "5300 forward passes per image and norm" in table
    assert "resnet18" not in lines[2]  # the header names only the models timed
