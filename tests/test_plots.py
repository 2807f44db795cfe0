"""The robustness-accuracy trade-off plot (`evaluation.plots`)."""

import os

import pytest

from generalist_tf.evaluation import plots
from tests import helpers_eval


def test_plot_tradeoff_draws_several_models(tmp_path):
    path = str(tmp_path / "tradeoff.png")
    plots.plot_tradeoff(
        {"natural": (0.99, 0.0), "pgd_at": (0.9, 0.6), "generalist": (0.95, 0.55)}, path
    )
    with open(path, "rb") as f:
        assert f.read(8) == helpers_eval.PNG_MAGIC
    # With standard deviations as error bars and a named robust accuracy (as repro draws it).
    os.remove(path)
    plots.plot_tradeoff(
        {"pgd_at": (0.9, 0.6), "generalist": (0.95, 0.55)},
        path,
        robust="worst-case l_inf accuracy",
        spread={"pgd_at": (0.01, 0.02)},
    )
    with open(path, "rb") as f:
        assert f.read(8) == helpers_eval.PNG_MAGIC
    with pytest.raises(ValueError, match="at least one model"):
        plots.plot_tradeoff({}, path)
