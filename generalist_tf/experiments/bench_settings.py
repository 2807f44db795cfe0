"""The bench's constants: the models and batches timed, the compared targets, each mode's settings."""

from __future__ import annotations

import dataclasses
import os

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
    # The bf16 cause group (fp32 against bf16 on the digits CNN's layers at two sizes).
    bf16_causes: bool = True


ALL_POLICIES = ("false", "true", "auto")
# CPU flags of native bf16 arithmetic (Intel AVX512-BF16, AMX); without them bf16 is emulated.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (its /proc/cpuinfo flags; False if unreadable)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def include_bf16(requested: bool | None, *, quick: bool, gpu: bool, native: bool) -> bool:
    """Whether to time bf16: as `requested`, else always in the full run and, with --quick, only
    where bf16 is native (a GPU, or a CPU with `NATIVE_BF16_FLAGS`)."""
    if requested is not None:
        return requested
    return not quick or gpu or native


def without_bf16(settings: Settings) -> Settings:
    """`settings` with the bf16 groups left out (fp32 only)."""
    return dataclasses.replace(settings, precisions=("fp32",), bf16_causes=False)


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
