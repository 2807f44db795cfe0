"""What the attacks maximise: cross-entropy, the CW margin, DLR, TRADES' KL, all per example.

One margin (`margin`, the best wrong logit minus the true one) underlies the CW loss, DLR, the
score-based Square Attack and the `fooled` test.
"""

from __future__ import annotations

import tensorflow as tf

# Confidence of the Carlini-Wagner margin loss as used for "CW-inf" in adversarial training
# papers (TRADES, Generalist): the attack stops gaining once the margin reaches kappa.
CW_KAPPA = 50.0
# Denominators of DLR and of gradient normalisations: a zero denominator must give a finite
# value, and 1e-12 is far below any logit gap or gradient norm that matters.
TINY = 1e-12


def margin(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Per-example margin of the best wrong class over the true class: > 0 means fooled.

    The true class is masked with -inf (not by subtracting a large constant, which fails
    silently once logits saturate beyond that constant).
    """
    logits = tf.cast(logits, tf.float32)
    true_mask = tf.one_hot(
        tf.cast(y, tf.int32), tf.shape(logits)[-1], on_value=True, off_value=False
    )
    true_logit = tf.reduce_sum(tf.where(true_mask, logits, 0.0), axis=-1)
    best_other = tf.reduce_max(tf.where(true_mask, float("-inf"), logits), axis=-1)
    return best_other - true_logit


def fooled(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Per example: the prediction is not the true label."""
    return tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(y, tf.int32))


def likely_wrong_classes(logits: tf.Tensor, y: tf.Tensor, k: int) -> tf.Tensor:
    """(B, min(k, K - 1)) the most likely wrong classes per example, most likely first: the
    targets of APGD-T and FAB-T (the true class masked out with -inf)."""
    num_classes = int(logits.shape[-1])
    wrong = tf.where(tf.one_hot(y, num_classes) > 0, float("-inf"), logits)
    return tf.math.top_k(wrong, k=min(k, num_classes - 1)).indices


def attack_loss(logits: tf.Tensor, y: tf.Tensor, loss: str) -> tf.Tensor:
    """Per-example loss the attacker maximises: cross-entropy or the CW margin (kappa 50)."""
    logits = tf.cast(logits, tf.float32)
    y = tf.cast(y, tf.int32)
    if loss == "ce":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    return -tf.nn.relu(CW_KAPPA - margin(logits, y))


def kl_divergence(target_probs: tf.Tensor, log_probs: tf.Tensor) -> tf.Tensor:
    """Per-example KL(target || model) from target probabilities and model log-probabilities."""
    safe_log_target = tf.math.log(tf.maximum(target_probs, 1e-12))
    return tf.reduce_sum(target_probs * (safe_log_target - log_probs), axis=-1)


def dlr_loss(logits: tf.Tensor, y: tf.Tensor, target: tf.Tensor | None = None) -> tf.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, Eqs. 6 and 7), per example, to maximise.

    Untargeted: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3); targeted at class t:
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), with z_pi the logits sorted in decreasing order.
    Both are invariant to shifting and scaling the logits, so saturation cannot mask them.

    Args:
      logits: (B, K) logits; K >= 3 untargeted, K >= 4 targeted.
      y: (B,) true labels.
      target: None (untargeted) or (B,) target classes.

    Raises:
      ValueError: too few classes for the loss (the denominator needs the 3rd / 4th logit).
    """
    logits = tf.cast(logits, tf.float32)
    num_classes = logits.shape[-1]
    needed = 3 if target is None else 4
    if num_classes is not None and num_classes < needed:
        kind = "untargeted" if target is None else "targeted"
        raise ValueError(f"{kind} DLR needs at least {needed} classes, got {num_classes}")
    ranked = tf.math.top_k(logits, k=needed).values
    if target is None:
        # -(z_y - max_{i != y} z_i) is the margin of the best wrong class.
        return margin(logits, y) / (ranked[:, 0] - ranked[:, 2] + TINY)
    true_logit = tf.gather(logits, tf.cast(y, tf.int32), batch_dims=1)
    target_logit = tf.gather(logits, tf.cast(target, tf.int32), batch_dims=1)
    denominator = ranked[:, 0] - 0.5 * (ranked[:, 2] + ranked[:, 3])
    return -(true_logit - target_logit) / (denominator + TINY)
