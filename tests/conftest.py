"""Test setup: split the CPU into two logical devices before TensorFlow initialises.

Two logical CPUs give a real 2-replica `MirroredStrategy`; single-replica tests name one device.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from generalist_tf import distribute  # noqa: E402

NUM_TEST_REPLICAS = 2
distribute.configure_cpu_replicas(NUM_TEST_REPLICAS)


@pytest.fixture(autouse=True)
def fresh_collective_keys():
    """Gives each test's strategies collective keys no earlier strategy used.

    Every MirroredStrategy numbers its collective ops from the same key base and TF remembers a
    key's shape for the whole process: a later 2-replica strategy reusing a key with another
    shape aborts every collective of the process. TF's own tests move the base the same way.
    """
    tf.distribute.MirroredStrategy._collective_key_base += 100_000
    yield
