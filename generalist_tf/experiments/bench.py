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
`train.build_generalist` from the same flagfile (Generalist-D with steps 2-4 of Alg. 1, the EMAs,
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
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from cleverhans.tf2.attacks.projected_gradient_descent import (  # noqa: E402
    projected_gradient_descent,
)

from generalist_tf import (  # noqa: E402
    attacks,
    cli,
    config,
    data,
    distribute,
    models,
    train,
)
from generalist_tf.algorithm import callbacks  # noqa: E402
from generalist_tf.precision import dtype_policy  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS_FLAGFILE = "flags/digits_common.cfg"
CIFAR10_FLAGFILE = "flags/cifar10_common.cfg"
DIGITS = "digits_cnn"
RESNET18 = "resnet18"
DIGITS_BATCH_SIZE = 128
CIFAR10_IMAGE_SHAPE = (32, 32, 3)
CIFAR10_CLASSES = 10
# The full CIFAR-10 training split; `data` holds out TFDS_DATASETS["cifar10"][0] of it.
CIFAR10_TRAIN_EXAMPLES = 50_000
# The GPU estimate's throughput is an assumption, not a measurement: about 20% of an A100's dense
# TF32 peak (156 TFLOP/s) and 1.5x its plain fp32 peak (19.5), so it needs TF32 convolutions
# (TensorFlow's default on Ampere). Small 32x32 feature maps keep utilisation low.
ASSUMED_GPU = "A100, fp32 weights with TF32 convolutions"
ASSUMED_GPU_TFLOPS = 30.0
# A forward+backward pass costs about 3 forward passes (the backward pass computes gradients
# with respect to both activations and weights). The attack's backward pass needs only the input
# gradient (about 2x forward), so the model is an upper bound for the attack's share.
FORWARD_BACKWARD_PASSES = 3
# Epochs' worth of batches per timed sample of the input pipeline alone.
PIPELINE_EPOCHS = 10
# The standard AutoAttack list per norm (Croce & Hein 2020; RobustBench): APGD-CE and APGD-T
# (9 targets) with 100 iterations, FAB-T (9 targets, 100 iterations), Square with 5,000 queries.
STANDARD_ITERATIONS = 100
STANDARD_TARGETS = 9
STANDARD_SQUARE_QUERIES = 5000
CIFAR10_TEST_EXAMPLES = 10_000
# The bench's own budget for timing that list against ART on digits (same for both libraries):
# per-call times, so the ratios do not need the full budget.
BENCH_APGD_STEPS = 20
BENCH_SQUARE_QUERIES = 200
BENCH_STANDARD_EXAMPLES = 128


@dataclasses.dataclass(frozen=True)
class Target:
    """A bound a headline key must meet: `value <op> threshold`."""

    op: str
    threshold: float
    meaning: str

    def met(self, value: float) -> bool:
        return value >= self.threshold if self.op == ">=" else value <= self.threshold

    def __str__(self) -> str:
        return f"{self.op} {self.threshold:g}"


TARGETS = {
    "pgd_speedup_vs_cleverhans": Target(
        ">=", 1.3, "PGD-10 time of cleverhans as shipped / ours with jit_compile=auto"
    ),
    "generalist_d_over_floor": Target(
        "<=",
        1.03,
        "(Generalist-D step incl. mixing / PGD-AT step) / (K*a + 2t)/(K*a + t), a and t measured",
    ),
    "mixing_fraction": Target(
        "<=", 0.03, "EMAs + G alone / Generalist-D step incl. them (no communication)"
    ),
    "pipeline_over_training": Target(
        ">=", 10.0, "images/s of the input pipeline alone / of a Generalist-D fit epoch"
    ),
}
# Reported without a target.
REPORTED = {
    "two_replicas_over_one": "Generalist-D step time on 2 replicas / on 1 (same global batch)",
    "clean_accuracy_pass_cost": "Generalist-D step with --train_clean_accuracy / without (default)",
    "bf16_speedup": "Generalist-D step on the CIFAR ResNet-18, fp32 time / bf16 time",
}
SMALL_CNN = "small_cnn"
FASHION_FLAGFILE = "flags/fashion_mnist_common.cfg"
FASHION_IMAGE_SHAPE = (28, 28, 1)
# The Fashion-MNIST training split; `data` holds out TFDS_DATASETS["fashion_mnist"][0] of it.
FASHION_TRAIN_EXAMPLES = 60_000


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much to time.

    Attributes:
      mode: `full`, `quick` or `tiny` (the unit test's: digits only, two repeats).
      repeats: timed samples per variant on digits; medians are taken over them. Many short
        samples interleave more finely than a few long ones, so load bursts hit variants alike.
      warmup: untimed calls per variant before the repeats (the first traces and compiles).
      number: calls per timed sample of a digits step or attack.
      mixing_number: calls per timed sample of steps 2-4 alone (a few ms a call).
      epoch_repeats: timed samples of the digits fit epoch and of the input pipeline.
      policies: compile policies of our PGD timed on digits.
      resnet18_batch_size: batch of the ResNet-18 rows; 0 skips them.
      resnet18_repeats: timed samples per variant on ResNet-18 (one call each).
      resnet18_policies: compile policies of our PGD timed on ResNet-18.
    """

    mode: str
    repeats: int
    warmup: int
    number: int
    mixing_number: int
    epoch_repeats: int
    policies: tuple[str, ...]
    resnet18_batch_size: int
    resnet18_repeats: int
    resnet18_policies: tuple[str, ...]
    # Timed samples of the standard list against ART on digits (0 skips the group).
    standard_repeats: int = 0
    # Precisions of the train-step groups (interleaved in one group per model).
    precisions: tuple[str, ...] = ("fp32", "bf16")
    # SmallCNN at 28x28 (the Fashion-MNIST protocol's model and budget); batch 0 skips it.
    small_cnn_batch_size: int = 0
    small_cnn_repeats: int = 0


ALL_POLICIES = ("false", "true", "auto")
SETTINGS = {
    "full": Settings(
        mode="full",
        repeats=31,
        warmup=2,
        number=1,
        mixing_number=10,
        epoch_repeats=11,
        policies=ALL_POLICIES,
        resnet18_batch_size=16,
        resnet18_repeats=7,
        resnet18_policies=ALL_POLICIES,
        standard_repeats=5,
        small_cnn_batch_size=128,
        small_cnn_repeats=9,
    ),
    # XLA of ResNet-18 on CPU compiles for ~30 s and runs ~3.5x slower than graph mode (measured
    # here), so --quick leaves it out there (on CPU `auto` is graph mode), and shrinks the batch.
    "quick": Settings(
        mode="quick",
        repeats=11,
        warmup=2,
        number=1,
        mixing_number=10,
        epoch_repeats=5,
        policies=ALL_POLICIES,
        resnet18_batch_size=4,
        resnet18_repeats=3,
        resnet18_policies=("false", "auto"),
        standard_repeats=3,
        small_cnn_batch_size=128,
        small_cnn_repeats=3,
    ),
    "tiny": Settings(
        mode="tiny",
        repeats=2,
        warmup=1,
        number=1,
        mixing_number=2,
        epoch_repeats=2,
        policies=("false", "auto"),
        resnet18_batch_size=0,
        resnet18_repeats=0,
        resnet18_policies=(),
    ),
}


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


# --- building what is timed ---------------------------------------------------------------------
def make_config(flagfile: str, **overrides) -> config.Config:
    """The validated Config of a flagfile (relative to the repository root) plus overrides."""
    values = flags.FlagValues()
    cli.define_flags(values)
    # The bench writes nothing; a config needs a --workdir all the same.
    overrides = {"workdir": os.path.join(tempfile.gettempdir(), "generalist_tf_bench"), **overrides}
    args = ["bench", f"--flagfile={flagfile}"] + [f"--{k}={v}" for k, v in overrides.items()]
    cwd = os.getcwd()
    # Nested `--flagfile=flags/...` lines are relative to the repository root.
    os.chdir(ROOT)
    try:
        values(args)
    finally:
        os.chdir(cwd)
    return config.from_flags(values.flag_values_dict())


def replica_devices() -> list[str]:
    """The devices replicas run on: the GPUs if any, else the (logical) CPUs."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [d.name for d in devices]


def make_strategy(devices: list[str]) -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy with collective keys no earlier strategy of this process used.

    TF caches a collective key's shape per process; a later strategy reusing the key with another
    shape would abort every collective (TF's own tests move the key base the same way).
    """
    tf.distribute.MirroredStrategy._collective_key_base += 100_000
    return tf.distribute.MirroredStrategy(devices)


@dataclasses.dataclass
class Trainer:
    """A Generalist model, its compiled distributed step, and two epochs' schedule values.

    `schedule` is a non-communication epoch's (weights w_i(e), redistributing) and
    `schedule_communication` a communication epoch's (None if the run has none), as
    `callbacks.GeneralistCallback` hands them to the model at the start of such an epoch.
    """

    model: keras.Model
    step: Callable[[], object]
    schedule: tuple[list[float], bool]
    schedule_communication: tuple[list[float], bool] | None


def make_trainer(
    cfg: config.Config, build_network, strategy, batch, steps_per_epoch: int
) -> Trainer:
    """Builds `cfg`'s Generalist under `strategy` and a step on a constant distributed batch.

    The step is `strategy.run(model.train_step)` in one `tf.function`, as `fit` compiles it; the
    batch is a repeated constant, so the step time excludes the input pipeline (timed apart).
    """
    with strategy.scope():
        model = train.build_generalist(cfg, build_network, steps_per_epoch)
    stream = tf.data.Dataset.from_tensors(batch).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(stream))

    @tf.function
    def step_on(it):
        return strategy.run(model.train_step, (next(it),))

    callback = callbacks.GeneralistCallback(cfg.mixing, cfg.communication, cfg.epochs)
    by_epoch = [callback.schedule(e, model.learner_names) for e in range(1, cfg.epochs + 1)]

    def first(communicating: bool):
        """The schedule of the first (non-)communication epoch, None if there is none."""
        return next(((w, every) for w, c, every in by_epoch if c == communicating), None)

    return Trainer(model, functools.partial(step_on, iterator), first(False), first(True))


def with_mixing(trainer: Trainer, schedule) -> Callable[[], object]:
    """The train step with steps 2-4 of Alg. 1 on under `schedule` (as in an epoch of `fit`),
    or, with `schedule=None`, step 1 alone (the learners' steps, no EMA, G or redistribution).

    The schedule is handed over before every call (three variable assigns, well under 1 ms),
    because the interleaved variants share one model.
    """

    def run():
        if schedule is None:
            trainer.model.stop_mixing()
        else:
            trainer.model.set_schedule(*schedule)
        return trainer.step()

    return run


def mixing_only(trainer: Trainer, schedule) -> Callable[[], None]:
    """Steps 2-4 alone (`Generalist.mix`: the EMAs, G, + the redistribution when on)."""

    def run():
        trainer.model.mix(*schedule)

    return run


# --- the FLOPs cost model -----------------------------------------------------------------------
def forward_flops(model: keras.Model) -> int:
    """Forward FLOPs of one image: sum over Conv2D and Dense layers of 2 x multiply-adds.

    A Conv2D costs 2 * H_out * W_out * k_h * k_w * C_in * C_out, a Dense 2 * C_in * C_out;
    BatchNorm, ReLU, additions and pooling are left out (well under 1% for ResNet-18).
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, c_out = layer.output.shape
            k_h, k_w, c_in, _ = layer.kernel.shape
            total += 2 * height * width * k_h * k_w * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            c_in, c_out = layer.kernel.shape
            total += 2 * c_in * c_out
    return int(total)


def cifar10_steps_per_epoch(batch_size: int) -> int:
    """Training steps of a CIFAR-10 epoch: the split minus the held-out validation examples."""
    return (CIFAR10_TRAIN_EXAMPLES - data.TFDS_DATASETS["cifar10"][0]) // batch_size


def forward_passes_per_image(learners: tuple[str, ...], num_steps: int) -> int:
    """Forward-pass equivalents of one training step per image (Generalist: every learner).

    natural: one forward+backward pass. An adversarial learner: K forward+backward passes of
    the attack and one of the training loss (its clean-accuracy pass is off by default).

    Raises:
      ValueError: a learner this model does not cover.
    """
    total = 0
    for task in learners:
        if task == "natural":
            total += FORWARD_BACKWARD_PASSES
        elif task in ("linf_pgd", "l2_pgd"):
            total += FORWARD_BACKWARD_PASSES * (num_steps + 1)
        else:
            raise ValueError(f"the cost model covers natural and *_pgd learners, got {task!r}")
    return total


def standard_evaluation_passes(
    iterations: int = STANDARD_ITERATIONS,
    targets: int = STANDARD_TARGETS,
    square_queries: int = STANDARD_SQUARE_QUERIES,
) -> dict[str, int]:
    """Forward-pass equivalents per image of each attack of the standard list, for one norm.

    An upper bound: every attack runs on every image for its whole budget (AutoAttack's cascade
    skips images an earlier attack broke, so on a robust model it saves about the broken share).
    APGD: one forward+backward pass per iteration and target; FAB-T: the same for the gradient of
    the logit difference plus one forward pass of the candidate; Square: one forward per query.
    """
    return {
        "apgd_ce": FORWARD_BACKWARD_PASSES * iterations,
        "apgd_t": targets * FORWARD_BACKWARD_PASSES * iterations,
        "fab_t": targets * iterations * (FORWARD_BACKWARD_PASSES + 1),
        "square": square_queries,
    }


def cost_model(cfg_d: config.Config, cfg_at: config.Config, resnet18: keras.Model) -> dict:
    """Estimated FLOPs and GPU time of Generalist-D and PGD-AT on CIFAR-10 with ResNet-18."""
    k = cfg_d.linf_attack.num_steps
    flops = forward_flops(resnet18)
    passes_d = forward_passes_per_image(cfg_d.learners, k)
    passes_at = forward_passes_per_image(cfg_at.learners, k)
    val_examples = data.TFDS_DATASETS["cifar10"][0]
    images = cifar10_steps_per_epoch(cfg_d.batch_size) * cfg_d.batch_size
    # Validation every epoch: G and each learner's EMA, clean + PGD-n + adversarial forward.
    eval_passes = FORWARD_BACKWARD_PASSES * cfg_d.eval_attack.num_steps + 2
    eval_networks = 1 + len(cfg_d.learners)
    epoch_tflop = images * passes_d * flops / 1e12
    val_tflop = val_examples * eval_networks * eval_passes * flops / 1e12
    hours = 3600.0 * ASSUMED_GPU_TFLOPS
    standard = standard_evaluation_passes()
    # Both norms (l_inf and l_2) on the whole CIFAR-10 test split.
    standard_tflop = 2 * sum(standard.values()) * CIFAR10_TEST_EXAMPLES * flops / 1e12
    return {
        "resnet18_forward_gflops": flops / 1e9,
        "num_steps": k,
        "forward_passes_per_image_generalist_d": passes_d,
        "forward_passes_per_image_pgd_at": passes_at,
        "generalist_d_over_pgd_at_flops": passes_d / passes_at,
        "generalist_d_over_pgd_at_floor": (k + 2) / (k + 1),
        "train_images_per_epoch": images,
        "generalist_d_epoch_tflop": epoch_tflop,
        "pgd_at_epoch_tflop": images * passes_at * flops / 1e12,
        "validation_epoch_tflop": val_tflop,
        "epochs": cfg_d.epochs,
        "assumed_gpu": ASSUMED_GPU,
        "assumed_gpu_tflops": ASSUMED_GPU_TFLOPS,
        "generalist_d_epoch_gpu_seconds": epoch_tflop / ASSUMED_GPU_TFLOPS,
        "generalist_d_epoch_with_validation_gpu_seconds": (epoch_tflop + val_tflop)
        / ASSUMED_GPU_TFLOPS,
        "generalist_d_run_gpu_hours": cfg_d.epochs * epoch_tflop / hours,
        "generalist_d_run_with_validation_gpu_hours": cfg_d.epochs
        * (epoch_tflop + val_tflop)
        / hours,
        "standard_autoattack_passes_per_image_per_norm": standard,
        "standard_autoattack_cifar10_test_tflop": standard_tflop,
        "standard_autoattack_cifar10_test_gpu_hours": standard_tflop / hours,
    }


# --- the benchmark groups -----------------------------------------------------------------------
def bench_pgd(rec: Recorder, prefix: str, network, x, y, attack, policies, **timing) -> None:
    """PGD-K l_inf, ours under each compile policy vs cleverhans as shipped and in tf.function."""
    budget = dict(epsilon=attack.epsilon, step_size=attack.step_size, num_steps=attack.num_steps)

    def ours(policy):
        return lambda: attacks.pgd(network, x, y, norm="linf", jit_compile=policy, **budget)

    def cleverhans(images, labels):
        # Same work as ours: random start, PGD-K, clipping to the pixel box.
        return projected_gradient_descent(
            network,
            images,
            attack.epsilon,
            attack.step_size,
            attack.num_steps,
            np.inf,
            clip_min=0.0,
            clip_max=1.0,
            rand_init=True,
            y=labels,
            sanity_checks=False,
        )

    cleverhans_function = tf.function(cleverhans)
    variants = {f"pgd/ours_{policy}": ours(policy) for policy in policies}
    variants["pgd/cleverhans"] = lambda: cleverhans(x, y)
    variants["pgd/cleverhans_tf_function"] = lambda: cleverhans_function(x, y)
    rec.time(prefix, variants, **timing)
    name = "" if prefix == DIGITS else f"{prefix}/"
    rec.ratio(
        f"{name}pgd_speedup_vs_cleverhans", f"{prefix}/pgd/cleverhans", f"{prefix}/pgd/ours_auto"
    )
    rec.ratio(
        f"{name}pgd_speedup_vs_cleverhans_tf_function",
        f"{prefix}/pgd/cleverhans_tf_function",
        f"{prefix}/pgd/ours_auto",
    )


def bench_steps(
    rec: Recorder,
    prefix: str,
    configs: dict[str, config.Config],
    build_network,
    batch,
    *,
    steps_per_epoch: int,
    mixing_number: int,
    two_replicas: bool,
    detail: bool,
    precisions: tuple[str, ...] = ("fp32",),
    **timing,
) -> Trainer:
    """Generalist-D vs PGD-AT steps against the device's floor, per precision, in one group.

    For every precision: the Generalist-D step (steps 1-4), the PGD-AT step, a standard training
    step `t` and the training attack alone (PGD-K of the PGD-AT network, `K*a`), so the floor
    (K*a + 2t) / (K*a + t) comes from times taken under the same load as the ratio it bounds
    (`floors`). fp32 names carry no suffix, the others `_<precision>`. Also in the group: the
    mixing (steps 2-4) alone and, with `two_replicas`, the fp32 step on 2 replicas; `detail` adds
    fp32 Generalist-D without its mixing and PGD-AT with its EMA and G.

    Args:
      configs: the `generalist_d`, `pgd_at` and `standard` configs of one flagfile.

    Returns:
      The single-replica fp32 Generalist-D trainer (its model is reused for the fit epoch).
    """
    devices = replica_devices()
    x, y = batch
    variants, d = {}, None
    for precision in precisions:
        s = suffix(precision)
        with dtype_policy(precision):
            built = {
                name: make_trainer(
                    configs[name], build_network, make_strategy(devices[:1]), batch, steps_per_epoch
                )
                for name in ("generalist_d", "pgd_at", "standard")
            }
        gd, at = built["generalist_d"], built["pgd_at"]
        attack = configs["pgd_at"].linf_attack
        robust = at.model.learners[0].network
        jit = configs["pgd_at"].jit_compile
        under = functools.partial(in_policy, precision)
        variants[f"step/generalist_d{s}"] = under(with_mixing(gd, gd.schedule))
        variants[f"step/pgd_at{s}"] = under(with_mixing(at, None))
        variants[f"step/standard{s}"] = under(with_mixing(built["standard"], None))
        variants[f"attack/pgd{s}"] = under(lambda a=attack, n=robust: a(n, x, y, jit_compile=jit))
        if precision == "fp32":
            d = gd
            if detail:
                variants["step/generalist_d_no_mixing"] = with_mixing(gd, None)
                variants["step/pgd_at_with_ema"] = with_mixing(at, at.schedule)
                # The opt-in clean-accuracy pass of the adversarial learner (off by default).
                extra = make_trainer(
                    dataclasses.replace(configs["generalist_d"], train_clean_accuracy=True),
                    build_network,
                    make_strategy(devices[:1]),
                    batch,
                    steps_per_epoch,
                )
                variants["step/generalist_d_clean_accuracy"] = with_mixing(extra, extra.schedule)
            if gd.schedule_communication is not None:
                variants["step/generalist_d_communication"] = with_mixing(
                    gd, gd.schedule_communication
                )
    if two_replicas:
        d2 = make_trainer(
            configs["generalist_d"],
            build_network,
            make_strategy(devices[:2]),
            batch,
            steps_per_epoch,
        )
        variants["step/generalist_d_2_replicas"] = with_mixing(d2, d2.schedule)
    # Steps 2-4 alone, in the same repeats; their calls are short, so more of them per sample.
    variants["mixing/ema_and_global"] = mixing_only(d, d.schedule)
    if d.schedule_communication is not None:
        variants["mixing/with_redistribution"] = mixing_only(d, d.schedule_communication)
    number = {
        name: mixing_number if name.startswith("mixing/") else timing["number"] for name in variants
    }
    rec.time(prefix, variants, **{**timing, "number": number})

    name = "" if prefix == DIGITS else f"{prefix}/"
    step, mix = f"{prefix}/step", f"{prefix}/mixing"
    for precision in precisions:
        s = suffix(precision)
        rec.ratio(
            f"{name}generalist_d_over_pgd_at{s}", f"{step}/generalist_d{s}", f"{step}/pgd_at{s}"
        )
    if "bf16" in precisions and "fp32" in precisions:
        rec.ratio(f"{prefix}/bf16_speedup", f"{step}/generalist_d", f"{step}/generalist_d_bf16")
    if detail:
        rec.ratio(
            f"{name}generalist_d_no_mixing_over_pgd_at",
            f"{step}/generalist_d_no_mixing",
            f"{step}/pgd_at",
        )
        rec.ratio(
            f"{name}generalist_d_over_pgd_at_with_ema",
            f"{step}/generalist_d",
            f"{step}/pgd_at_with_ema",
        )
        rec.ratio(
            f"{name}clean_accuracy_pass_cost",
            f"{step}/generalist_d_clean_accuracy",
            f"{step}/generalist_d",
        )
    rec.ratio(f"{name}mixing_fraction", f"{mix}/ema_and_global", f"{step}/generalist_d")
    if d.schedule_communication is not None:
        rec.ratio(
            f"{name}mixing_fraction_communication",
            f"{mix}/with_redistribution",
            f"{step}/generalist_d_communication",
        )
    if two_replicas:
        rec.ratio(
            f"{name}two_replicas_over_one",
            f"{step}/generalist_d_2_replicas",
            f"{step}/generalist_d",
        )
    rec.floors[prefix] = (configs["pgd_at"].linf_attack.num_steps, tuple(precisions))
    return d


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time of every epoch of a `fit` (set-up and teardown of `fit` excluded)."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def bench_epoch(
    rec: Recorder, prefix: str, trainer: Trainer, arrays, cfg_d, *, repeats: int, warmup: int
) -> int:
    """Images per second of a real Generalist-D `fit` epoch vs the input pipeline alone.

    Training: the second epoch of a 2-epoch `fit` with the schedule callback, timed from
    `on_epoch_begin` to `on_epoch_end`: a steady-state epoch of a long run (the iterator, which
    `fit` keeps across epochs, is already running; `fit`'s own set-up is not an epoch's cost).
    Input: `data.train_dataset` alone, one persistent iterator (the steady state `fit` sees),
    timed over `PIPELINE_EPOCHS` epochs' worth of batches and reported per epoch; a fresh
    iterator's first epoch (start-up included) is reported apart. Interleaved with training.

    Returns:
      The number of images of the epoch.
    """
    steps = len(arrays.x_train) // cfg_d.batch_size
    stream = data.train_dataset(arrays, batch_size=cfg_d.batch_size, seed=cfg_d.seed)
    model = trainer.model
    iterator = iter(stream)

    # Epochs 1 and 2 of the run, schedules as in training (the callback hands them over).
    mixing = callbacks.GeneralistCallback(cfg_d.mixing, cfg_d.communication, cfg_d.epochs)

    def fit_epoch() -> float:
        timer = EpochTimer()
        model.fit(
            stream,
            epochs=2,
            steps_per_epoch=steps,
            callbacks=[mixing, timer],
            shuffle=False,  # The stream is already shuffled (and Keras warns otherwise).
            verbose=0,
        )
        return timer.seconds[-1]

    def epoch_of_batches(it, epochs: int) -> float:
        """Seconds per epoch's worth of batches, drawing `epochs` epochs' worth."""
        start = time.perf_counter()
        for _ in range(epochs * steps):
            batch = next(it)
        block(batch)
        return (time.perf_counter() - start) / epochs

    variants = {
        "fit_generalist_d": fit_epoch,
        # Many epochs' worth: the prefetch buffer, filled while `fit` ran, must not be all we time.
        "input_pipeline": lambda: epoch_of_batches(iterator, PIPELINE_EPOCHS),
        "input_pipeline_fresh_iterator": lambda: epoch_of_batches(iter(stream), 1),
    }
    logging.info("timing %s/epoch: %s", prefix, ", ".join(variants))
    names = list(variants)
    samples = {name: [] for name in names}
    first_call = {name: variants[name]() for name in names}
    for _ in range(warmup - 1):
        for name in names:
            variants[name]()
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(variants[name]())
    for name in names:
        rec.add(f"{prefix}/epoch/{name}", samples[name], first_call[name])
    rec.ratio(
        "pipeline_over_training",
        f"{prefix}/epoch/fit_generalist_d",
        f"{prefix}/epoch/input_pipeline",
    )
    return steps * cfg_d.batch_size


# --- the run ------------------------------------------------------------------------------------
def machine_info() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "physical_devices": [d.name for d in tf.config.list_physical_devices()],
        "logical_devices": [d.name for d in tf.config.list_logical_devices()],
        "jit_compile_auto_means_xla": attacks.resolve_jit_compile("auto"),
    }


def fitted_digits_network(build, arrays) -> keras.Model:
    """The digits network fitted for a few epochs: attacks that skip misclassified images (ART
    does) would otherwise do a tenth of the work on an untrained one, and the timing would lie."""
    network = build()
    network.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    network.fit(arrays.x_train, arrays.y_train, batch_size=64, epochs=8, verbose=0)
    return network


def bench_standard_vs_art(
    rec: Recorder,
    network: keras.Model,
    x,
    y,
    *,
    epsilon: float,
    apgd_steps: int,
    square_queries: int,
    repeats: int,
) -> bool:
    """The standard l_inf list, ours against ART's implementations, same images and budgets.

    ART 1.20 has APGD-CE and Square but no FAB, and no targeted DLR: its APGD-T stand-in is its
    APGD with the targeted cross-entropy toward each of the same 9 target classes (as the
    agreement test `tests/test_apgd_t_l2_reference.py`). FAB-T is timed for ours alone. ART
    attacks only the images still classified correctly (as shipped); ours attacks all of them.

    Returns:
      Whether ART was there (without it only ours is timed, and no ratio is declared).
    """
    from generalist_tf import fab, robust_attacks
    from generalist_tf.evaluation import references

    classifier = robust_attacks.as_classifier(network)
    classes = int(network(x[:1]).shape[-1])
    variants = {
        "standard/ours_apgd_ce_linf": lambda: robust_attacks.apgd(
            classifier, x, y, norm="linf", epsilon=epsilon, num_steps=apgd_steps
        ),
        "standard/ours_apgd_t_linf": lambda: robust_attacks.apgd(
            classifier,
            x,
            y,
            norm="linf",
            epsilon=epsilon,
            num_steps=apgd_steps,
            loss="dlr_targeted",
            target_classes=STANDARD_TARGETS,
        ),
        "standard/ours_fab_t_linf": lambda: fab.fab_t(
            classifier, x, y, norm="linf", epsilon=epsilon, num_steps=apgd_steps
        ),
        "standard/ours_square_linf": lambda: robust_attacks.square(
            classifier, x, y, epsilon=epsilon, num_queries=square_queries
        ),
    }
    try:
        from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack
    except ImportError:
        logging.warning("ART is not installed: the standard list is timed for ours alone")
        rec.time(DIGITS, variants, repeats=repeats, warmup=1, number=1)
        return False
    reference = references.art_estimator(classifier, x)
    images, labels = np.asarray(x), np.asarray(y)
    one_hot = keras.utils.to_categorical(labels, classes)
    apgd_args = dict(
        norm=np.inf, eps=epsilon, eps_step=2 * epsilon, max_iter=apgd_steps, nb_random_init=1
    )
    apgd_args.update(batch_size=len(images), verbose=False)

    def art_apgd_ce():
        attack = AutoProjectedGradientDescent(reference, loss_type="cross_entropy", **apgd_args)
        return attack.generate(images, y=one_hot)

    def art_apgd_t():
        attack = AutoProjectedGradientDescent(
            reference, loss_type="cross_entropy", targeted=True, **apgd_args
        )
        logits = network(images, training=False).numpy()
        logits[np.arange(len(labels)), labels] = -np.inf
        order = np.argsort(-logits, axis=1)[:, : min(STANDARD_TARGETS, classes - 1)]
        return [
            attack.generate(images, y=keras.utils.to_categorical(order[:, t], classes))
            for t in range(order.shape[1])
        ]

    def art_square():
        attack = SquareAttack(
            reference,
            norm=np.inf,
            eps=epsilon,
            max_iter=square_queries,
            p_init=0.8,
            nb_restarts=1,
            batch_size=len(images),
            verbose=False,
        )
        return attack.generate(images, y=one_hot)

    variants.update(
        {
            "standard/art_apgd_ce_linf": art_apgd_ce,
            "standard/art_apgd_t_linf": art_apgd_t,
            "standard/art_square_linf": art_square,
        }
    )
    rec.time(DIGITS, variants, repeats=repeats, warmup=1, number=1)
    shared = ("apgd_ce_linf", "apgd_t_linf", "square_linf")
    for side in ("ours", "art"):
        # Per repeat, the three attacks both libraries have, summed (paired ranges stay valid).
        names = [f"{DIGITS}/standard/{side}_{a}" for a in shared]
        samples = [sum(parts) for parts in zip(*(rec.samples[n] for n in names))]
        rec.add(f"{DIGITS}/standard/{side}_shared", samples, sum(rec.first_call[n] for n in names))
    for attack in (*shared, "shared"):
        rec.ratio(
            f"standard_{attack}_speedup_vs_art",
            f"{DIGITS}/standard/art_{attack}",
            f"{DIGITS}/standard/ours_{attack}",
        )
    return True


def build_resnet18() -> keras.Model:
    return models.build(RESNET18, CIFAR10_IMAGE_SHAPE, CIFAR10_CLASSES)


def step_configs(flagfile: str, **overrides) -> dict[str, config.Config]:
    """The `generalist_d`, `pgd_at` and `standard` configs of a flagfile (`bench_steps`)."""
    return {
        variant: make_config(flagfile, variant=variant, **overrides)
        for variant in ("generalist_d", "pgd_at", "standard")
    }


def random_batch(batch: int, shape, classes: int):
    """A constant batch of uniform images and labels (step times do not depend on content)."""
    x = tf.random.stateless_uniform((batch, *shape), seed=[0, 1])
    y = tf.random.stateless_uniform((batch,), seed=[0, 2], maxval=classes, dtype=tf.int64)
    return x, y


def bench_resnet18(rec: Recorder, network: keras.Model, settings: Settings) -> None:
    """The PGD and train-step groups on ResNet-18 with random CIFAR-shaped images."""
    batch = settings.resnet18_batch_size
    timing = dict(repeats=settings.resnet18_repeats, warmup=1, number=1)
    configs = step_configs(CIFAR10_FLAGFILE, model=RESNET18, batch_size=batch)
    x, y = random_batch(batch, CIFAR10_IMAGE_SHAPE, CIFAR10_CLASSES)
    attack = configs["generalist_d"].linf_attack
    bench_pgd(rec, RESNET18, network, x, y, attack, settings.resnet18_policies, **timing)
    bench_steps(
        rec,
        RESNET18,
        configs,
        build_resnet18,
        (x, y),
        steps_per_epoch=cifar10_steps_per_epoch(batch),
        mixing_number=1,
        two_replicas=False,
        detail=False,
        precisions=settings.precisions,
        **timing,
    )


def bench_small_cnn(rec: Recorder, settings: Settings) -> None:
    """The train-step group on the Fashion-MNIST protocol's SmallCNN (28x28, its PGD budget)."""
    batch = settings.small_cnn_batch_size
    configs = step_configs(FASHION_FLAGFILE, batch_size=batch)
    bench_steps(
        rec,
        SMALL_CNN,
        configs,
        lambda: models.build(SMALL_CNN, FASHION_IMAGE_SHAPE, 10),
        random_batch(batch, FASHION_IMAGE_SHAPE, 10),
        steps_per_epoch=(FASHION_TRAIN_EXAMPLES - data.TFDS_DATASETS["fashion_mnist"][0]) // batch,
        mixing_number=1,
        two_replicas=False,
        detail=False,
        precisions=settings.precisions,
        repeats=settings.small_cnn_repeats,
        warmup=1,
        number=1,
    )


def digits_layers_without_bn(input_shape, num_classes: int) -> keras.Model:
    """The digits CNN's convolutions (32, 64/2, 128/2, 3x3, same padding), ReLU and pooling
    with no BatchNorm (conv biases instead): what bf16 does for those layers alone."""
    inputs = keras.Input(input_shape)
    x = inputs
    for filters, stride in ((32, 1), (64, 2), (128, 2)):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu")(x)
    logits = keras.layers.Dense(num_classes)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, logits)


# Where bf16 pays: the digits CNN at its 8x8 and at 28x28 (the same layers on a 12x larger map),
# with our BatchNorm (unbiased moving variance: moments and normalisation in float32, two casts
# per layer), with Keras' own (also float32 under mixed precision) and without BatchNorm;
# SmallCNN (no BatchNorm) at 28x28 for reference. case -> (builder, input shape).
BF16_CAUSES = {
    "digits_cnn_8x8": (functools.partial(models.build, DIGITS), (8, 8, 1)),
    "digits_cnn_8x8_no_bn": (digits_layers_without_bn, (8, 8, 1)),
    "digits_cnn_28x28": (functools.partial(models.build, DIGITS), (28, 28, 1)),
    "digits_cnn_28x28_keras_bn": (
        functools.partial(models.build, DIGITS, bn_moving_variance="biased"),
        (28, 28, 1),
    ),
    "digits_cnn_28x28_no_bn": (digits_layers_without_bn, (28, 28, 1)),
    "small_cnn_28x28": (functools.partial(models.build, SMALL_CNN), (28, 28, 1)),
}


def count_casts(function, x, y) -> int:
    """Cast ops in the graph of a `tf.function` (nested functions included)."""
    graph = function.get_concrete_function(x, y).graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return sum(node.op == "Cast" for node in nodes)


def bench_bf16_cause(rec: Recorder, *, batch: int, repeats: int, warmup: int) -> dict:
    """One training pass (forward, backward; no update) per case of `BF16_CAUSES`, fp32 and bf16.

    Declares `bf16_cause/<case>/speedup` (fp32 time / bf16 time) and returns the number of Cast
    ops in each case's bf16 graph, so the table shows whether bf16's gain follows the size of
    the convolutions or the casts of our layers.
    """
    variants, casts = {}, {}
    for case, (build, shape) in BF16_CAUSES.items():
        x, y = random_batch(batch, shape, 10)
        for precision in ("fp32", "bf16"):
            with dtype_policy(precision):
                network = build(shape, 10)

            @tf.function
            def training_pass(images, labels, network=network):
                with tf.GradientTape() as tape:
                    logits = tf.cast(network(images, training=True), tf.float32)
                    loss = tf.reduce_mean(
                        tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
                    )
                return tape.gradient(loss, network.trainable_variables)

            name = f"{case}/{precision}"
            variants[name] = in_policy(precision, functools.partial(training_pass, x, y))
            if precision == "bf16":
                with dtype_policy(precision):
                    casts[case] = count_casts(training_pass, x, y)
    rec.time("bf16_cause", variants, repeats=repeats, warmup=warmup, number=1)
    for case in BF16_CAUSES:
        rec.ratio(
            f"bf16_cause/{case}/speedup", f"bf16_cause/{case}/fp32", f"bf16_cause/{case}/bf16"
        )
    return casts


def run(*, quick: bool = False, tiny: bool = False) -> dict:
    """Runs the benchmark and returns every number (the `--json` content).

    Args:
      quick: fewer repeats, ResNet-18 at batch 4 without XLA (under 5 minutes on 2 CPU cores).
      tiny: digits only, two repeats: a smoke test of the machinery (its numbers are noise).

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
    if not tf.config.list_physical_devices("GPU"):
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
    build_digits = train.network_builder(cfg_d, arrays)
    x = tf.constant(arrays.x_train[:DIGITS_BATCH_SIZE])
    y = tf.constant(arrays.y_train[:DIGITS_BATCH_SIZE])
    keras.utils.set_random_seed(cfg_d.seed)
    bench_pgd(rec, DIGITS, build_digits(), x, y, cfg_d.linf_attack, settings.policies, **timing)
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
    casts = bench_bf16_cause(
        rec, batch=DIGITS_BATCH_SIZE, repeats=settings.repeats, warmup=settings.warmup
    )
    if settings.standard_repeats:
        keras.utils.set_random_seed(cfg_d.seed)
        bench_standard_vs_art(
            rec,
            fitted_digits_network(build_digits, arrays),
            tf.constant(arrays.x_test[:BENCH_STANDARD_EXAMPLES]),
            tf.constant(arrays.y_test[:BENCH_STANDARD_EXAMPLES]),
            epsilon=cfg_d.eval_attack.epsilon,
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
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------
def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The bench's own flags (only when run as a program)."""
    flags.DEFINE_bool(
        "quick", False, "Fewer repeats, ResNet-18 at batch 4 without XLA.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "json", None, "Also write every number to this JSON file.", flag_values=flag_values
    )


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    values = flags.FLAGS
    result = run(quick=values.quick)
    print(format_table(result))
    if values.json:
        with open(values.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
