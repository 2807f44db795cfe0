"""Every attack's properties: PGD (CE, CW), TRADES' KL-PGD, FGSM, MIM, APGD (CE, DLR, targeted
DLR), Square (l_inf, l_2), FAB-T: threat model, strength, exact counts, one trace per budget.

All on CPU with a digits CNN fitted in seconds (`helpers_eval`): every attack stays in its ball
and in [0, 1] and is the identity at epsilon 0; APGD's checkpoints and DLR losses match the
paper's formulas; iteration and query counts are exact; Square never asks for a gradient; APGD
is at least as strong as PGD-20; margin-type losses still work on saturated logits.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from generalist_tf import attacks
from generalist_tf.attacks import fab
from tests import helpers_eval

LINF_TOLERANCE = 1e-6
L2_TOLERANCE = 1e-5
EPSILONS = {"linf": helpers_eval.EPSILON_LINF, "l2": helpers_eval.EPSILON_L2}


def _attack_cases():
    """(id, norm, function(model, x, y, epsilon)) for every attack, with small budgets."""
    return [
        (
            "pgd_linf",
            "linf",
            lambda m, x, y, e: attacks.pgd(
                m, x, y, norm="linf", epsilon=e, step_size=e / 4 or 0.01, num_steps=10
            ),
        ),
        (
            "pgd_l2",
            "l2",
            lambda m, x, y, e: attacks.pgd(
                m, x, y, norm="l2", epsilon=e, step_size=e / 4 or 0.01, num_steps=10
            ),
        ),
        (
            "pgd_cw_linf",
            "linf",
            lambda m, x, y, e: attacks.pgd(
                m, x, y, norm="linf", epsilon=e, step_size=e / 4 or 0.01, num_steps=10, loss="cw"
            ),
        ),
        (
            "trades_kl_linf",
            "linf",
            lambda m, x, y, e: attacks.trades_pgd(
                m, x, epsilon=e, step_size=e / 4 or 0.01, num_steps=10
            ),
        ),
        ("fgsm", "linf", lambda m, x, y, e: attacks.fgsm(m, x, y, epsilon=e)),
        (
            "mim",
            "linf",
            lambda m, x, y, e: attacks.mim(
                m, x, y, epsilon=e, step_size=e / 4 or 0.01, num_steps=5
            ),
        ),
        (
            "apgd_ce_linf",
            "linf",
            lambda m, x, y, e: attacks.apgd(m, x, y, norm="linf", epsilon=e, num_steps=10),
        ),
        (
            "apgd_ce_l2",
            "l2",
            lambda m, x, y, e: attacks.apgd(m, x, y, norm="l2", epsilon=e, num_steps=10),
        ),
        (
            "apgd_dlr_linf",
            "linf",
            lambda m, x, y, e: attacks.apgd(
                m, x, y, norm="linf", epsilon=e, num_steps=10, loss="dlr"
            ),
        ),
        (
            "apgd_t_linf",
            "linf",
            lambda m, x, y, e: attacks.apgd(
                m, x, y, norm="linf", epsilon=e, num_steps=5, loss="dlr_targeted", target_classes=2
            ),
        ),
        (
            "apgd_t_l2",
            "l2",
            lambda m, x, y, e: attacks.apgd(
                m, x, y, norm="l2", epsilon=e, num_steps=5, loss="dlr_targeted", target_classes=2
            ),
        ),
        (
            "square",
            "linf",
            lambda m, x, y, e: attacks.square(m, x, y, epsilon=e, num_queries=50),
        ),
        (
            "square_l2",
            "l2",
            lambda m, x, y, e: attacks.square_l2(m, x, y, epsilon=e, num_queries=50),
        ),
        (
            "fab_t_linf",
            "linf",
            lambda m, x, y, e: fab.fab_t(
                m, x, y, norm="linf", epsilon=e, num_steps=10, target_classes=3
            ),
        ),
        (
            "fab_t_l2",
            "l2",
            lambda m, x, y, e: fab.fab_t(
                m, x, y, norm="l2", epsilon=e, num_steps=10, target_classes=3
            ),
        ),
    ]


CASES = _attack_cases()


@pytest.fixture(scope="module")
def model():
    return helpers_eval.fitted()


@pytest.fixture(scope="module")
def batch():
    return helpers_eval.subset(64)


@pytest.mark.parametrize("name, norm, run", CASES, ids=[case[0] for case in CASES])
def test_attack_stays_in_ball_and_box_and_lowers_accuracy(model, batch, name, norm, run):
    x, y = batch
    epsilon = EPSILONS[norm]
    x_adv = np.asarray(run(model, x, y, epsilon))
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    if norm == "linf":
        assert helpers_eval.linf_distance(x_adv, x).max() <= epsilon + LINF_TOLERANCE
    else:
        assert helpers_eval.l2_distance(x_adv, x).max() <= epsilon + L2_TOLERANCE
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert helpers_eval.accuracy(model, x_adv, y) < helpers_eval.accuracy(model, x, y) - 0.1


@pytest.mark.parametrize("name, norm, run", CASES, ids=[case[0] for case in CASES])
def test_epsilon_zero_returns_x(model, batch, name, norm, run):
    x, y = batch
    np.testing.assert_array_equal(np.asarray(run(model, x, y, 0.0)), x)


@pytest.mark.parametrize(
    "name, run",
    [
        (
            "pgd",
            lambda m, x, y, e: attacks.pgd(
                m, x, y, norm="linf", epsilon=e, step_size=e / 4, num_steps=3
            ),
        ),
        ("mim", lambda m, x, y, e: attacks.mim(m, x, y, epsilon=e, step_size=e / 4, num_steps=3)),
        ("apgd", lambda m, x, y, e: attacks.apgd(m, x, y, norm="linf", epsilon=e, num_steps=3)),
    ],
)
def test_one_trace_serves_every_epsilon(model, batch, name, run):
    """Budgets enter the compiled loops as tensors: a new epsilon must not retrace."""
    from generalist_tf.attacks import auto_pgd, momentum, projected

    compiled = {"pgd": projected._PGD, "mim": momentum._MIM, "apgd": auto_pgd._APGD}[name]
    x, y = batch
    run(model, x[:8], y[:8], 0.05)
    traces = compiled.graph.experimental_get_tracing_count()
    for epsilon in (0.06, 0.07, 0.3):
        run(model, x[:8], y[:8], epsilon)
    assert compiled.graph.experimental_get_tracing_count() == traces


def test_apgd_checkpoints_follow_the_paper():
    # p: 0, .22, .41, .57, .70, .80, .87, .93, .99 (Croce & Hein 2020, Sec. 3.2).
    assert attacks.apgd_checkpoints(100) == (0, 22, 41, 57, 70, 80, 87, 93, 99)
    assert attacks.apgd_checkpoints(1000)[:3] == (0, 220, 410)
    for steps in (1, 5, 10, 37):
        checkpoints = attacks.apgd_checkpoints(steps)
        assert checkpoints[0] == 0 and checkpoints[-1] <= steps
        assert list(checkpoints) == sorted(set(checkpoints))


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
        np.testing.assert_allclose(attacks.dlr_loss(z, y), untargeted, rtol=1e-5)
        np.testing.assert_allclose(attacks.dlr_loss(z, y, target), targeted, rtol=1e-5)


def test_dlr_refuses_too_few_classes():
    with pytest.raises(ValueError, match="at least 3 classes, got 2"):
        attacks.dlr_loss(tf.zeros([1, 2]), tf.constant([0]))
    with pytest.raises(ValueError, match="at least 4 classes, got 3"):
        attacks.dlr_loss(tf.zeros([1, 3]), tf.constant([0]), tf.constant([1]))
    three_classes = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    x = np.zeros((2, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="needs at least 4 classes, got 3"):
        attacks.apgd(
            three_classes, x, np.array([0, 1]), norm="linf", epsilon=0.1, loss="dlr_targeted"
        )


def test_square_p_schedule_halves_at_the_papers_iterations():
    def p(iteration, queries=10_000):
        return float(attacks.square_p(iteration, queries, 0.8))

    expected = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 200: 0.2, 201: 0.1, 8001: 0.8 / 512}
    for iteration, value in expected.items():
        assert p(iteration) == pytest.approx(value), iteration
    # Rescaled to another budget: iteration 2 of 1000 is iteration 20 of 10,000.
    assert p(2, 1000) == pytest.approx(0.4)


class _Counting:
    """A model that counts its calls in a variable (the count survives tf.function)."""

    def __init__(self, model):
        self.model = model
        self.calls = tf.Variable(0, dtype=tf.int64)

    def __call__(self, images, training=False):
        self.calls.assign_add(1)
        return self.model(images, training=training)


def _true_class_model(num_classes=10):
    """A model that always predicts class 0 with a margin of 100: never fooled."""
    inputs = keras.Input((8, 8, 1))
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant([100.0] + [0.0] * (num_classes - 1)),
    )(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, logits)


def test_square_makes_exactly_num_queries_queries(batch):
    x, _ = batch
    counting = _Counting(_true_class_model())
    attacks.square(counting, x, np.zeros(len(x), np.int64), epsilon=0.1, num_queries=37)
    assert int(counting.calls.numpy()) == 37


def test_apgd_takes_exactly_num_steps_per_run(batch):
    x, y = batch
    counting = _Counting(helpers_eval.fitted())
    attacks.apgd(counting, x, y, norm="linf", epsilon=0.1, num_steps=13, restarts=2)
    # One clean call to find the classes, then per run: x, the random start and 13 steps.
    assert int(counting.calls.numpy()) == 1 + 2 * (2 + 13)


def test_square_never_asks_for_a_gradient(model):
    """Square through a model whose gradient raises: a score-based attack must not need it."""
    x, y = helpers_eval.subset()

    @tf.custom_gradient
    def no_gradient(images):
        def gradient(upstream):
            raise AssertionError("Square Attack asked for a gradient")

        return tf.identity(images), gradient

    def gradient_free(images, training=False):
        return model(no_gradient(images), training=False)

    x_adv = attacks.square(gradient_free, x, y, epsilon=0.1, num_queries=300)
    assert helpers_eval.accuracy(model, x_adv, y) < helpers_eval.accuracy(model, x, y) - 0.2


def test_mim_xla_equals_graph_mode(model, batch):
    x, y = batch
    runs = [
        attacks.mim(model, x, y, epsilon=0.1, step_size=0.025, num_steps=5, jit_compile=jit)
        for jit in ("false", "true")
    ]
    np.testing.assert_allclose(runs[0].numpy(), runs[1].numpy(), atol=1e-5)


def test_apgd_is_deterministic_given_seed(model, batch):
    x, y = batch

    def run(seed):
        return attacks.apgd(model, x, y, norm="linf", epsilon=0.1, num_steps=10, seed=seed)

    np.testing.assert_array_equal(run(3).numpy(), run(3).numpy())
    assert not np.array_equal(run(3).numpy(), run(4).numpy())


def _apgd_not_weaker_than_pgd20(model, x, y, epsilon):
    pgd20 = attacks.pgd(
        model,
        x,
        y,
        norm="linf",
        epsilon=epsilon,
        step_size=epsilon / 4,
        num_steps=20,
        jit_compile="false",
        seed=tf.constant([0, 0]),
    )
    apgd_ce = attacks.apgd(model, x, y, norm="linf", epsilon=epsilon, num_steps=100)
    pgd_accuracy = helpers_eval.accuracy(model, pgd20, y)
    apgd_accuracy = helpers_eval.accuracy(model, apgd_ce, y)
    # Mid-range, so that a weaker attack would show.
    assert 0.1 < apgd_accuracy < helpers_eval.accuracy(model, x, y) - 0.1
    assert apgd_accuracy <= pgd_accuracy, f"APGD-CE {apgd_accuracy:.4f} > PGD-20 {pgd_accuracy:.4f}"


def test_apgd_ce_at_least_as_strong_as_pgd20_on_a_standard_model():
    arrays = helpers_eval.digits()
    _apgd_not_weaker_than_pgd20(
        helpers_eval.fitted(), arrays.x_test, arrays.y_test, helpers_eval.EPSILON_LINF
    )


@pytest.mark.slow
def test_apgd_ce_at_least_as_strong_as_pgd20_on_a_pgd_trained_model():
    arrays = helpers_eval.digits()
    # Trained at epsilon 0.1, where it keeps ~90%: attacked at 2x, where it is mid-range.
    _apgd_not_weaker_than_pgd20(
        helpers_eval.pgd_trained(), arrays.x_test, arrays.y_test, 2 * helpers_eval.EPSILON_LINF
    )


def test_margin_losses_still_attack_saturated_logits():
    """Logits x 1e4: the CE gradient vanishes, the CW margin, DLR and Square do not care."""
    x, y = helpers_eval.subset()
    saturated = keras.Sequential([helpers_eval.fitted(), keras.layers.Rescaling(1e4)])
    clean = helpers_eval.accuracy(saturated, x, y)
    epsilon = helpers_eval.EPSILON_LINF
    budget = dict(
        norm="linf",
        epsilon=epsilon,
        step_size=epsilon / 4,
        num_steps=30,
        jit_compile="false",
        seed=tf.constant([0, 0]),
    )
    classifier = attacks.as_classifier(saturated)
    ce = helpers_eval.accuracy(saturated, attacks.pgd(classifier, x, y, loss="ce", **budget), y)
    cw = helpers_eval.accuracy(saturated, attacks.pgd(classifier, x, y, loss="cw", **budget), y)
    apgd_t = helpers_eval.accuracy(
        saturated,
        attacks.apgd(
            saturated,
            x,
            y,
            norm="linf",
            epsilon=epsilon,
            num_steps=20,
            loss="dlr_targeted",
            target_classes=3,
        ),
        y,
    )
    square = helpers_eval.accuracy(
        saturated, attacks.square(saturated, x, y, epsilon=epsilon, num_queries=300), y
    )
    assert ce > clean - 0.05  # Really saturated: cross-entropy stalls.
    for name, value in (("cw", cw), ("apgd_t", apgd_t), ("square", square)):
        assert value < 0.75 * clean, f"{name}: {value:.3f} (clean {clean:.3f})"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(norm="l3"), "norm"),
        (dict(loss="hinge"), "loss"),
        (dict(epsilon=-0.1), "epsilon"),
        (dict(num_steps=0), "num_steps"),
        (dict(restarts=0), "restarts"),
        (dict(target_classes=1.5), "target_classes"),
    ],
)
def test_apgd_rejects_invalid_arguments(batch, kwargs, message):
    x, y = batch
    arguments = dict(norm="linf", epsilon=0.1, num_steps=5)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        attacks.apgd(None, x, y, **arguments)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(epsilon=-1.0), "epsilon"),
        (dict(num_queries=0), "num_queries"),
        (dict(p_init=0.0), "p_init"),
    ],
)
def test_square_rejects_invalid_arguments(batch, kwargs, message):
    x, y = batch
    arguments = dict(epsilon=0.1, num_queries=10)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        attacks.square(None, x, y, **arguments)
