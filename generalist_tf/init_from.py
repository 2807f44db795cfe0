"""`--init_from`: start every learner, EMA and G from a trained network (fine-tuning).

Sources: a `.keras` file (ours or any Keras model of the same architecture), one of our export
directories (its `.keras` twin, `<export>.keras`), a run's workdir (its `export.keras`), or a
TF checkpoint of ours (a `checkpoints/` directory or a `ckpt-N` prefix: G of that checkpoint).
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from generalist_tf import export


class InitError(ValueError):
    """Weights that cannot initialise the run; the message is one line meant for the user."""


def _checkpoint_prefix(path: str) -> str | None:
    if os.path.isdir(path):
        for directory in (path, os.path.join(path, "checkpoints")):
            latest = tf.train.latest_checkpoint(directory)
            if latest:
                return latest
        return None
    return path if os.path.exists(path + ".index") else None


def keras_file(path: str) -> str | None:
    """The `.keras` file `path` names: itself, an export's twin, or a workdir's export."""
    if path.endswith(".keras") and os.path.isfile(path):
        return path
    for candidate in (export.keras_path(path), os.path.join(path, "export.keras")):
        if os.path.isfile(candidate):
            return candidate
    return None


def load_into(network: keras.Model, path: str, argument: str = "init") -> None:
    """Copies the weights of the network at `path` into `network`, all or nothing.

    `argument` is how the caller names `path` in errors (`init` from Python; the command line
    renames it `--init_from`).

    Raises:
      InitError: no readable source at `path`, or weights whose shapes differ (naming the
        first mismatching weight and both shapes).
    """
    if keras_file(path) is not None:
        _assign(network, load_network(path, argument).weights, f"{argument}={path}")
        return
    prefix = _checkpoint_prefix(path)
    if prefix is None:
        raise InitError(
            f"{argument}={path}: neither a .keras file, an export with its .keras twin, a "
            "workdir with export.keras, nor a checkpoint"
        )
    # G of our checkpoint (key `global`, `checkpoints.tracked_objects`), matched by object graph.
    try:
        status = tf.train.Checkpoint(**{"global": network}).restore(prefix).expect_partial()
        status.assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InitError(f"{argument}={path}: {prefix} does not fit the model ({first})")


def _assign(network: keras.Model, values, source: str) -> None:
    targets = network.weights
    if len(values) != len(targets):
        raise InitError(
            f"{source}: {len(values)} weights, the model has {len(targets)} (another architecture?)"
        )
    for target, value in zip(targets, values):
        shape = tuple(getattr(value, "shape", ()))
        if shape != tuple(target.shape):
            raise InitError(
                f"{source}: weight {target.path} has shape {tuple(target.shape)} in "
                f"the model but {shape} in the source"
            )
    for target, value in zip(targets, values):
        target.assign(tf.convert_to_tensor(value, target.dtype))


def load_network(path: str, argument: str = "model") -> keras.Model:
    """The Keras network at `path`: a `.keras` file, an export with its twin, or a workdir.

    Args:
      path: the source (see the module docstring; a checkpoint holds no architecture).
      argument: how the caller names `path` in errors (`model`, or `--model` on the command line).

    Raises:
      InitError: no `.keras` source at `path`, or one Keras cannot load (one line naming it).
    """
    source = keras_file(path)
    if source is None:
        raise InitError(
            f"{argument}={path}: neither a .keras file, an export with its .keras twin, nor a "
            "workdir with export.keras"
        )
    from generalist_tf import models  # noqa: F401 (registers our BatchNorm for older exports)

    try:
        return keras.models.load_model(source, compile=False)
    except Exception as e:  # Keras raises several types for a bad file.
        raise InitError(f"{argument}={path}: {source} is not loadable ({type(e).__name__})")
