"""The bench's markdown table: every timing, ratio and range of one run."""

from __future__ import annotations

from generalist_tf.experiments.bench_models import BF16_CAUSES
from generalist_tf.experiments.bench_settings import (
    BENCH_APGD_STEPS,
    BENCH_SQUARE_QUERIES,
    BENCH_STANDARD_EXAMPLES,
    CIFAR10_TEST_EXAMPLES,
    DIGITS,
    DIGITS_BATCH_SIZE,
    RESNET18,
    SMALL_CNN,
)
from generalist_tf.experiments.bench_timing import suffix


# --- the table ----------------------------------------------------------------------------------
def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{1e3 * value:.1f} ms" if value < 1.0 else f"{value:.2f} s"


def _ratio(result: dict, key: str) -> str:
    if key not in result:
        return "-"
    low, high = result["ratio_ranges"][key]
    text = f"{result[key]:.3g} ({low:.3g}-{high:.3g})"
    target = result["targets"].get(key)
    if target:
        text += f" {target['target']} {'met' if target['met'] else 'MISSED'}"
    return text


def format_table(result: dict) -> str:
    """The printed summary: medians per model, ratios with their paired range and target."""
    times = result["times_s"]
    machine = result["machine"]
    batch = result["settings"]["resnet18_batch_size"]
    small = result["settings"]["small_cnn_batch_size"]
    columns = [DIGITS] + ([SMALL_CNN] if small else []) + ([RESNET18] if batch else [])
    head = (
        [f"digits_cnn b{DIGITS_BATCH_SIZE}"]
        + ([f"small_cnn 28x28 b{small}"] if small else [])
        + ([f"resnet18 b{batch}"] if batch else [])
    )
    width = 40
    derived = result["floors"]

    def row(label, cells):
        return f"{label:<{width}}" + "".join(f"{cell:>{width}}" for cell in cells)

    def time_row(label, name):
        return row(label, [_seconds(times.get(f"{model}/{name}")) for model in columns])

    def ratio_row(label, key):
        return row(label, [_ratio(result, key if m == DIGITS else f"{m}/{key}") for m in columns])

    def derived_row(label, key, seconds=False):
        cells = []
        for m in columns:
            value = derived.get(f"{m}/{key}", derived.get(key if m == DIGITS else f"{m}/{key}"))
            cells.append("-" if value is None else _seconds(value) if seconds else f"{value:.3f}")
        return row(label, cells)

    floor_rows = []
    for precision in result["settings"]["precisions"]:
        sfx = suffix(precision)
        floor_rows += [
            f"the device's floor, {precision}: (K*a + 2t) / (K*a + t), a and t timed in the group",
            time_row(f"  Generalist-D incl. mixing, {precision}", f"step/generalist_d{sfx}"),
            time_row(f"  PGD-AT, {precision}", f"step/pgd_at{sfx}"),
            time_row(f"  t: standard training step, {precision}", f"step/standard{sfx}"),
            time_row(f"  K*a: the training attack, {precision}", f"attack/pgd{sfx}"),
            derived_row("  a: one attack iteration", f"attack_iteration_s{sfx}", seconds=True),
            ratio_row("  Generalist-D / PGD-AT", f"generalist_d_over_pgd_at{sfx}"),
            derived_row("  floor", f"floor{sfx}"),
            derived_row("  Generalist-D / PGD-AT over the floor", f"generalist_d_over_floor{sfx}"),
        ]
    if "bf16" in result["settings"]["precisions"]:
        floor_rows.append(
            row(
                "bf16 speedup (Generalist-D step fp32/bf16)",
                [_ratio(result, f"{m}/bf16_speedup") for m in columns],
            )
        )
    casts = result.get("bf16_casts", {})
    cause_rows = [
        f"where bf16 pays: one training pass (no update) at batch {DIGITS_BATCH_SIZE}, fp32 / bf16"
    ] + [
        f"  {case:<30} fp32 {_seconds(times.get(f'bf16_cause/{case}/fp32')):>9}  bf16 "
        f"{_seconds(times.get(f'bf16_cause/{case}/bf16')):>9}  speedup "
        f"{_ratio(result, f'bf16_cause/{case}/speedup'):>22}  {casts.get(case, '-')} casts"
        for case in BF16_CAUSES
        if f"bf16_cause/{case}/fp32" in times
    ]

    load = result["load_average_start"][0], result["load_average_end"][0]
    lines = [
        f"generalist_tf bench ({result['settings']['mode']}): {machine['cpu_count']} CPUs, "
        f"TF {machine['tensorflow']}, Keras {machine['keras']}, devices "
        f"{', '.join(machine['logical_devices'])}; load average {load[0]:.2f} -> {load[1]:.2f}",
        "median seconds per call over interleaved repeats; ratios: median ratio (range of the "
        "per-repeat ratios), target",
        row("", head),
        "PGD-10 l_inf, one call",
    ]
    auto = "XLA" if machine["jit_compile_auto_means_xla"] else "graph"
    for policy, meaning in (("false", "graph"), ("true", "XLA"), ("auto", f"default: {auto}")):
        lines.append(time_row(f"  ours, jit_compile={policy} ({meaning})", f"pgd/ours_{policy}"))
    lines += [
        time_row("  cleverhans as shipped (eager)", "pgd/cleverhans"),
        time_row("  cleverhans in tf.function", "pgd/cleverhans_tf_function"),
        ratio_row("  speedup vs cleverhans as shipped", "pgd_speedup_vs_cleverhans"),
        ratio_row(
            "  speedup vs cleverhans in tf.function", "pgd_speedup_vs_cleverhans_tf_function"
        ),
        "train step (compiled, distributed, 1 replica)",
        time_row("  Generalist-D incl. mixing (steps 2-4)", "step/generalist_d"),
        time_row("  Generalist-D without mixing", "step/generalist_d_no_mixing"),
        time_row("  Generalist-D, communication epoch", "step/generalist_d_communication"),
        time_row("  PGD-AT", "step/pgd_at"),
        time_row("  PGD-AT incl. its EMA and G", "step/pgd_at_with_ema"),
        ratio_row("  Generalist-D / PGD-AT", "generalist_d_over_pgd_at"),
        ratio_row("  Generalist-D w/o mixing / PGD-AT", "generalist_d_no_mixing_over_pgd_at"),
        ratio_row("  Generalist-D / PGD-AT incl. EMA", "generalist_d_over_pgd_at_with_ema"),
        time_row("  Generalist-D + clean-accuracy pass", "step/generalist_d_clean_accuracy"),
        ratio_row("  with / without that pass (opt-in)", "clean_accuracy_pass_cost"),
        *floor_rows,
        *cause_rows,
        row(
            "  FLOPs floor (K+2)/(K+1), retired target; FLOPs model",
            [
                f"{result['cost_model']['generalist_d_over_pgd_at_floor']:.3f}; "
                f"{result['cost_model']['generalist_d_over_pgd_at_flops']:.3f}"
            ],
        ),
        "mixing alone (Generalist.mix: steps 2-4 of Alg. 1)",
        time_row("  EMAs + G", "mixing/ema_and_global"),
        time_row("  EMAs + G + redistribution", "mixing/with_redistribution"),
        ratio_row("  share of the Generalist-D step", "mixing_fraction"),
        ratio_row("  share, communication epoch", "mixing_fraction_communication"),
        "replicas (reported only)",
        time_row("  Generalist-D on 2 logical devices", "step/generalist_d_2_replicas"),
        ratio_row("  2 replicas / 1 replica (time)", "two_replicas_over_one"),
        f"standard l_inf list on {BENCH_STANDARD_EXAMPLES} digits vs ART (APGD "
        f"{BENCH_APGD_STEPS} iterations, Square {BENCH_SQUARE_QUERIES} queries)",
        *[
            time_row(f"  {side} {attack}", f"standard/{side}_{attack}")
            for attack in ("apgd_ce_linf", "apgd_t_linf", "fab_t_linf", "square_linf")
            for side in ("ours", "art")
            if f"{DIGITS}/standard/{side}_{attack}" in times
        ],
        *[
            ratio_row(f"  speedup vs ART, {attack}", f"standard_{attack}_speedup_vs_art")
            for attack in ("apgd_ce_linf", "apgd_t_linf", "square_linf", "shared")
            if f"standard_{attack}_speedup_vs_art" in result
        ],
        "digits epoch: images per second",
    ]
    ips = result["images_per_second"]
    lines += [
        row(
            "  Generalist-D fit epoch (with mixing)",
            [f"{ips['digits_cnn/fit_generalist_d_epoch']:.0f}"],
        ),
        row("  input pipeline alone (steady state)", [f"{ips['digits_cnn/input_pipeline']:.0f}"]),
        row(
            "  input pipeline, fresh iterator",
            [f"{ips['digits_cnn/input_pipeline_fresh_iterator']:.0f}"],
        ),
        row("  pipeline / training", [_ratio(result, "pipeline_over_training")]),
    ]
    c = result["cost_model"]
    lines += [
        "cost model: ResNet-18 on CIFAR-10 (forward+backward = 3 forward; Generalist-D "
        f"{c['forward_passes_per_image_generalist_d']} forward passes/image, PGD-AT "
        f"{c['forward_passes_per_image_pgd_at']}; K={c['num_steps']})",
        f"  forward GFLOPs per 32x32 image: {c['resnet18_forward_gflops']:.3f}",
        f"  Generalist-D epoch ({c['train_images_per_epoch']} images): "
        f"{c['generalist_d_epoch_tflop']:.0f} TFLOP (+{c['validation_epoch_tflop']:.0f} validation)",
        f"  at {c['assumed_gpu_tflops']:g} TFLOP/s sustained ({c['assumed_gpu']}): "
        f"{c['generalist_d_epoch_gpu_seconds']:.0f} s/epoch, {c['epochs']} epochs "
        f"{c['generalist_d_run_gpu_hours']:.2f} h ({c['generalist_d_run_with_validation_gpu_hours']:.2f} h "
        "with per-epoch validation)",
    ]
    lines.append(
        f"  standard AutoAttack, both norms, {CIFAR10_TEST_EXAMPLES} test images: "
        f"{sum(c['standard_autoattack_passes_per_image_per_norm'].values())} forward passes per "
        f"image and norm (upper bound), {c['standard_autoattack_cifar10_test_tflop']:.0f} TFLOP, "
        f"{c['standard_autoattack_cifar10_test_gpu_hours']:.2f} h (estimate)"
    )
    if "resnet18_measured_gflops_per_second" in c:
        lines.append(
            f"  this machine: {c['resnet18_measured_gflops_per_second']:.1f} GFLOP/s (model FLOPs "
            "/ measured time of the ResNet-18 Generalist-D step)"
        )
    met = [k for k, t in result["targets"].items() if t["met"]]
    missed = [k for k, t in result["targets"].items() if not t["met"]]
    lines.append(f"targets met: {', '.join(met) or 'none'}; missed: {', '.join(missed) or 'none'}")
    lines.append(f"wall time {result['wall_seconds']:.0f} s")
    lines += [f"skipped: {note}" for note in result.get("skipped", [])]
    return "\n".join(lines)
