"""PGD, TRADES and MSD: the threat-model properties, strength against cleverhans, XLA and replicas.

Every test runs on CPU and none is skippable: the ball and pixel-box bounds for both norms with
and without a random start, epsilon 0 as the identity, a loss that rises, accuracy under attack on
a digits CNN fitted in a few seconds (checked against cleverhans' reference PGD), XLA equal to
graph mode, PGD inside a 2-replica `strategy.run`, the CW margin on saturated logits, and argument
errors that name the argument.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from generalist_tf import attacks, models
from generalist_tf.attacks import projected
from tests import helpers_eval
from tests.helpers_eval import accuracy, l2_distance, linf_distance
from tests.helpers_train import two_replica_strategy

# A budget per norm for 8x8 digits in [0, 1]: PGD-10 with step 2.5 * epsilon / num_steps.
BUDGETS = {
    "linf": dict(epsilon=0.1, step_size=0.025, num_steps=10),
    "l2": dict(epsilon=0.5, step_size=0.125, num_steps=10),
}
# Tolerances of the bounds: float32 rounding of x + delta - x.
LINF_TOLERANCE = 1e-6
L2_TOLERANCE = 1e-5
# PGD-20 against cleverhans: 360 test digits (the whole test split), epsilon chosen so that the
# fitted CNN keeps a mid-range accuracy and a difference in strength shows.
REFERENCE_EPSILON = 0.1
REFERENCE_STEPS = 20
REFERENCE_STEP_SIZE = 2.5 * REFERENCE_EPSILON / REFERENCE_STEPS
REFERENCE_RESTARTS = 3
ACCURACY_AGREEMENT = 0.02
LARGE_EPSILON = 0.5


@pytest.fixture(scope="module")
def digits():
    return helpers_eval.digits()


@pytest.fixture(scope="module")
def fitted():
    """digits_cnn fitted with Adam for 8 epochs (about 3 s on CPU; ~99% clean test accuracy)."""
    return helpers_eval.fitted()


@pytest.fixture(scope="module")
def batch(digits):
    return digits.x_test[:64], digits.y_test[:64]


def mean_ce(model, x, y) -> float:
    return float(np.mean(attacks.attack_loss(model(x, training=False), y, "ce")))


def assert_in_ball(x_adv, x, *, norm, epsilon):
    if norm == "linf":
        assert linf_distance(x_adv, x).max() <= epsilon + LINF_TOLERANCE
    else:
        assert l2_distance(x_adv, x).max() <= epsilon + L2_TOLERANCE


def assert_in_box(x_adv):
    assert np.min(x_adv) >= 0.0 and np.max(x_adv) <= 1.0


@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_ball_and_box_and_raises_loss(fitted, batch, norm, random_start):
    x, y = batch
    x_adv = projected.pgd(
        fitted, x, y, norm=norm, random_start=random_start, jit_compile="false", **BUDGETS[norm]
    ).numpy()
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    assert_in_ball(x_adv, x, norm=norm, epsilon=BUDGETS[norm]["epsilon"])
    assert_in_box(x_adv)
    # Not a trivial bound: the attack uses a good part of the budget.
    distance = linf_distance if norm == "linf" else l2_distance
    assert np.mean(distance(x_adv, x)) > 0.5 * BUDGETS[norm]["epsilon"]
    assert mean_ce(fitted, x_adv, y) > mean_ce(fitted, x, y)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_alone_stays_in_ball_and_box(batch, fitted, norm):
    x, y = batch
    budget = dict(BUDGETS[norm], num_steps=0)
    x_adv = projected.pgd(fitted, x, y, norm=norm, random_start=True, jit_compile="false", **budget)
    assert_in_ball(x_adv, x, norm=norm, epsilon=budget["epsilon"])
    assert_in_box(x_adv)
    assert not np.array_equal(x_adv, x)


@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_epsilon_zero_returns_x_exactly(fitted, batch, norm, random_start):
    x, y = batch
    budget = dict(BUDGETS[norm], epsilon=0.0)
    x_adv = projected.pgd(
        fitted, x, y, norm=norm, random_start=random_start, jit_compile="false", **budget
    )
    np.testing.assert_array_equal(x_adv.numpy(), x)


def test_trades_and_msd_return_x_at_epsilon_zero(fitted, batch):
    x, y = batch
    trades = projected.trades_pgd(
        fitted, x, epsilon=0.0, step_size=0.01, num_steps=2, jit_compile="false"
    )
    np.testing.assert_array_equal(trades.numpy(), x)
    msd = projected.msd(
        fitted, x, y, epsilons=(0.0, 0.0), step_sizes=(0.01, 0.1), num_steps=2, jit_compile="false"
    )
    np.testing.assert_array_equal(msd.numpy(), x)


def test_pgd20_agrees_with_cleverhans(fitted, digits):
    """Same l_inf budget, same 360 examples: equal images from x, equal strength from random starts."""
    x, y = digits.x_test, digits.y_test
    budget = dict(
        epsilon=REFERENCE_EPSILON, step_size=REFERENCE_STEP_SIZE, num_steps=REFERENCE_STEPS
    )

    def reference(rand_init):
        return projected_gradient_descent(
            fitted,
            tf.constant(x),
            REFERENCE_EPSILON,
            REFERENCE_STEP_SIZE,
            REFERENCE_STEPS,
            np.inf,
            clip_min=0.0,
            clip_max=1.0,
            y=tf.constant(y),
            rand_init=rand_init,
            sanity_checks=False,
        )

    # From x itself both attacks are deterministic and follow the same sign steps.
    ours = projected.pgd(
        fitted, x, y, norm="linf", random_start=False, jit_compile="false", **budget
    )
    np.testing.assert_allclose(ours.numpy(), reference(False).numpy(), atol=1e-6)

    tf.random.set_seed(0)
    ours_accuracy = np.mean(
        [
            accuracy(
                fitted, projected.pgd(fitted, x, y, norm="linf", jit_compile="false", **budget), y
            )
            for _ in range(REFERENCE_RESTARTS)
        ]
    )
    reference_accuracy = np.mean(
        [accuracy(fitted, reference(True), y) for _ in range(REFERENCE_RESTARTS)]
    )
    # Mid-range, so the comparison can tell a weaker attack from an equal one.
    assert 0.2 < reference_accuracy < 0.9 < accuracy(fitted, x, y)
    assert abs(ours_accuracy - reference_accuracy) <= ACCURACY_AGREEMENT, (
        f"PGD-20 accuracy: ours {ours_accuracy:.4f}, cleverhans {reference_accuracy:.4f}"
    )


def test_large_epsilon_breaks_the_model(fitted, digits):
    x, y = digits.x_test, digits.y_test
    x_adv = projected.pgd(
        fitted,
        x,
        y,
        norm="linf",
        epsilon=LARGE_EPSILON,
        step_size=2.5 * LARGE_EPSILON / REFERENCE_STEPS,
        num_steps=REFERENCE_STEPS,
        jit_compile="false",
    )
    assert accuracy(fitted, x_adv, y) < 0.05


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_xla_equals_graph_mode_without_random_start(fitted, batch, norm):
    x, y = batch
    runs = [
        projected.pgd(
            fitted, x, y, norm=norm, random_start=False, jit_compile=jit, **BUDGETS[norm]
        ).numpy()
        for jit in ("false", "true")
    ]
    # XLA and oneDNN round float32 convolutions differently; over 10 steps that reaches ~1e-5 on
    # an AVX2 CPU and 1.6e-4 (25 of 4,096 pixels above 1e-4, l_2) on an AVX512/AMX Xeon, whose
    # oneDNN kernels accumulate in another order. A wrong step would move pixels by ~step_size.
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-3)
    assert np.mean(np.abs(runs[0] - runs[1])) < 1e-5


@pytest.mark.parametrize("jit_compile", ["false", "true"])
def test_pgd_inside_two_replica_strategy_run(fitted, batch, jit_compile):
    """Each replica attacks its half of the batch on its own device, like one device would."""
    x, y = batch
    strategy = two_replica_strategy()
    with strategy.scope():
        model = models.build("digits_cnn", x.shape[1:], 10)
    model.set_weights(fitted.get_weights())
    inputs = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))
    )
    budget = BUDGETS["linf"]

    @tf.function
    def distributed_attack(images, labels):
        def replica_fn(images, labels):
            return projected.pgd(
                model,
                images,
                labels,
                norm="linf",
                random_start=False,
                jit_compile=jit_compile,
                **budget,
            )

        return strategy.run(replica_fn, args=(images, labels))

    assert strategy.num_replicas_in_sync == 2
    per_replica = strategy.experimental_local_results(distributed_attack(*next(iter(inputs))))
    assert [int(part.shape[0]) for part in per_replica] == [len(x) // 2] * 2
    combined = np.concatenate([part.numpy() for part in per_replica])
    single = projected.pgd(
        fitted, x, y, norm="linf", random_start=False, jit_compile="false", **budget
    )
    np.testing.assert_allclose(combined, single.numpy(), atol=1e-5)
    assert_in_ball(combined, x, norm="linf", epsilon=budget["epsilon"])


def test_cw_loss_attacks_a_model_with_saturated_logits(fitted, digits):
    x, y = digits.x_test, digits.y_test
    saturated = keras.Sequential([fitted, keras.layers.Rescaling(1e4)])
    clean = accuracy(saturated, x, y)
    budget = dict(epsilon=0.15, step_size=0.02, num_steps=20)

    def attacked_accuracy(loss):
        x_adv = projected.pgd(
            saturated, x, y, norm="linf", loss=loss, jit_compile="false", **budget
        )
        assert np.all(np.isfinite(x_adv.numpy()))
        assert_in_ball(x_adv, x, norm="linf", epsilon=budget["epsilon"])
        return accuracy(saturated, x_adv, y)

    # The setting is really saturated: cross-entropy's gradient vanishes and its attack stalls ...
    assert attacked_accuracy("ce") > clean - 0.05
    # ... while the margin keeps a gradient and finds adversarial examples.
    assert attacked_accuracy("cw") < 0.5 * clean


def test_trades_stays_in_ball_and_box_and_moves_the_prediction(fitted, batch):
    x, _ = batch
    budget = BUDGETS["linf"]
    x_adv = projected.trades_pgd(fitted, x, jit_compile="false", **budget)
    assert_in_ball(x_adv, x, norm="linf", epsilon=budget["epsilon"])
    assert_in_box(x_adv)
    clean_probs = tf.nn.softmax(fitted(x, training=False))
    kl = attacks.kl_divergence(clean_probs, tf.nn.log_softmax(fitted(x_adv, training=False)))
    assert float(tf.reduce_mean(kl)) > 0.1


def test_msd_stays_in_one_of_its_balls_and_box(fitted, batch):
    x, y = batch
    epsilons = (BUDGETS["linf"]["epsilon"], BUDGETS["l2"]["epsilon"])
    x_adv = projected.msd(
        fitted,
        x,
        y,
        epsilons=epsilons,
        step_sizes=(BUDGETS["linf"]["step_size"], BUDGETS["l2"]["step_size"]),
        num_steps=10,
        jit_compile="false",
    ).numpy()
    in_linf = linf_distance(x_adv, x) <= epsilons[0] + LINF_TOLERANCE
    in_l2 = l2_distance(x_adv, x) <= epsilons[1] + L2_TOLERANCE
    assert np.all(in_linf | in_l2)
    assert_in_box(x_adv)
    assert mean_ce(fitted, x_adv, y) > mean_ce(fitted, x, y)


@pytest.mark.parametrize(
    "argument, value",
    [
        ("norm", "l3"),
        ("epsilon", -0.1),
        ("num_steps", -1),
        ("num_steps", 2.5),
        ("step_size", 0.0),
        ("loss", "hinge"),
        ("jit_compile", "maybe"),
    ],
)
def test_pgd_rejects_invalid_arguments(batch, argument, value):
    x, y = batch
    kwargs = dict(BUDGETS["linf"], norm="linf", jit_compile="false")
    kwargs[argument] = value
    # The model is never called: arguments are checked before tracing.
    with pytest.raises(ValueError, match=argument) as error:
        projected.pgd(None, x, y, **kwargs)
    assert str(value) in str(error.value)


@pytest.mark.parametrize(
    "argument, value", [("epsilon", -0.1), ("num_steps", 2.5), ("step_size", 0.0)]
)
def test_trades_rejects_invalid_arguments(batch, argument, value):
    kwargs = dict(BUDGETS["linf"], jit_compile="false")
    kwargs[argument] = value
    with pytest.raises(ValueError, match=argument):
        projected.trades_pgd(None, batch[0], **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(norms=("linf", "l3")), "norm"),
        (dict(epsilons=(0.1, -0.5)), "epsilon"),
        (dict(num_steps=-1), "num_steps"),
        (dict(epsilons=(0.1,)), "one epsilon and step size per norm"),
    ],
)
def test_msd_rejects_invalid_arguments(batch, kwargs, message):
    x, y = batch
    arguments = dict(epsilons=(0.1, 0.5), step_sizes=(0.025, 0.125), num_steps=5)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        projected.msd(None, x, y, jit_compile="false", **arguments)
