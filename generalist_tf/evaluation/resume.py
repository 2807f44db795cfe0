"""Resumable evaluation: every finished batch of every attack is kept under the work directory.

A 10,000-image suite that dies late should not lose what it finished. `runner.evaluate_model` records,
in `<workdir>/eval_progress/`, the per-example masks of each finished batch of each attack run
(`<run>/<batch>.npy`, written atomically) and, when a run is complete, its seconds
(`<run>/done.json`). Started again with the same command, it reads what is there and computes
only the rest, so the report equals an uninterrupted one (the seconds of a resumed attack are
those of its sessions added up).

What is recorded is only reused for the same evaluation: `manifest.json` holds a fingerprint of
the model (its logits on the first examples), the examples, the labels and every argument that
changes a number (epsilons, budgets, seed, batch size, attacks). A different fingerprint discards
the old records, with a warning. The directory is removed once the report is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
from absl import logging

from generalist_tf import files

DIRECTORY = "eval_progress"
MANIFEST = "manifest.json"
# The model's fingerprint is its logits on this many examples (rounded against float noise).
FINGERPRINT_EXAMPLES = 8
_DECIMALS = 4


def fingerprint(logits: np.ndarray, x: np.ndarray, y: np.ndarray, arguments: dict) -> str:
    """A digest of what determines the numbers: model logits, examples, labels, arguments."""
    digest = hashlib.sha256()
    digest.update(np.round(np.asarray(logits, np.float64), _DECIMALS).tobytes())
    digest.update(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(y).astype(np.int64).tobytes())
    digest.update(json.dumps(arguments, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class Progress:
    """The records of one evaluation in `<workdir>/eval_progress` (see the module docstring)."""

    def __init__(self, workdir: str, key: str):
        self.root = os.path.join(workdir, DIRECTORY)
        manifest = os.path.join(self.root, MANIFEST)
        recorded = None
        if os.path.exists(manifest):
            try:
                with open(manifest) as f:
                    recorded = json.load(f).get("fingerprint")
            except (OSError, ValueError):
                recorded = None
        if recorded is not None and recorded != key:
            logging.warning("%s holds another evaluation's progress: discarded", self.root)
        if recorded != key:
            shutil.rmtree(self.root, ignore_errors=True)
            os.makedirs(self.root, exist_ok=True)
            files.write_json(manifest, {"fingerprint": key})
        elif recorded is not None:
            logging.info("resuming the evaluation recorded in %s", self.root)

    def _run_dir(self, run: str) -> str:
        path = os.path.join(self.root, run)
        os.makedirs(path, exist_ok=True)
        return path

    def batch(self, run: str, index: int) -> np.ndarray | None:
        """The recorded mask of batch `index` of `run`, or None."""
        path = os.path.join(self.root, run, f"{index}.npy")
        if not os.path.exists(path):
            return None
        try:
            return np.load(path)
        except (OSError, ValueError):
            return None  # A torn file (not written through `save_batch`): computed again.

    def save_batch(self, run: str, index: int, mask: np.ndarray) -> None:
        path = os.path.join(self._run_dir(run), f"{index}.npy")
        with files.staged(path) as staging:
            np.save(staging, np.asarray(mask, bool))

    def seconds(self, run: str) -> float:
        """Seconds spent on `run` by earlier sessions (0 if none recorded)."""
        path = os.path.join(self.root, run, "seconds.json")
        if not os.path.exists(path):
            return 0.0
        with open(path) as f:
            return float(json.load(f)["seconds"])

    def add_seconds(self, run: str, seconds: float) -> float:
        """Adds this session's `seconds` to `run`'s record; returns the total."""
        total = self.seconds(run) + seconds
        files.write_json(os.path.join(self._run_dir(run), "seconds.json"), {"seconds": total})
        return total

    def finish(self) -> None:
        """The report is written: the records are no longer needed."""
        shutil.rmtree(self.root, ignore_errors=True)
