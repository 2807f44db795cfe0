"""Shared helpers of the training tests: configs from flagfiles, tiny runs."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from generalist_tf import cli, compat, config, data
from generalist_tf.algorithm import generalist, learners, mixing, optimizers, schedules
from generalist_tf.experiments import repro_suites

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS_DIR = os.path.join(ROOT, "flags")


def parse_flags(*args: str) -> flags.FlagValues:
    """A fresh FlagValues with every generalist_tf flag, parsed from `args`."""
    return cli.parse(*args)


def config_from(flagfile: str, **overrides) -> config.Config:
    """The validated Config of `flags/<flagfile>` with `--name=value` overrides."""
    return cli.config_from_flagfile(os.path.join(FLAGS_DIR, flagfile), **overrides)


def two_replica_strategy() -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy on the two logical CPUs with collective keys no other strategy used
    (conftest moves the key base before every test; this also separates two strategies within
    one test)."""
    return compat.mirrored_strategy(["/cpu:0", "/cpu:1"])


def run_main(
    *args: str, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m generalist_tf.main ARGS` from the repository root, output captured; `env`
    adds to (or, with None values, removes from) the environment."""
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "generalist_tf.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# A Generalist of three tiny Dense + BatchNorm learners on 2x2 images, 3 classes (the mixing tests).
SHAPE, CLASSES = (2, 2, 1), 3
TASKS = ("natural", "linf_pgd", "l2_pgd")


def bn_network():
    """Dense + BatchNorm: the mixing must carry BN moving statistics too."""
    inputs = keras.Input(SHAPE)
    x = keras.layers.Dense(CLASSES)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.9)(x))


def build_model(alpha=0.999, random_start=True, communication=None, epochs=2):
    attack = learners.Attack("linf", 0.1, 0.05, 1, random_start=random_start)
    base = []
    for task in TASKS:
        learner = learners.LEARNERS[task](bn_network(), bn_network(), attack=attack)
        learner.compile(optimizer=optimizers.CoupledSGD(0.1, momentum=0.9))
        learner.optimizer.build(learner.network.trainable_variables)
        base.append(learner)
    return generalist.Generalist(
        base,
        bn_network(),
        bn_network(),
        algorithm=algorithm_settings(bn_network, TASKS, epochs, communication),
        eval_attack=attack,
        ema_alpha=alpha,
    )


def algorithm_settings(
    build_network, tasks, epochs=2, communication=None
) -> generalist.AlgorithmSettings:
    """Equal constant weights (no redistribution by default): what `fit` runs."""
    weights = schedules.parse_mixing(";".join(f"{t}=0:{1 / len(tasks)}" for t in tasks))
    return generalist.AlgorithmSettings(build_network, weights, communication, epochs)


def set_known_weights(model, rng):
    """Distinct random values in every floating weight of every network (BN stats included)."""
    networks = [model.global_network] + [
        n for learner in model.learners for n in (learner.network, learner.ema_network)
    ]
    for network in networks:
        for w in mixing.mixable_weights(network):
            w.assign(rng.normal(size=w.shape).astype(np.float32) + 2.0)


def values(network):
    return [w.numpy() for w in mixing.mixable_weights(network)]


def tiny_dataset(steps, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(steps * batch, *SHAPE)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=steps * batch)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()


# The Fashion-MNIST IDX files of the system package, and the mark of the tests that read them.
FASHION_DIR = data.IDX_DATASETS["fashion_mnist"][0]
needs_fashion = pytest.mark.skipif(
    not os.environ.get("CI") and data.idx_directory("fashion_mnist", None) is None,
    reason="apt-get install dataset-fashion-mnist (CI installs it and never skips)",
)


# The metrics of a finished reproduction run (`repro_runs.read_metrics`), every column 0.5.
FAKE_METRICS = {
    **{key: 0.5 for key, _ in repro_suites.COLUMNS},
    **{key: 0.5 for key, _ in repro_suites.SELECTION_COLUMNS},
    "alarms": [],
    "best_epoch": 2,
    "epochs": 2,
    "suite_examples": 10,
}
