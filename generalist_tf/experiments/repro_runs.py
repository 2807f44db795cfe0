"""One reproduction run: its directory, command, subprocess, metrics and reuse."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from generalist_tf.experiments.repro_suites import SUITES, Run


def run_dir(root: str, label: str, seed: int) -> str:
    """Where the run of `label` with `seed` writes (its `--workdir`)."""
    return os.path.join(root, label, f"seed{seed}")


def command(method: str, flags_: dict, suite: str = "digits") -> list[str]:
    """`python -m generalist_tf.main --flagfile=flags/<prefix>_<method>.cfg --<flag>=<value> ...`."""
    return [
        sys.executable,
        "-m",
        "generalist_tf.main",
        f"--flagfile=flags/{SUITES[suite].prefix}_{method}.cfg",
        *[f"--{k}={v}" for k, v in flags_.items()],
    ]


def run_flags(seed: int, suite: str, extra: dict) -> dict:
    """The flags one run adds to its flagfile: the suite's, the overrides, the seed."""
    return {**SUITES[suite].flags, **extra, "seed": seed}


def run_command(method: str, seed: int, suite: str, extra: dict) -> str:
    """The user-facing command of one run: its flagfile, seed and overrides (no workdir)."""
    return shlex.join(["python", *command(method, run_flags(seed, suite, extra), suite)[1:]])


def run_one(
    method: str,
    seed: int,
    *,
    root: str,
    suite: str,
    extra: dict,
    label: str | None = None,
    restart: bool = False,
) -> Run:
    """Trains one method with one seed and evaluates its exported G, as its flagfile does.

    Each run is a fresh process running exactly `python -m generalist_tf.main
    --flagfile=flags/digits_<method>.cfg --seed=<seed> --workdir=<root>/<label>/seed<seed>`
    (plus `extra` flags), training's final attack suite included: with `--deterministic` (from
    `flags/digits_common.cfg`) that flagfile command gives the same numbers as its row's run.
    A fresh process matters: TensorFlow's op-seed counters and Keras' name counters live for the
    process, so a second run in one process would not repeat the command's numbers.

    Raises:
      RuntimeError: the run failed (its last error line).
    """
    label = label or method
    workdir = run_dir(root, label, seed)
    flags_ = {**run_flags(seed, suite, extra), "workdir": workdir, "verbose": 0}
    if restart:  # retrain from scratch; otherwise an interrupted run resumes from its checkpoint
        flags_["restart"] = "true"
    resumed = not restart and os.path.isdir(os.path.join(workdir, "checkpoints"))
    start = time.time()
    result = subprocess.run(
        command(method, {"final_eval": "true", **flags_}, suite), capture_output=True, text=True
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["(no output)"]
        raise RuntimeError(f"{label} seed {seed} failed: {lines[-1]}")
    return Run(
        label,
        seed,
        read_metrics(workdir),
        time.time() - start,
        command=run_command(method, seed, suite, extra),
        resumed=resumed,
    )


def read_metrics(workdir: str) -> dict:
    """The numbers of a finished run: its suite report and, from `results.json`, the last G."""
    from generalist_tf import train
    from generalist_tf.evaluation import writers

    with open(os.path.join(workdir, train.RESULTS)) as f:
        results = json.load(f)
    test = results["test"]
    suite = {}
    report_path = os.path.join(workdir, writers.REPORT_JSON)
    if os.path.exists(report_path):  # absent for a run trained with --nofinal_eval
        with open(report_path) as f:
            report = json.load(f)
        suite = {
            "clean": report["clean_accuracy"],
            "pgd20_linf": report["attacks"]["pgd20_linf"]["accuracy"],
            "worst_linf": report["worst_case"]["linf"],
            "worst_l2": report["worst_case"]["l2"],
            "union": report["union_accuracy"],
            "suite_examples": report.get("num_examples", 0),
        }
    return {
        **suite,
        "alarms": report["alarms"] if suite else [],
        # Validation-time PGD-20 (test_step) of the exported and of the last G, on the test split.
        "best_epoch": results["best_epoch"],
        "epochs": results["epochs"],
        "exported_clean": test["best/clean_accuracy"],
        "exported_pgd20": test["best/pgd_accuracy"],
        "last_clean": test["global/clean_accuracy"],
        "last_pgd20": test["global/pgd_accuracy"],
    }


def _recorded(root: str) -> list[dict]:
    """The runs a previous invocation recorded in `root`/runs.json ([] if none)."""
    path = os.path.join(root, "runs.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def recorded_commits(root: str) -> dict[tuple[str, int], str]:
    """(label, seed) -> the commit that finished each run `runs.json` under `root` records."""
    return {
        (entry.get("label", entry.get("method")), entry["seed"]): entry.get("commit", "")
        for entry in _recorded(root)
    }


def reusable(root: str) -> dict[tuple[str, int], float]:
    """(label, seed) -> seconds of the runs a previous invocation finished under `root`."""
    from generalist_tf import train
    from generalist_tf.evaluation import writers

    done = {}
    for entry in _recorded(root):
        label = entry.get("label", entry.get("method"))
        workdir = run_dir(root, label, entry["seed"])
        # A run trained without the suite (`final_eval` false) is finished with its results.
        metrics = entry.get("metrics", {})
        finished = train.RESULTS if metrics and "worst_linf" not in metrics else writers.REPORT_JSON
        if os.path.exists(os.path.join(workdir, finished)):
            done[(label, entry["seed"])] = entry["seconds"]
    return done


def kept_model_files(workdir: str) -> dict[str, str]:
    """The `.keras` files of a finished run that the ledger keeps: role -> path.

    `exported`: the exported G; for Generalist runs also the free-window EMAs that
    `frontier` interpolates (`<workdir>/free_window/<learner>.keras`, when the run wrote them).
    """
    from generalist_tf import export, train
    from generalist_tf.algorithm import callbacks

    files_ = {"exported": export.keras_path(os.path.join(workdir, train.EXPORT_BEST))}
    folder = os.path.join(workdir, callbacks.FREE_WINDOW)
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".keras"):
                files_[f"free_window_{name[: -len('.keras')]}"] = os.path.join(folder, name)
    return files_
