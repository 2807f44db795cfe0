"""Choosing the `tf.distribute` strategy: TPU, multi-worker, GPUs or (logical) CPUs.

* `--tpu=ADDRESS`: `TPUStrategy` (documented, not tested on this project's CPU machines).
* `TF_CONFIG` describing more than one worker: `MultiWorkerMirroredStrategy`, one process per
  worker (`compat.MultiWorkerMirroredStrategy`, with the shims Keras 3.15 `fit` needs).
  Every worker runs the same command on the same `--workdir` (a shared file system); worker 0
  (or the `chief` task) writes TensorBoard, checkpoints and exports.
* otherwise `MirroredStrategy` over the local GPUs, or over `--num_cpu_replicas` logical CPU
  devices when there is no GPU (how the tests get a real 2-replica strategy on one CPU).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from absl import logging

from generalist_tf import compat, tf_config


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
    cluster = tf_config.parse()
    return cluster is not None and cluster.is_multi_worker


def _tpu_strategy(tpu: str) -> tf.distribute.Strategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (OSError, ValueError, RuntimeError, tf.errors.OpError) as e:
        # An unknown host raises URLError (an OSError) from the metadata lookup; an address
        # with no TPU behind it raises an op error from the gRPC connection.
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"--tpu={tpu}: cannot connect to the TPU ({reason})") from None


def make_strategy(*, num_cpu_replicas: int = 1, tpu: str | None = None) -> tf.distribute.Strategy:
    """The strategy for this process (see the module docstring for the order of choice).

    Raises:
      ValueError: `--tpu` names no reachable TPU.
      ValueError: `--num_cpu_replicas` > 1 with a multi-worker `TF_CONFIG` (each worker trains
        one replica on its CPU; the flag would be ignored).
    """
    if tpu:
        return _tpu_strategy(tpu)
    if is_multi_worker():
        if num_cpu_replicas > 1:
            raise ValueError(
                f"--num_cpu_replicas={num_cpu_replicas} cannot be combined with a multi-worker "
                "TF_CONFIG: each worker trains one replica per GPU, or one on its CPU"
            )
        return compat.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    configure_cpu_replicas(num_cpu_replicas)
    cpus = tf.config.list_logical_devices("CPU")[: max(1, num_cpu_replicas)]
    return tf.distribute.MirroredStrategy([d.name for d in cpus])


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with auto-sharding by DATA: each worker keeps its slice of every global batch.

    Under `MultiWorkerMirroredStrategy`, `experimental_distribute_dataset` splits each global
    batch into one slice per replica and, with policy DATA, worker w keeps the slices of its
    replicas: the workers together see exactly the global batches of a single process, in the
    same replica order. The default policy AUTO would first try FILE, which does not apply to
    datasets built from in-memory tensors. Without multiple workers the policy is not used.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def task_name() -> str:
    """This process's `TF_CONFIG` task as `<type>-<index>` (e.g. `worker-1`), or `local`."""
    cluster = tf_config.parse()
    return cluster.task_name if cluster is not None else "local"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes TensorBoard, checkpoints and exports (worker 0 / chief)."""
    cluster = tf_config.parse()
    if getattr(strategy, "cluster_resolver", None) is None or cluster is None:
        return True
    return not cluster.is_multi_worker or cluster.is_chief


def eval_strategy(strategy: tf.distribute.Strategy | None) -> tf.distribute.Strategy | None:
    """The strategy evaluation spreads its batches over, or None for one device.

    Evaluation runs Python between attack steps (threat-model checks, restarts, Square's
    bookkeeping), so it uses `MirroredStrategy`, whose eager `run` calls the function once per
    local device in its own thread. With `TPUStrategy` (functions only) and
    `MultiWorkerMirroredStrategy` (the chief evaluates alone) it runs on the default device.
    """
    if isinstance(strategy, tf.distribute.MirroredStrategy) and strategy.num_replicas_in_sync > 1:
        return strategy
    return None


def map_batches(strategy: tf.distribute.Strategy | None, fn, num_batches: int, on_done=None):
    """`[fn(i) for i in range(num_batches)]`, R batches at a time over R replicas.

    `fn(batch_index)` returns a tensor for batch `batch_index`; replica r of round k computes
    batch k * R + r (replicas past the last batch compute nothing). Each batch carries its own
    index, and with it its own seeds, so the results do not depend on the number of replicas.

    Args:
      strategy: a `MirroredStrategy` (see `eval_strategy`) or None for one device.
      fn: batch index -> tensor (called in the replica's device scope).
      num_batches: how many batches.
      on_done: called with the number of batches finished after each round (progress bars).

    Returns:
      The results of `fn` as numpy arrays, in batch order.
    """
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    results = []
    for first in range(0, num_batches, replicas):

        def replica_fn(first=first):
            context = tf.distribute.get_replica_context()
            index = first + int(tf.get_static_value(context.replica_id_in_sync_group))
            return fn(index) if index < num_batches else tf.zeros([0])

        if strategy is None:
            outputs = [fn(first)]
        else:
            outputs = strategy.experimental_local_results(strategy.run(replica_fn))
        done = min(replicas, num_batches - first)
        results.extend(np.asarray(output) for output in outputs[:done])
        if on_done is not None:
            on_done(done)
    return results


def _cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def fast_bf16(cpu_flags: set[str] | None = None) -> tuple[bool, str]:
    """Whether this machine computes bfloat16 natively (fast), and why.

    GPUs: compute capability 8.0 or newer (Ampere and later have bf16 tensor cores). CPUs: the
    `amx_bf16` or `avx512_bf16` flag of /proc/cpuinfo, the instructions oneDNN uses for bf16
    convolutions and matmuls; without them TF emulates bf16 in fp32 and it is slower (measured
    here on an AVX2-only AMD EPYC: a SmallCNN PGD-5 step 5.0 s in bf16 against 0.57 s in fp32).

    Returns:
      (fast, reason), the reason naming what was detected.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
        if capability and tuple(capability) >= (8, 0):
            return True, f"GPU compute capability {capability[0]}.{capability[1]} >= 8.0"
        return False, f"GPU compute capability {capability} < 8.0"
    found = sorted(
        (cpu_flags if cpu_flags is not None else _cpu_flags()) & {"amx_bf16", "avx512_bf16"}
    )
    if found:
        return True, f"CPU flags {', '.join(found)}"
    return False, "CPU without amx_bf16 / avx512_bf16 (bf16 would be emulated)"


def resolve_precision(precision: str) -> str:
    """`auto` -> `bf16` where the device computes it natively, else `fp32` (logged)."""
    if precision != "auto":
        return precision
    fast, reason = fast_bf16()
    chosen = "bf16" if fast else "fp32"
    logging.info("--precision=auto: %s (%s)", chosen, reason)
    return chosen
