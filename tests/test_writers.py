"""The evaluation's files (`evaluation.writers`): report.json, report.md, the curves and TensorBoard."""

import json
import os

import pytest
import tensorflow as tf

from generalist_tf.evaluation import suite, writers
from tests import helpers_eval

REPORT_KEYS = {
    "clean_accuracy",
    "num_examples",
    "attacks",
    "worst_case",
    "union_accuracy",
    "autoattack_standard",
    "autoattack_budgets",
    "intervals",
    "epsilons",
    "subset",
    "alarms",
}


ENTRY_KEYS = {
    "accuracy",
    "norm",
    "epsilon",
    "epsilon_text",
    "num_steps",
    "restarts",
    "seconds",
    "num_examples",
    "interval",
}


def test_report_json_has_exactly_the_documented_fields(full_run):
    report, workdir = full_run
    with open(os.path.join(workdir, writers.REPORT_JSON)) as f:
        written = json.load(f)
    assert written == report
    assert set(report) == REPORT_KEYS
    assert isinstance(report["clean_accuracy"], float) and report["num_examples"] == 128
    assert list(report["attacks"]) == list(suite.DEFAULT_ATTACKS)
    for name, entry in report["attacks"].items():
        assert set(entry) == ENTRY_KEYS | ({"queries"} if name.startswith("square") else set()), (
            name
        )
        # A count of the 128 examples, robust only where the clean pass was right.
        assert isinstance(entry["accuracy"], float)
        assert entry["accuracy"] * 128 == pytest.approx(round(entry["accuracy"] * 128))
        assert entry["accuracy"] <= report["clean_accuracy"]
        assert entry["norm"] == name.rsplit("_", 1)[1]
        assert entry["epsilon"] == (
            helpers_eval.EPSILON_LINF if entry["norm"] == "linf" else helpers_eval.EPSILON_L2
        )
        assert isinstance(entry["num_steps"], int) and isinstance(entry["restarts"], int)
        assert isinstance(entry["seconds"], float) and entry["seconds"] > 0
    steps = {name: entry["num_steps"] for name, entry in report["attacks"].items()}
    assert steps == {
        "fgsm_linf": 1,
        "pgd20_linf": 20,
        "pgd100_linf": 100,
        "cw_linf": 30,
        "mim_linf": 20,
        "apgd_ce_linf": 50,
        "apgd_t_linf": 50,
        "square_linf": 300,
        "pgd20_l2": 20,
        "pgd100_l2": 100,
        "apgd_ce_l2": 50,
    }
    assert set(report["worst_case"]) == {"linf", "l2"}
    assert all(isinstance(v, float) for v in report["worst_case"].values())
    assert isinstance(report["union_accuracy"], float) and isinstance(report["alarms"], list)


def test_markdown_report_is_a_paper_table(full_run):
    report, workdir = full_run
    with open(os.path.join(workdir, writers.REPORT_MD)) as f:
        text = f.read()
    assert (
        "| attack | norm | epsilon | steps | restarts | accuracy (%) | 95% interval (%) | seconds |"
        in text
    )
    for name in suite.DEFAULT_ATTACKS:
        assert f"| {name} |" in text
    assert "PGD-30 on the CW margin" in text
    assert (
        f"| cw_linf | linf | 0.1 | 30 | 1 | {100 * report['attacks']['cw_linf']['accuracy']:.2f} |"
        in text
    )


def test_accuracy_vs_epsilon_plots_and_curves(full_run):
    report, workdir = full_run
    for norm in ("linf", "l2"):
        with open(os.path.join(workdir, writers.curve_png(norm)), "rb") as f:
            assert f.read(8) == helpers_eval.PNG_MAGIC
    with open(os.path.join(workdir, writers.CURVE_JSON)) as f:
        curves = json.load(f)
    for norm in ("linf", "l2"):
        accuracies = curves[norm]["accuracies"]
        assert curves[norm]["fractions"] == list(suite.EPSILON_FRACTIONS)
        assert accuracies[0] == report["clean_accuracy"]
        assert (
            accuracies[suite.EPSILON_FRACTIONS.index(1.0)]
            == (report["attacks"][f"pgd20_{norm}"]["accuracy"])
        )
        assert accuracies[-1] == 0.0


def _scalars(logdir: str) -> dict[str, dict[int, float]]:
    scalars = {}
    for name in os.listdir(logdir):
        for record in tf.data.TFRecordDataset(os.path.join(logdir, name)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, {})[event.step] = number
    return scalars


def test_tensorboard_scalars(full_run):
    report, workdir = full_run
    scalars = _scalars(os.path.join(workdir, writers.SUMMARY_DIR))
    assert scalars[writers.CLEAN_ACCURACY_METRIC][0] == pytest.approx(report["clean_accuracy"])
    for name, entry in report["attacks"].items():
        assert scalars[f"eval/{name}/accuracy"][0] == pytest.approx(entry["accuracy"])
    assert scalars["eval/worst_case_linf"][0] == pytest.approx(report["worst_case"]["linf"])
    assert scalars[writers.UNION_ACCURACY_METRIC][0] == pytest.approx(report["union_accuracy"])
    assert scalars[writers.NUM_ALARMS_METRIC][0] == 0
    assert sorted(scalars["eval/accuracy_vs_epsilon_l2"]) == [0, 25, 50, 100, 200, 400]
