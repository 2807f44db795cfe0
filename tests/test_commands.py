"""The evaluation's entry points (`evaluation.commands`) on a small exported network.

`--mode=eval` through the command line is tested in test_main."""

import json
import os

import numpy as np
import pytest

from generalist_tf import data, export, models
from generalist_tf.evaluation import commands
from tests.helpers_train import config_from


def build():
    return models.build("digits_cnn", (8, 8, 1), 10)


def exported(tmp_path) -> str:
    path = str(tmp_path / "export")
    export.export_saved_model(build(), build, path)
    return path


def arrays(shape=(8, 8, 1), n=16) -> data.Arrays:
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    return data.Arrays("digits", x[:0], y[:0], x[:0], y[:0], x, y, 10)


def eval_config(tmp_path, **overrides):
    return config_from(
        "smoke.cfg",
        workdir=str(tmp_path / "eval"),
        eval_examples=16,
        eval_attacks="pgd20_linf",
        **overrides,
    )


def test_run_on_export_refuses_images_the_model_cannot_take(tmp_path):
    cfg = eval_config(tmp_path)
    with pytest.raises(ValueError, match=r"--model=.* takes images of shape 8x8x1.* has 9x9x1"):
        commands.run_on_export(
            cfg, exported(tmp_path), str(tmp_path), arrays=arrays(shape=(9, 9, 1))
        )


def test_run_on_export_writes_the_report_and_returns_its_table(tmp_path):
    cfg = eval_config(tmp_path)
    workdir = str(tmp_path / "out")
    os.makedirs(workdir)
    report = commands.run_on_export(cfg, exported(tmp_path), workdir, arrays=arrays())
    assert report["num_examples"] == 16 and list(report["attacks"]) == ["pgd20_linf"]
    assert 0.0 <= report["attacks"]["pgd20_linf"]["accuracy"] <= report["clean_accuracy"]
    with open(os.path.join(workdir, "report.json")) as f:
        assert json.load(f)["clean_accuracy"] == report["clean_accuracy"]
    assert report["table"].startswith("# Robustness evaluation\n\n16 examples;")
    assert "| pgd20_linf | linf | 0.3 | 20 |" in report["table"]
