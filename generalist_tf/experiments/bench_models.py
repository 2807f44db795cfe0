"""The per-model runs (digits CNN, SmallCNN, ResNet-18), the AutoAttack reference and bf16 causes."""

from __future__ import annotations

import functools
import os
import platform

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from generalist_tf import (
    attacks,
    config,
    data,
    models,
)
from generalist_tf.experiments.bench_costs import cifar10_steps_per_epoch
from generalist_tf.experiments.bench_groups import bench_pgd, bench_steps
from generalist_tf.experiments.bench_settings import (
    CIFAR10_CLASSES,
    CIFAR10_FLAGFILE,
    CIFAR10_IMAGE_SHAPE,
    DIGITS,
    FASHION_FLAGFILE,
    FASHION_IMAGE_SHAPE,
    FASHION_TRAIN_EXAMPLES,
    RESNET18,
    SMALL_CNN,
    STANDARD_TARGETS,
    Settings,
)
from generalist_tf.experiments.bench_setup import make_config
from generalist_tf.experiments.bench_timing import Recorder, in_policy
from generalist_tf.precision import dtype_policy


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
    from generalist_tf import attacks
    from generalist_tf.evaluation import references

    classifier = attacks.as_classifier(network)
    classes = int(network(x[:1]).shape[-1])
    variants = {
        "standard/ours_apgd_ce_linf": lambda: attacks.apgd(
            classifier, x, y, norm="linf", epsilon=epsilon, num_steps=apgd_steps
        ),
        "standard/ours_apgd_t_linf": lambda: attacks.apgd(
            classifier,
            x,
            y,
            norm="linf",
            epsilon=epsilon,
            num_steps=apgd_steps,
            loss="dlr_targeted",
            target_classes=STANDARD_TARGETS,
        ),
        "standard/ours_fab_t_linf": lambda: attacks.fab_t(
            classifier, x, y, norm="linf", epsilon=epsilon, num_steps=apgd_steps
        ),
        "standard/ours_square_linf": lambda: attacks.square(
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
    attack = configs["generalist_d"].attacks.linf_attack
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
