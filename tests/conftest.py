"""Test setup: split the CPU into two logical devices before TensorFlow initialises.

Two logical CPUs give a real 2-replica `MirroredStrategy`; single-replica tests name one device.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from generalist_tf import compat, distribute  # noqa: E402

NUM_TEST_REPLICAS = 2
distribute.configure_cpu_replicas(NUM_TEST_REPLICAS)


@pytest.fixture(autouse=True)
def fresh_collective_keys():
    """Gives each test's strategies collective keys no earlier strategy used (see
    `compat.fresh_collective_keys`)."""
    compat.fresh_collective_keys()
    yield


@pytest.fixture(scope="session")
def full_run(tmp_path_factory):
    """The fast evaluation of the fitted digits CNN, once per session: (report, its workdir).
    Shared by the runner's and the writers' tests."""
    from tests import helpers_eval

    workdir = tmp_path_factory.mktemp("full")
    return helpers_eval.evaluate(helpers_eval.fitted(), workdir), str(workdir)


@pytest.fixture(scope="module")
def model():
    """The fitted digits CNN (`helpers_eval.fitted`), for the attacks' tests; a test file that
    defines its own `model` fixture overrides this one."""
    from tests import helpers_eval

    return helpers_eval.fitted()


@pytest.fixture(scope="module")
def batch():
    """The first 64 test digits and their labels (`helpers_eval.subset`)."""
    from tests import helpers_eval

    return helpers_eval.subset(64)


@pytest.fixture(scope="module")
def ends():
    """Two digits CNNs (with BatchNorm) of one architecture, the frontier's two ends: the fitted
    one and a perturbed copy whose BN statistics differ too, so every weight of an
    interpolation is non-trivial."""
    import numpy as np

    from generalist_tf import tradeoff
    from generalist_tf.algorithm import mixing
    from tests import helpers_eval

    robust = helpers_eval.fitted()
    natural = tradeoff.copy_network(robust)
    rng = np.random.default_rng(1)
    for w in mixing.mixable_weights(natural):
        w.assign(w.numpy() + rng.normal(scale=0.05, size=w.shape).astype(np.float32) + 0.01)
    return robust, natural


@pytest.fixture(scope="module")
def split():
    """(validation, test): 64 test digits each, disjoint."""
    from tests import helpers_eval

    x, y = helpers_eval.subset(128)
    return (x[:64], y[:64]), (x[64:], y[64:])
