"""Shared helpers of the training tests: configs from flagfiles, tiny runs."""

import os
import subprocess
import sys

import tensorflow as tf
from absl import flags

from generalist_tf import cli, config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS_DIR = os.path.join(ROOT, "flags")


def parse_flags(*args: str) -> flags.FlagValues:
    """A fresh FlagValues with every generalist_tf flag, parsed from `args`."""
    values = flags.FlagValues()
    cli.define_flags(values)
    # Nested `--flagfile=flags/...` lines are relative to the repository root, as documented.
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        values(["generalist_tf", *args])
    finally:
        os.chdir(cwd)
    return values


def config_from(flagfile: str, **overrides) -> config.Config:
    """The validated Config of `flags/<flagfile>` with `--name=value` overrides."""
    args = [f"--flagfile={os.path.join(FLAGS_DIR, flagfile)}"]
    args += [f"--{k}={v}" for k, v in overrides.items()]
    return config.from_flags(parse_flags(*args).flag_values_dict())


def two_replica_strategy() -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy on the two logical CPUs with collective keys no other strategy used.

    Every MirroredStrategy numbers its collectives from the same keys, and TF caches a key's
    shape for the process: a later strategy whose collective under that key has another shape
    aborts every collective op of the process (conftest moves the base before every test; this
    also separates two strategies within one test). TF's own tests move the key base this way.
    """
    tf.distribute.MirroredStrategy._collective_key_base += 100_000
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


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
