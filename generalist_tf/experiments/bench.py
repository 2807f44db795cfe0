"""Speed of one machine: PGD vs cleverhans, Generalist-D vs PGD-AT, mixing, input, replicas, FLOPs.

Command:  python -m generalist_tf.experiments.bench [--quick] [--json=PATH]
Hardware: any; on a CPU-only machine the CPU is split into 2 logical devices at start (for the
  1-vs-2 replica row), on a GPU machine it runs unchanged (there `auto` means XLA).
Expected time on the 2-core CPU of this project, shared with other jobs (load average 2-3):
  --quick about 4 minutes (measured 224 s), the full run about 8 minutes (ResNet-18 at batch 16,
  with XLA, dominates). Expect ratios to move by 10-20% between runs on such a machine: read
  the per-repeat range printed next to each, and the A/A pair `ours_false` / `ours_auto`, which on
  CPU time the same compiled function.

What is timed, on the digits CNN (batch 128) and on the CIFAR ResNet-18 (random 32x32x3 images,
small batch): one PGD-10 l_inf call (ours under each compile policy, cleverhans as shipped and
in `tf.function`); one compiled distributed train step of Generalist-D and of PGD-AT built by
`experiment.build_model` from the same flagfile (Generalist-D with steps 2-4 of Alg. 1, the EMAs,
G and the redistribution, on as in `fit`); those steps alone (`Generalist.mix`); on digits a real
`model.fit` epoch against the input pipeline alone, and the Generalist-D step on 1 vs 2 replicas.

Method, so that the numbers survive a loaded machine: every function is first called untimed
(tracing, XLA compilation), then in each repeat every compared variant is timed once, in an order
rotated repeat by repeat, so a burst of load from other processes hits all variants alike.
Reported times are medians over the repeats, and every ratio is the ratio of two such medians
from the same run; the range of the per-repeat (paired) ratios is reported next to it.

A FLOPs cost model (forward FLOPs of ResNet-18 counted from its Conv2D/Dense shapes) turns the
step structure into an estimated GPU time of Generalist-D on CIFAR-10 at an assumed throughput.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from generalist_tf import (  # noqa: E402
    data,
    distribute,
    experiment,
)
from generalist_tf.experiments import bench_settings  # noqa: E402
from generalist_tf.experiments.bench_costs import cost_model  # noqa: E402
from generalist_tf.experiments.bench_groups import bench_epoch, bench_pgd, bench_steps  # noqa: E402
from generalist_tf.experiments.bench_models import (  # noqa: E402
    bench_bf16_cause,
    bench_resnet18,
    bench_small_cnn,
    bench_standard_vs_art,
    build_resnet18,
    fitted_digits_network,
    machine_info,
    step_configs,
)
from generalist_tf.experiments.bench_settings import (  # noqa: E402
    BENCH_APGD_STEPS,
    BENCH_SQUARE_QUERIES,
    BENCH_STANDARD_EXAMPLES,
    CIFAR10_FLAGFILE,
    DIGITS,
    DIGITS_BATCH_SIZE,
    DIGITS_FLAGFILE,
    REPORTED,
    RESNET18,
    SETTINGS,
    TARGETS,
)
from generalist_tf.experiments.bench_setup import make_config, replica_devices  # noqa: E402
from generalist_tf.experiments.bench_table import format_table  # noqa: E402
from generalist_tf.experiments.bench_timing import Recorder, floors  # noqa: E402


def run(*, quick: bool = False, tiny: bool = False, bf16: bool | None = None) -> dict:
    """Runs the benchmark and returns every number (the `--json` content).

    Args:
      quick: fewer repeats, ResNet-18 at batch 4 without XLA (under 5 minutes on 2 CPU cores).
      tiny: digits only, two repeats: a smoke test of the machinery (its numbers are noise).
      bf16: time the bf16 groups; None: always in the full run, with `quick` only on a CPU
        with native bf16 or a GPU (emulated bf16 took minutes and measured only emulation).

    Returns:
      A JSON-serialisable dict: `machine`, `settings`, `times_s` (median seconds per call of
      every variant), `samples_s`, `first_call_s`, `ratio_definitions` (key -> [numerator,
      denominator] time names), `ratio_ranges`, `floors` (per model and precision: a, t, the
      floor, Generalist-D over it), `bf16_casts`, `images_per_second`, `cost_model`, the
      headline keys at top level (digits unless prefixed `resnet18/`; `bf16_speedup` is
      ResNet-18's), and `targets`.

    Raises:
      ValueError: when TensorFlow was initialised before with a single CPU device and no GPU.
    """
    settings = SETTINGS["tiny" if tiny else "quick" if quick else "full"]
    gpus = tf.config.list_physical_devices("GPU")
    skipped = []
    if not bench_settings.include_bf16(
        bf16, quick=quick, gpu=bool(gpus), native=bench_settings.native_bf16()
    ):
        settings = bench_settings.without_bf16(settings)
        skipped.append(
            "bf16 groups: this CPU has no native bf16 (avx512_bf16 or amx_bf16), so they would "
            "time its emulation; --bf16 runs them"
        )
        logging.warning("bench: %s", skipped[-1])
    if not gpus:
        # Before any op: the 1-vs-2 replica row needs two logical CPU devices.
        distribute.configure_cpu_replicas(2)
    load_start = os.getloadavg()
    started = time.perf_counter()
    rec = Recorder()
    timing = dict(repeats=settings.repeats, warmup=settings.warmup, number=settings.number)

    # digits: the real 8x8 images, the flagfile's attack budget, batch 128.
    arrays = data.load("digits")
    configs = step_configs(DIGITS_FLAGFILE, batch_size=DIGITS_BATCH_SIZE)
    cfg_d = configs["generalist_d"]
    build_digits = experiment.network_builder(cfg_d, arrays)
    x = tf.constant(arrays.x_train[:DIGITS_BATCH_SIZE])
    y = tf.constant(arrays.y_train[:DIGITS_BATCH_SIZE])
    keras.utils.set_random_seed(cfg_d.runtime.seed)
    bench_pgd(
        rec, DIGITS, build_digits(), x, y, cfg_d.attacks.linf_attack, settings.policies, **timing
    )
    trainer = bench_steps(
        rec,
        DIGITS,
        configs,
        build_digits,
        (x, y),
        steps_per_epoch=len(arrays.x_train) // DIGITS_BATCH_SIZE,
        mixing_number=settings.mixing_number,
        two_replicas=len(replica_devices()) >= 2,
        detail=True,
        precisions=settings.precisions,
        **timing,
    )
    epoch_images = bench_epoch(
        rec, DIGITS, trainer, arrays, cfg_d, repeats=settings.epoch_repeats, warmup=settings.warmup
    )
    casts = (
        bench_bf16_cause(
            rec, batch=DIGITS_BATCH_SIZE, repeats=settings.repeats, warmup=settings.warmup
        )
        if settings.bf16_causes
        else {}
    )
    if settings.standard_repeats:
        keras.utils.set_random_seed(cfg_d.runtime.seed)
        bench_standard_vs_art(
            rec,
            fitted_digits_network(build_digits, arrays),
            tf.constant(arrays.x_test[:BENCH_STANDARD_EXAMPLES]),
            tf.constant(arrays.y_test[:BENCH_STANDARD_EXAMPLES]),
            epsilon=cfg_d.evaluation.eval_attack.epsilon,
            apgd_steps=BENCH_APGD_STEPS,
            square_queries=BENCH_SQUARE_QUERIES,
            repeats=settings.standard_repeats,
        )
    if settings.small_cnn_batch_size:
        bench_small_cnn(rec, settings)

    # CIFAR ResNet-18: random images (no CIFAR data here), the CIFAR-10 flagfile's budget.
    resnet18 = build_resnet18()
    if settings.resnet18_batch_size:
        bench_resnet18(rec, resnet18, settings)
    costs = cost_model(
        make_config(CIFAR10_FLAGFILE, variant="generalist_d", model=RESNET18),
        make_config(CIFAR10_FLAGFILE, variant="pgd_at", model=RESNET18),
        resnet18,
    )
    result = _assemble(rec, settings, costs, epoch_images, load_start, started)
    result["bf16_casts"] = casts
    result["skipped"] = skipped
    return result


def _assemble(rec, settings, costs, epoch_images, load_start, started) -> dict:
    """The result dict: measurements, ratios, throughputs, cost model and target checks."""
    medians = rec.medians()
    ratios = rec.ratio_values()
    derived = floors(rec)
    images_per_second = {
        "digits_cnn/fit_generalist_d_epoch": epoch_images
        / medians[f"{DIGITS}/epoch/fit_generalist_d"],
        "digits_cnn/input_pipeline": epoch_images / medians[f"{DIGITS}/epoch/input_pipeline"],
        "digits_cnn/input_pipeline_fresh_iterator": epoch_images
        / medians[f"{DIGITS}/epoch/input_pipeline_fresh_iterator"],
        "digits_cnn/generalist_d_step": DIGITS_BATCH_SIZE / medians[f"{DIGITS}/step/generalist_d"],
    }
    resnet_step = f"{RESNET18}/step/generalist_d"
    if resnet_step in medians:
        batch = settings.resnet18_batch_size
        images_per_second["resnet18/generalist_d_step"] = batch / medians[resnet_step]
        step_flops = (
            batch
            * costs["forward_passes_per_image_generalist_d"]
            * costs["resnet18_forward_gflops"]
        )
        costs["resnet18_measured_gflops_per_second"] = step_flops / medians[resnet_step]
    result = {
        "machine": machine_info(),
        "settings": dataclasses.asdict(settings),
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
        "wall_seconds": time.perf_counter() - started,
        "times_s": medians,
        "samples_s": rec.samples,
        "first_call_s": rec.first_call,
        "ratio_definitions": {k: list(v) for k, v in rec.ratios.items()},
        "ratio_ranges": rec.ratio_ranges(),
        "floors": derived,
        "paired_ratio_medians": rec.paired_ratio_medians(),
        "images_per_second": images_per_second,
        "cost_model": costs,
    }
    result.update(ratios)
    # The floor-relative overheads are headline keys too (each from medians of one group).
    headline = {k: v for k, v in derived.items() if "generalist_d_over_floor" in k}
    result.update(headline)
    ratios = {**ratios, **headline}
    if f"{RESNET18}/bf16_speedup" in ratios:
        result["bf16_speedup"] = ratios[f"{RESNET18}/bf16_speedup"]
    result["resnet18_forward_gflops"] = costs["resnet18_forward_gflops"]
    result["generalist_d_epoch_tflop"] = costs["generalist_d_epoch_tflop"]
    result["generalist_d_over_pgd_at_floor"] = costs["generalist_d_over_pgd_at_floor"]
    targets = {}
    for key, value in ratios.items():
        target = TARGETS.get(key.split("/")[-1])
        if target is not None:
            targets[key] = {
                "target": str(target),
                "op": target.op,
                "threshold": target.threshold,
                "value": value,
                "met": target.met(value),
                "meaning": target.meaning,
            }
    result["targets"] = targets
    result["reported"] = {
        key: {"value": result[key], "meaning": meaning}
        for key, meaning in REPORTED.items()
        if key in result
    }
    result["all_targets_met"] = all(t["met"] for t in targets.values())
    return result


# --- command line -------------------------------------------------------------------------------
def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The bench's own flags (only when run as a program)."""
    flags.DEFINE_bool(
        "quick", False, "Fewer repeats, ResNet-18 at batch 4 without XLA.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "json", None, "Also write every number to this JSON file.", flag_values=flag_values
    )
    flags.DEFINE_bool(
        "bf16",
        None,
        "Time the bf16 groups (default: always in the full run; with --quick only on a CPU "
        "with native bf16 or a GPU). --nobf16 leaves them out.",
        flag_values=flag_values,
    )


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    values = flags.FLAGS
    result = run(quick=values.quick, bf16=values.bf16)
    print(format_table(result))
    if values.json:
        with open(values.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
