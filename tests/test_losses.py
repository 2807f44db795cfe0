"""The attack losses (`attacks.losses`): the CW margin, DLR and their properties."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from generalist_tf import attacks
from generalist_tf.attacks import losses


def test_cw_loss_masks_the_true_class_exactly():
    logits = tf.constant([[1e9, 0.0, -1e9], [1e9, 0.0, -1e9]])
    loss = losses.attack_loss(logits, tf.constant([0, 1]), "cw").numpy()
    # True class far ahead: margin 1e9 + kappa; true class behind: the loss is at its maximum, 0.
    np.testing.assert_allclose(loss, [-(1e9 + losses.CW_KAPPA), 0.0])


def test_dlr_losses_by_hand_and_invariant_to_scale_and_shift():
    logits = tf.constant([[3.0, 1.0, 2.0, 0.0], [0.0, 1.0, 3.0, 2.0]])
    y = tf.constant([0, 1])
    # Sorted: 3, 2, 1, 0. Untargeted: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3).
    untargeted = [-(3 - 2) / (3 - 1), -(1 - 3) / (3 - 1)]
    # Targeted at t: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).
    target = tf.constant([3, 2])
    targeted = [-(3 - 0) / (3 - 0.5), -(1 - 3) / (3 - 0.5)]
    for scale, shift in ((1.0, 0.0), (1e4, 7.0)):
        z = logits * scale + shift
        np.testing.assert_allclose(losses.dlr_loss(z, y), untargeted, rtol=1e-5)
        np.testing.assert_allclose(losses.dlr_loss(z, y, target), targeted, rtol=1e-5)


def test_dlr_refuses_too_few_classes():
    with pytest.raises(ValueError, match="at least 3 classes, got 2"):
        losses.dlr_loss(tf.zeros([1, 2]), tf.constant([0]))
    with pytest.raises(ValueError, match="at least 4 classes, got 3"):
        losses.dlr_loss(tf.zeros([1, 3]), tf.constant([0]), tf.constant([1]))
    three_classes = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    x = np.zeros((2, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="needs at least 4 classes, got 3"):
        attacks.apgd(
            three_classes, x, np.array([0, 1]), norm="linf", epsilon=0.1, loss="dlr_targeted"
        )
