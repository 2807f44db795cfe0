"""Test setup: split the CPU into two logical devices before TensorFlow initialises.

Two logical CPUs give a real 2-replica `MirroredStrategy`; single-replica tests name one device.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from generalist_tf import distribute  # noqa: E402

NUM_TEST_REPLICAS = 2
distribute.configure_cpu_replicas(NUM_TEST_REPLICAS)
