"""Two worker processes (MultiWorkerMirroredStrategy, TF_CONFIG on 127.0.0.1) train like one.

Each worker runs `python -m tests.multiworker_main` (`generalist_tf.main` plus a dump of the
worker's final G). The checks: both workers end with the same G, equal to a single process with
two replicas on the same global batches; only the chief writes TensorBoard, checkpoints and
exports; a job whose worker is SIGKILLed restarts (all workers together, Keras
BackupAndRestore semantics) and ends with the G of an uninterrupted job.

The attacks keep their random start: it is seeded by (seed, step, replica id), and worker w's
replica has the id of replica w of the single process, with the same half of each global batch.

A worker whose peer never starts blocks in the strategy constructor and ignores SIGTERM: every
process has a deadline and is SIGKILLed in a `finally`.
"""

import glob
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from generalist_tf import checkpoints, distribute
from tests.helpers_train import ROOT
from tests.multiworker_main import DUMP_ENV

# 2 epochs of 19 steps at global batch 64 (32 per worker), both communication epochs
# (redistribution after every step); checkpoints every 4 steps.
RUN = [
    "--flagfile=flags/smoke.cfg",
    "--epochs=2",
    "--deterministic",
    "--checkpoint_every_steps=4",
    "--num_steps=2",
    "--eval_num_steps=2",
    "--eval_examples=64",
    "--verbose=0",
]
DEADLINE = 300  # seconds for one job (all of its processes)
NUM_WORKERS = 2
# Two replicas summing the same per-replica gradients in another order (cross-process ring vs
# in-process reduction) may differ in the last bits; measured: 0 on this CPU.
ATOL = 1e-4


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (bound to port 0, then released)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start(workdir, name, *extra, tf_config=None, fault=None) -> subprocess.Popen:
    """Starts one training process; its dump is `<name>.npz`, its output `<name>.log`."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    env.pop(checkpoints.FAULT_ENV, None)
    env[DUMP_ENV] = f"{name}.npz"
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    if fault:
        env[checkpoints.FAULT_ENV] = fault
    with open(f"{name}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.multiworker_main", *RUN, f"--workdir={workdir}", *extra],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def run_job(workdir, names, *extra, faults=None) -> list[subprocess.Popen]:
    """Runs one job (2 workers, or 1 process when `names` has one entry) to its end.

    Like a cluster manager, ends the job when a process fails: the others are SIGKILLed (a
    MultiWorkerMirroredStrategy job restarts as a whole). Returns the finished processes.
    """
    faults = faults or [None] * len(names)
    ports = free_ports(len(names))
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    try:
        for index, (name, fault) in enumerate(zip(names, faults)):
            tf_config = None
            if len(names) > 1:
                tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            processes.append(start(workdir, name, *extra, tf_config=tf_config, fault=fault))
        deadline = time.monotonic() + DEADLINE
        while any(p.poll() is None for p in processes):
            if any(p.poll() not in (None, 0) for p in processes):
                break
            assert time.monotonic() < deadline, f"job timed out: {tail(names[0])}"
            time.sleep(0.5)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=60)
    return processes


def tail(name: str, chars: int = 3000) -> str:
    with open(f"{name}.log") as f:
        return f.read()[-chars:]


def load_dump(name: str) -> dict[str, np.ndarray]:
    with np.load(f"{name}.npz") as npz:
        return {k: npz[k] for k in npz.files}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def exported(workdir, export_name, prefix) -> dict[str, np.ndarray]:
    """The exported network's weights, keyed like a dump (`<prefix>/<index>`)."""
    loaded = tf.saved_model.load(os.path.join(workdir, export_name))
    return {f"{prefix}/{i}": v.numpy() for i, v in enumerate(loaded.weights)}


def only(dump: dict, prefix: str) -> dict:
    return {k: v for k, v in dump.items() if k.startswith(prefix + "/")}


def run_workers(directory, *extra, faults=None):
    """A 2-worker job in `directory/workdir`; returns (workdir, worker names, processes)."""
    workdir = os.path.join(directory, "workdir")
    names = [os.path.join(directory, f"worker{i}") for i in range(NUM_WORKERS)]
    return workdir, names, run_job(workdir, names, *extra, faults=faults)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("two_workers"))
    workdir, names, processes = run_workers(directory)
    assert [p.returncode for p in processes] == [0, 0], tail(names[0]) + tail(names[1])
    return workdir, names, processes


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory):
    """The reference: one process, two replicas on two logical CPUs, same global batches."""
    directory = str(tmp_path_factory.mktemp("two_replicas"))
    workdir, name = os.path.join(directory, "workdir"), os.path.join(directory, "single")
    (process,) = run_job(workdir, [name], "--num_cpu_replicas=2")
    assert process.returncode == 0, tail(name)
    return workdir, name


def test_cpu_replicas_cannot_be_combined_with_multiple_workers(monkeypatch):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    )
    assert distribute.is_multi_worker()
    with pytest.raises(ValueError, match="--num_cpu_replicas=2 cannot be combined"):
        distribute.make_strategy(num_cpu_replicas=2)


# --- fast end to end: one 2-worker job and its single-process reference ---------------------
def test_two_workers_end_with_the_g_of_one_two_replica_process(two_workers, two_replicas):
    workdir, names, _ = two_workers
    chief, worker = load_dump(names[0]), load_dump(names[1])
    reference = load_dump(two_replicas[1])
    assert max_difference(chief, worker) <= ATOL, "the workers' G differ"
    difference = max_difference(chief, reference)
    assert difference <= ATOL, f"multi-worker vs one process: max abs difference {difference}"
    # The chief exported its G: the last one and the best one.
    assert max_difference(exported(workdir, "export_last", "global"), only(chief, "global")) == 0
    assert max_difference(exported(workdir, "export", "best"), only(chief, "best")) == 0
    for name in ("export", "export_last"):
        single = exported(two_replicas[0], name, "g")
        assert max_difference(exported(workdir, name, "g"), single) <= ATOL, name
    with (
        open(os.path.join(workdir, "results.json")) as f,
        open(os.path.join(two_replicas[0], "results.json")) as g,
    ):
        assert json.load(f)["best_epoch"] == json.load(g)["best_epoch"]


def test_only_the_chief_writes_tensorboard_checkpoints_and_exports(two_workers):
    workdir, _, processes = two_workers
    chief_pid = processes[0].pid
    for split in ("train", "validation"):
        events = glob.glob(os.path.join(workdir, "tensorboard", split, "events.out.tfevents.*"))
        # Event file names end in `.<pid>.<n>.v2`.
        assert [int(os.path.basename(e).split(".")[-3]) for e in events] == [chief_pid], events
    assert tf.train.latest_checkpoint(os.path.join(workdir, checkpoints.CHECKPOINTS)).endswith(
        "ckpt-38"
    )
    # The other worker's checkpoints went to a scratch directory, deleted at the end.
    assert not glob.glob(os.path.join(workdir, ".worker-scratch-*"))
    # `.lock` and `experiment.json` are the chief's alone (workdir.py).
    assert sorted(os.listdir(workdir)) == [
        ".lock",
        "checkpoints",
        "experiment.json",
        "export",
        "export.keras",
        "export_last",
        "export_last.keras",
        "flags.cfg",
        "free_window",
        "results.json",
        "tensorboard",
    ]


# --- slow: kill the job mid-training, restart every worker, resume from the checkpoint ------
@pytest.mark.slow
def test_killed_job_restarts_and_resumes_from_the_chiefs_checkpoint(two_workers, tmp_path):
    # Worker 1 dies right after step 30 (epoch 2, a communication epoch); the chief is stuck in
    # step 31's all-reduce, and the job is killed. The last checkpoint is step 28.
    workdir, names, killed = run_workers(str(tmp_path), faults=[None, "kill_after_step:30"])
    assert [p.returncode for p in killed] == [-9, -9], tail(names[1])
    assert not os.path.exists(os.path.join(workdir, "export"))
    directory = os.path.join(workdir, checkpoints.CHECKPOINTS)
    assert tf.train.latest_checkpoint(directory).endswith("ckpt-28")

    _, _, resumed = run_workers(str(tmp_path))
    assert [p.returncode for p in resumed] == [0, 0], tail(names[0]) + tail(names[1])
    # The restarted worker 1 reused, then deleted, the scratch of the killed one.
    assert not glob.glob(os.path.join(workdir, ".worker-scratch-*"))
    for log in names:
        assert "resumed from" in tail(log, 10**6) and "ckpt-28" in tail(log, 10**6)
    uninterrupted = load_dump(two_workers[1][0])
    for name in names:
        difference = max_difference(load_dump(name), uninterrupted)
        assert difference <= ATOL, f"{name}: resumed vs uninterrupted G differ by {difference}"
