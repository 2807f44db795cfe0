"""Shared helpers of the training tests: configs from flagfiles, tiny runs."""

import os
import subprocess
import sys

import tensorflow as tf
from absl import flags

from generalist_tf import cli, compat, config

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
