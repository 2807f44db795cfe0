"""Choosing the `tf.distribute` strategy: multi-worker, TPU, GPUs or (logical) CPUs.

* `TF_CONFIG` in the environment: `MultiWorkerMirroredStrategy` (one process per worker).
* `--tpu=ADDRESS`: `TPUStrategy` (documented, not tested on this project's CPU machines).
* otherwise `MirroredStrategy` over the local GPUs, or over `--num_cpu_replicas` logical CPU
  devices when there is no GPU (how the tests get a real 2-replica strategy on one CPU).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf


def configure_cpu_replicas(num_replicas: int) -> None:
    """Splits the first physical CPU into `num_replicas` logical devices.

    Must run before TensorFlow initialises its devices (before the first op). A no-op when the
    CPU already has at least that many logical devices (the strategy then uses the first N).

    Raises:
      ValueError: when the runtime is already initialised with another device layout.
    """
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if len(current or [None]) >= num_replicas:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_replicas
        )
    except RuntimeError as e:
        raise ValueError(
            f"--num_cpu_replicas={num_replicas}: TensorFlow devices are already initialised ({e})"
        ) from None


def is_multi_worker() -> bool:
    """Whether `TF_CONFIG` describes a cluster with more than one worker."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1


def make_strategy(*, num_cpu_replicas: int = 1, tpu: str | None = None) -> tf.distribute.Strategy:
    """The strategy for this process (see the module docstring for the order of choice)."""
    if is_multi_worker():
        return tf.distribute.MultiWorkerMirroredStrategy()
    if tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    configure_cpu_replicas(num_cpu_replicas)
    cpus = tf.config.list_logical_devices("CPU")[: max(1, num_cpu_replicas)]
    return tf.distribute.MirroredStrategy([d.name for d in cpus])


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes TensorBoard, checkpoints and exports (worker 0 / chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not is_multi_worker():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (
        task_type == "worker"
        and task_id == 0
        and "chief" not in json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
    )
