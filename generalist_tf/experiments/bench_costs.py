"""The FLOPs cost model: forward FLOPs from layer shapes, passes per image, estimated GPU time."""

from __future__ import annotations

import keras

from generalist_tf import (
    config,
    data,
)
from generalist_tf.experiments.bench_settings import (
    ASSUMED_GPU,
    ASSUMED_GPU_TFLOPS,
    CIFAR10_TEST_EXAMPLES,
    CIFAR10_TRAIN_EXAMPLES,
    FORWARD_BACKWARD_PASSES,
    STANDARD_ITERATIONS,
    STANDARD_SQUARE_QUERIES,
    STANDARD_TARGETS,
)


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
    k = cfg_d.attacks.linf_attack.num_steps
    flops = forward_flops(resnet18)
    passes_d = forward_passes_per_image(cfg_d.algorithm.learners, k)
    passes_at = forward_passes_per_image(cfg_at.algorithm.learners, k)
    val_examples = data.TFDS_DATASETS["cifar10"][0]
    images = cifar10_steps_per_epoch(cfg_d.optimisation.batch_size) * cfg_d.optimisation.batch_size
    # Validation every epoch: G and each learner's EMA, clean + PGD-n + adversarial forward.
    eval_passes = FORWARD_BACKWARD_PASSES * cfg_d.evaluation.eval_attack.num_steps + 2
    eval_networks = 1 + len(cfg_d.algorithm.learners)
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
        "epochs": cfg_d.optimisation.epochs,
        "assumed_gpu": ASSUMED_GPU,
        "assumed_gpu_tflops": ASSUMED_GPU_TFLOPS,
        "generalist_d_epoch_gpu_seconds": epoch_tflop / ASSUMED_GPU_TFLOPS,
        "generalist_d_epoch_with_validation_gpu_seconds": (epoch_tflop + val_tflop)
        / ASSUMED_GPU_TFLOPS,
        "generalist_d_run_gpu_hours": cfg_d.optimisation.epochs * epoch_tflop / hours,
        "generalist_d_run_with_validation_gpu_hours": cfg_d.optimisation.epochs
        * (epoch_tflop + val_tflop)
        / hours,
        "standard_autoattack_passes_per_image_per_norm": standard,
        "standard_autoattack_cifar10_test_tflop": standard_tflop,
        "standard_autoattack_cifar10_test_gpu_hours": standard_tflop / hours,
    }
