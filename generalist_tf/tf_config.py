"""The `TF_CONFIG` environment variable, read and checked once, without TensorFlow.

A multi-worker run is described by `TF_CONFIG` (TensorFlow's convention):
`{"cluster": {"worker": ["host:port", ...], "chief": ["host:port"]}, "task": {"type": "worker",
"index": 1}}`. TensorFlow itself reports a malformed value late and deep inside the strategy's
set-up; `parse` rejects it before any work, with one line that names `TF_CONFIG` and the value.
`MultiWorkerMirroredStrategy` uses `chief` and `worker` tasks only, so other task types
(parameter servers, evaluators) are refused too.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping

VARIABLE = "TF_CONFIG"
TASK_TYPES = ("chief", "worker")


@dataclasses.dataclass(frozen=True)
class TfConfig:
    cluster: dict[str, list[str]]
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return sum(len(self.cluster.get(t, [])) for t in TASK_TYPES)

    @property
    def is_multi_worker(self) -> bool:
        return self.num_workers > 1

    @property
    def is_chief(self) -> bool:
        """The task that writes the run's files: `chief`, or worker 0 when there is no chief."""
        if "chief" in self.cluster:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def task_name(self) -> str:
        return f"{self.task_type}-{self.task_index}"


def _refuse(raw: str, problem: str) -> ValueError:
    shown = raw if len(raw) <= 120 else raw[:117] + "..."
    return ValueError(f"{VARIABLE}={shown!r}: {problem}")


def parse(environ: Mapping[str, str] = os.environ) -> TfConfig | None:
    """This process's `TF_CONFIG`, or None when it is unset, empty or `{}`.

    Raises:
      ValueError: the value is not JSON, its `cluster` is not a map of task type to a list of
        `host:port` addresses, a task type other than chief/worker appears, or `task` is missing,
        names a type that is not in the cluster, or an index outside its list.
    """
    raw = environ.get(VARIABLE, "")
    if not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise _refuse(raw, f"not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise _refuse(raw, "must be a JSON object with 'cluster' and 'task'")
    if not value:
        return None
    cluster = value.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise _refuse(raw, "'cluster' must map task types to lists of host:port addresses")
    for task_type, addresses in cluster.items():
        if task_type not in TASK_TYPES:
            raise _refuse(
                raw,
                f"task type {task_type!r} is not supported (MultiWorkerMirroredStrategy uses "
                f"{' and '.join(TASK_TYPES)} tasks only)",
            )
        if (
            not isinstance(addresses, list)
            or not addresses
            or not all(isinstance(a, str) and ":" in a for a in addresses)
        ):
            raise _refuse(raw, f"cluster {task_type!r} must be a non-empty list of host:port")
    if len(cluster.get("chief", [])) > 1:
        raise _refuse(raw, "a cluster has at most one chief")
    task = value.get("task")
    if not isinstance(task, dict) or "type" not in task:
        raise _refuse(raw, "'task' with this process's 'type' and 'index' is missing")
    task_type, index = task["type"], task.get("index", 0)
    if task_type not in cluster:
        raise _refuse(raw, f"task type {task_type!r} is not in the cluster")
    if not isinstance(index, int) or isinstance(index, bool):
        raise _refuse(raw, f"task index {index!r} must be an integer")
    if not 0 <= index < len(cluster[task_type]):
        raise _refuse(
            raw,
            f"task index {index} is outside the cluster's {len(cluster[task_type])} "
            f"{task_type} address(es)",
        )
    return TfConfig(
        cluster={k: list(v) for k, v in cluster.items()}, task_type=task_type, task_index=index
    )
