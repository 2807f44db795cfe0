"""One attack over every batch (`evaluation.per_example`): PGD-20 agrees with cleverhans."""

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from generalist_tf import attacks
from generalist_tf.evaluation import per_example, suite
from tests import helpers_eval

# Agreement with the reference implementations (fractions of the test split).
CLEVERHANS_AGREEMENT = 0.02


REFERENCE_SEEDS = 3


def test_pgd20_agrees_with_cleverhans():
    """Our pgd20_linf as the suite runs it vs cleverhans' PGD with the same budget, true labels."""
    arrays = helpers_eval.digits()
    x, y = arrays.x_test, arrays.y_test
    model = helpers_eval.fitted()
    classifier = attacks.as_classifier(model)
    epsilon = helpers_eval.EPSILON_LINF
    pgd20 = suite.attack_suite()["pgd20_linf"]
    ours = np.mean(
        [
            per_example.run_attack(classifier, x, y, pgd20, epsilon=epsilon, seed=seed).mean()
            for seed in range(REFERENCE_SEEDS)
        ]
    )
    tf.random.set_seed(0)
    reference = np.mean(
        [
            helpers_eval.accuracy(
                model,
                projected_gradient_descent(
                    model,
                    tf.constant(x),
                    epsilon,
                    suite.STEP_FRACTION * epsilon,
                    20,
                    np.inf,
                    clip_min=0.0,
                    clip_max=1.0,
                    y=tf.constant(y),
                    rand_init=True,
                    sanity_checks=False,
                ),
                y,
            )
            for _ in range(REFERENCE_SEEDS)
        ]
    )
    assert 0.2 < reference < 0.9
    assert abs(ours - reference) <= CLEVERHANS_AGREEMENT, (
        f"ours {ours:.4f}, cleverhans {reference:.4f}"
    )
