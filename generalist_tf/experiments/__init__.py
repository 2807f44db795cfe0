"""Experiment drivers on top of the library, each with its own entry point.

  python -m generalist_tf.experiments.bench [--quick]        speed of this machine (ratios)
  python -m generalist_tf.experiments.repro --suite=digits   the reproduction tables

Nothing in `generalist_tf` outside this package imports it (tests/test_build.py checks), so the
library does not load cleverhans, ART or the drivers' flags.
"""
