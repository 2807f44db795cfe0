"""One reproduction run (`experiments.repro_runs`): its directory, command, metrics and reuse."""

import json
import os
import shlex

from generalist_tf.experiments import repro_runs


def test_run_command_quotes_for_the_shell():
    line = repro_runs.run_command("generalist_d", 2, "digits", {"mixing": "a=0:1;b=0:0"})
    assert shlex.split(line) == [
        "python",
        "-m",
        "generalist_tf.main",
        "--flagfile=flags/digits_generalist_d.cfg",
        "--mixing=a=0:1;b=0:0",
        "--seed=2",
    ]


def test_mnist_suite_runs_the_digits_recipes_on_mnist_with_the_small_cnn():
    """The command alone (fast); test_repro's slow test trains it on a prepared MNIST."""
    command = repro_runs.run_command("standard", 0, "mnist", {})
    assert "--flagfile=flags/digits_standard.cfg" in command
    assert "--dataset=mnist" in command and "--model=small_cnn" in command


def test_command_runs_the_suite_s_flagfile_with_its_flags():
    argv = repro_runs.command(
        "pgd_at", repro_runs.run_flags(3, "fashion_mnist", {"epochs": 2}), "fashion_mnist"
    )
    assert argv[1:] == [
        "-m",
        "generalist_tf.main",
        "--flagfile=flags/fashion_mnist_pgd_at.cfg",
        "--epochs=2",
        "--seed=3",
    ]
    assert repro_runs.run_dir("/r", "gd_no_ema", 1) == os.path.join("/r", "gd_no_ema", "seed1")


def write_finished_run(workdir):
    os.makedirs(workdir)
    report = {
        "clean_accuracy": 0.9,
        "attacks": {"pgd20_linf": {"accuracy": 0.6}},
        "worst_case": {"linf": 0.5, "l2": 0.4},
        "union_accuracy": 0.3,
        "alarms": ["one"],
        "num_examples": 64,
    }
    test = {
        "best/clean_accuracy": 0.91,
        "best/pgd_accuracy": 0.61,
        "global/clean_accuracy": 0.92,
        "global/pgd_accuracy": 0.62,
    }
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(report, f)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"test": test, "best_epoch": 3, "epochs": 4}, f)


def test_read_metrics_takes_the_suite_s_numbers_and_the_last_g(tmp_path):
    workdir = repro_runs.run_dir(str(tmp_path), "pgd_at", 0)
    write_finished_run(workdir)
    metrics = repro_runs.read_metrics(workdir)
    assert (metrics["clean"], metrics["pgd20_linf"], metrics["union"]) == (0.9, 0.6, 0.3)
    assert (metrics["worst_linf"], metrics["worst_l2"], metrics["alarms"]) == (0.5, 0.4, ["one"])
    assert (metrics["exported_clean"], metrics["last_pgd20"]) == (0.91, 0.62)
    assert (metrics["best_epoch"], metrics["epochs"], metrics["suite_examples"]) == (3, 4, 64)


def test_only_runs_recorded_with_a_report_are_reusable(tmp_path):
    root = str(tmp_path)
    write_finished_run(repro_runs.run_dir(root, "pgd_at", 0))
    os.makedirs(repro_runs.run_dir(root, "trades", 0))  # recorded, but its report is gone
    with open(tmp_path / "runs.json", "w") as f:
        json.dump(
            [
                {"label": "pgd_at", "seed": 0, "seconds": 12.0, "commit": "abc"},
                {"method": "trades", "seed": 0, "seconds": 5.0},
            ],
            f,
        )
    assert repro_runs.reusable(root) == {("pgd_at", 0): 12.0}
    assert repro_runs.recorded_commits(root) == {("pgd_at", 0): "abc", ("trades", 0): ""}
    assert repro_runs.reusable(str(tmp_path / "nothing")) == {}


def test_a_run_trained_without_the_suite_is_reusable_from_its_results(tmp_path):
    root = str(tmp_path)
    workdir = repro_runs.run_dir(root, "ref_trades_beta1", 0)
    os.makedirs(workdir)
    with open(tmp_path / "runs.json", "w") as f:
        json.dump(
            [
                {
                    "label": "ref_trades_beta1",
                    "seed": 0,
                    "seconds": 3.0,
                    "metrics": {"exported_clean": 0.8},
                }
            ],
            f,
        )
    assert repro_runs.reusable(root) == {}  # no results.json yet
    with open(os.path.join(workdir, "results.json"), "w") as f:
        f.write("{}")
    assert repro_runs.reusable(root) == {("ref_trades_beta1", 0): 3.0}
