"""What a work directory holds and who may write it: the experiment fingerprint and the run lock.

A workdir is one experiment. `experiment.json` records the fingerprint of the flags that define
it (everything that changes what is trained; not runtime or evaluation-only flags such as
`--verbose` or `--eval_attacks`). Starting again with another fingerprint and no `--restart` is
refused before anything is written: resuming a Generalist-D checkpoint as PGD-AT would restore
it partially, train nothing and relabel its results.

`.lock` is held by the live run (an exclusive `flock`, released by the kernel when the process
dies, even by SIGKILL, so a killed run never blocks its own resume); it names the holder's pid,
host and start time for the refusal message. Under `MultiWorkerMirroredStrategy` every worker
shares the workdir by design: only the chief takes the lock.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from typing import Mapping

from generalist_tf import files, tf_config

FINGERPRINT = "experiment.json"
LOCK = ".lock"
# Flags that do not change what a run trains (how it runs, logs, or evaluates after training):
# left out of the fingerprint, so a resume may change them. Every other flag is in it.
NOT_IN_FINGERPRINT = frozenset(
    {
        "workdir",
        "mode",
        "restart",
        "verbose",
        "data_dir",
        "keep_checkpoints",
        "checkpoint_every_steps",
        "num_cpu_replicas",
        "jit_compile",
        "steps_per_execution",
        "tpu",
        "final_eval",
        "eval_examples",
        "table_examples",
        "eval_restarts",
        "eval_square_queries",
        "eval_apgd_steps",
        "eval_attacks",
        "reference",
        "surrogate",
        "train_clean_accuracy",
    }
)


class WorkdirError(ValueError):
    """A workdir that this run may not use; the message is one line meant for the user."""


def fingerprint(values: Mapping[str, object], flag_names) -> dict[str, str]:
    """The experiment-defining flags and their values, as strings (JSON-stable)."""
    return {
        name: str(values[name])
        for name in sorted(flag_names)
        if name not in NOT_IN_FINGERPRINT and name in values
    }


def check_fingerprint(workdir: str, current: dict[str, str], *, restart: bool) -> bool:
    """Refuses a workdir that holds another experiment; returns whether to (re)write the record.

    Raises:
      WorkdirError: the recorded fingerprint differs and `restart` is False; the message names
        every differing flag with its old and new value.
    """
    path = os.path.join(workdir, FINGERPRINT)
    if restart or not os.path.exists(path):
        return True
    try:
        with open(path) as f:
            recorded = json.load(f)["flags"]
    except (OSError, ValueError, KeyError) as e:
        raise WorkdirError(
            f"{path}: unreadable experiment record ({type(e).__name__}); use --restart"
        )
    differing = [
        f"--{name}: {recorded.get(name, '(unset)')!r} -> {current.get(name, '(unset)')!r}"
        for name in sorted(set(recorded) | set(current))
        if recorded.get(name) != current.get(name)
    ]
    if differing:
        raise WorkdirError(
            f"--workdir={workdir} holds another experiment ({'; '.join(differing)}); use a new "
            "--workdir, or --restart to replace it"
        )
    return False


def write_fingerprint(workdir: str, current: dict[str, str]) -> None:
    files.write_json(
        os.path.join(workdir, FINGERPRINT), {"flags": current}, indent=1, sort_keys=True
    )


class RunLock:
    """The exclusive lock of a live run on its workdir (see the module docstring).

    Raises (from `acquire`):
      WorkdirError: another live process holds the lock; the message names it.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK)
        self._file = None

    def acquire(self) -> "RunLock":
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown holder"
            handle.close()
            raise WorkdirError(
                f"--workdir={os.path.dirname(self.path)} is in use by a live run ({holder}); wait "
                "for it to end or use another --workdir"
            )
        started = datetime.datetime.now().isoformat(timespec="seconds")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def is_multiworker_follower(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a non-chief worker of a multi-worker `TF_CONFIG` cluster."""
    cluster = tf_config.parse(environ)  # checked (one-line errors) by `config.from_flags`
    return cluster is not None and cluster.is_multi_worker and not cluster.is_chief


def holds_training_run(workdir: str) -> bool:
    """Whether `workdir` holds a training run's outputs (which evaluation must not replace)."""
    return os.path.exists(os.path.join(workdir, "results.json")) or os.path.isdir(
        os.path.join(workdir, "checkpoints")
    )
