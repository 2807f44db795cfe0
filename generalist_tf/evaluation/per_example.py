"""Per-example correctness masks: one attack over every batch, PGD-20 over a range of epsilons.

An example's mask is True when it is classified correctly under every repeat of the attack;
batches run one per replica at a time (`distribute.map_batches`) and are recorded as they
finish (`resume`), so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from generalist_tf import distribute
from generalist_tf.evaluation import resume, suite


def _seed_stream(attack_index: int, batch_index: int, repeat: int) -> int:
    """A distinct, reproducible random stream per (attack, batch, restart)."""
    return (attack_index * 100_003 + batch_index) * 1_009 + repeat


def run_attack(
    model,
    x,
    y,
    attack: suite.SuiteAttack,
    *,
    epsilon: float,
    batch_size: int = 256,
    seed: int = 0,
    stream: int = 0,
    progress: keras.utils.Progbar | None = None,
    target_model=None,
    strategy: tf.distribute.Strategy | None = None,
    records: resume.Progress | None = None,
    record_as: str | None = None,
) -> np.ndarray:
    """Per-example correctness of the model under one attack, batch by batch.

    Args:
      model: the model the attack differentiates / queries (a `attacks.Classifier`).
      x, y: float32 images in [0, 1] and int labels (numpy).
      attack: the attack and its budget.
      epsilon: the radius of the attack's norm ball.
      batch_size: examples per attack call.
      seed: the evaluation seed.
      stream: distinguishes attacks that share `seed` (the attack's index in the suite).
      progress: a progress bar advanced by one per batch.
      target_model: the model classified on the adversarial examples when it is not `model`
        (transfer attacks).
      strategy: spreads the batches over its replicas (`distribute.map_batches`); the same
        masks as on one device.
      records: where finished batches are kept and found again (`resume`), under the
        name `record_as` (default: the attack's name).

    Returns:
      Boolean array: the example is classified correctly under every repeat of the attack.

    Raises:
      RuntimeError: an adversarial example outside the ball or the pixel box.
    """
    target_model = model if target_model is None else target_model

    record_as = record_as or attack.name

    def one_batch(batch_index):
        recorded = None if records is None else records.batch(record_as, batch_index)
        if recorded is not None:
            return tf.constant(recorded)
        xb, yb = batch(x, y, batch_index, batch_size)
        correct = np.ones(len(xb), bool)
        for repeat in range(attack.repeats):
            batch_seed = seed * 1_000_003 + _seed_stream(stream, batch_index, repeat)
            x_adv = np.asarray(attack.run(model, xb, yb, epsilon, batch_seed))
            suite.check_threat_model(attack.name, x_adv, xb, attack.norm, epsilon)
            correct &= suite.predict_labels(target_model, x_adv) == yb
        if records is not None:
            records.save_batch(record_as, batch_index, correct)
        return tf.constant(correct)

    masks = distribute.map_batches(
        strategy,
        one_batch,
        num_batches(len(x), batch_size),
        on_done=None if progress is None else progress.add,
    )
    return np.concatenate(masks).astype(bool)


def batch(x: np.ndarray, y: np.ndarray, index: int, batch_size: int):
    """Images and labels of batch `index`."""
    start = index * batch_size
    return x[start : start + batch_size], y[start : start + batch_size]


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def epsilon_curve(
    model,
    x,
    y,
    pgd20,
    epsilon,
    fractions,
    clean,
    masks,
    *,
    batch_size,
    seed,
    progress,
    strategy,
    records=None,
):
    """PGD-20 accuracy at `fractions` x epsilon; reuses the nominal run when it exists."""
    accuracies = []
    for fraction in fractions:
        if fraction == 0.0:
            mask = clean
        elif fraction == 1.0 and pgd20.name in masks:
            mask = masks[pgd20.name]
        else:
            mask = run_attack(
                model,
                x,
                y,
                pgd20,
                epsilon=fraction * epsilon,
                batch_size=batch_size,
                seed=seed,
                stream=suite.STREAM_ORDER.index(pgd20.name),
                progress=progress if fraction != 1.0 else None,
                strategy=strategy,
                records=records,
                record_as=f"{pgd20.name}_x{fraction:g}",
            )
        accuracies.append(float(np.mean(mask)))
    return {
        "attack": pgd20.name,
        "fractions": list(fractions),
        "epsilons": [fraction * epsilon for fraction in fractions],
        "accuracies": accuracies,
    }
