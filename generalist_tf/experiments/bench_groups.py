"""The timed groups: PGD against cleverhans, the train steps, mixing alone, a real `fit` epoch."""

from __future__ import annotations

import functools
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from cleverhans.tf2.attacks.projected_gradient_descent import (
    projected_gradient_descent,
)

from generalist_tf import (
    attacks,
    config,
    data,
)
from generalist_tf.experiments.bench_settings import DIGITS, PIPELINE_EPOCHS
from generalist_tf.experiments.bench_setup import (
    Trainer,
    make_strategy,
    make_trainer,
    mixing_only,
    replica_devices,
    with_mixing,
)
from generalist_tf.experiments.bench_timing import Recorder, block, in_policy, suffix
from generalist_tf.precision import dtype_policy


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
        attack = configs["pgd_at"].attacks.linf_attack
        robust = at.model.learners[0].network
        jit = configs["pgd_at"].runtime.jit_compile
        under = functools.partial(in_policy, precision)
        variants[f"step/generalist_d{s}"] = under(with_mixing(gd, gd.schedule))
        variants[f"step/pgd_at{s}"] = under(with_mixing(at, None))
        variants[f"step/standard{s}"] = under(with_mixing(built["standard"], None))
        variants[f"attack/pgd{s}"] = under(
            lambda a=attack, n=robust: attacks.pgd_with(a, n, x, y, jit_compile=jit)
        )
        if precision == "fp32":
            d = gd
            if detail:
                variants["step/generalist_d_no_mixing"] = with_mixing(gd, None)
                variants["step/pgd_at_with_ema"] = with_mixing(at, at.schedule)
                # The opt-in clean-accuracy pass of the adversarial learner (off by default).
                extra = make_trainer(
                    configs["generalist_d"].replace(train_clean_accuracy=True),
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
    rec.floors[prefix] = (configs["pgd_at"].attacks.linf_attack.num_steps, tuple(precisions))
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
    steps = len(arrays.x_train) // cfg_d.optimisation.batch_size
    stream = data.train_dataset(
        arrays, batch_size=cfg_d.optimisation.batch_size, seed=cfg_d.runtime.seed
    )
    model = trainer.model
    iterator = iter(stream)

    # Epochs 1 and 2 of the run, schedules as in training (`Generalist.fit` attaches the
    # callback that hands them over).

    def fit_epoch() -> float:
        timer = EpochTimer()
        model.fit(
            stream,
            epochs=2,
            steps_per_epoch=steps,
            callbacks=[timer],
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
    return steps * cfg_d.optimisation.batch_size
