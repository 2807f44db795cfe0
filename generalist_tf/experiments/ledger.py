"""The results ledger: every finished reproduction run, kept in the repository beside its table.

A reproduction suite costs more machine time than one session has, and a session's work
directories do not survive it. The ledger (`RESULTS_<suite>.json`, committed next to
`RESULTS_<suite>.md`) is what carries finished runs from one session to the next: per run its
label and seed, the numbers `repro_runs.read_metrics` read from its workdir, its time, its command, the
commit of the tree that ran it, and every flag value the command resolved to. A later invocation
reuses an entry only when its command still resolves to the same flags (flagfile edits, changed
overrides or a new protocol retrain the run); the table is always computed from the entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess

from absl import flags

from generalist_tf import files

# Flags that say where and how loudly a run works, not what it measures.
NOT_COMPARED = frozenset({"workdir", "verbose", "restart", "final_eval", "data_dir", "mode"})


def resolved_flags(argv: list[str]) -> dict[str, str]:
    """Every generalist_tf flag value that `python -m generalist_tf.main <argv>` would use.

    Parsed with a fresh absl FlagValues from the current directory (flagfiles nest by paths
    relative to the repository root), so flagfile includes and defaults are resolved exactly as
    the run resolves them.
    """
    from generalist_tf import cli

    values = flags.FlagValues()
    cli.define_flags(values)
    values(["generalist_tf.main", *argv])
    return {name: values[name].serialize() for name in cli.flag_names() if name not in NOT_COMPARED}


def defaults() -> dict[str, str]:
    """The serialized default of every flag (what an entry recorded before a flag existed had)."""
    return resolved_flags([])


def differing(
    recorded: dict[str, str], current: dict[str, str], default: dict[str, str]
) -> list[str]:
    """The flags on which two resolutions differ ([]: the same run).

    A flag missing on one side counts as its default (an entry recorded before the flag existed).
    """
    names = (set(recorded) | set(current)) - NOT_COMPARED
    return [
        n
        for n in sorted(names)
        if recorded.get(n, default.get(n)) != current.get(n, default.get(n))
    ]


def read(path: str) -> list[dict]:
    """The entries of the ledger at `path` ([] when there is none).

    Raises:
      ValueError: the file is not a ledger (one line naming it).
    """
    if not path or not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            entries = json.load(f)["runs"]
        for entry in entries:
            entry["label"], entry["seed"], entry["flags"], entry["metrics"]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"results ledger {path}: not a ledger ({type(e).__name__}: {e})") from e
    return entries


def find(entries: list[dict], label: str, seed: int) -> dict | None:
    """The entry of (label, seed), if any."""
    for entry in entries:
        if entry["label"] == label and entry["seed"] == seed:
            return entry
    return None


def upsert(path: str, entry: dict) -> None:
    """Adds `entry` to the ledger at `path`, replacing the one of the same (label, seed).

    Written to a temporary file and renamed, so an interrupted write leaves the old ledger.
    """
    entries = [e for e in read(path) if (e["label"], e["seed"]) != (entry["label"], entry["seed"])]
    entries.append(entry)
    entries.sort(key=lambda e: (e["label"], e["seed"]))
    files.write_json(path, {"runs": entries}, indent=1, sort_keys=True)


def commit() -> str:
    """The commit of the tree in the current directory (`+dirty` when it has changes)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def models_dir(ledger_path: str) -> str:
    """Where the models of the ledger at `ledger_path` are kept: `models/<ledger name>/` beside it."""
    stem = os.path.splitext(os.path.basename(ledger_path))[0]
    return os.path.join(os.path.dirname(ledger_path), "models", stem)


def sha256(path: str) -> str:
    """The SHA-256 of the file at `path`, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def keep_models(ledger_path: str, label: str, seed: int, sources: dict[str, str]) -> dict:
    """Copies a run's models next to the ledger; returns {role: {"path", "sha256"}}.

    `sources` maps a role (`exported`, or a free-window EMA's name) to a `.keras` file in the
    run's workdir. Each is kept as `models/<ledger>/<label>_seed<seed>[_<role>].keras` (the
    exported G without a suffix), the path relative to the ledger's directory, so a later session
    re-scores it without training. A missing source is skipped.
    """
    kept = {}
    folder = models_dir(ledger_path)
    for role, source in sources.items():
        if not os.path.exists(source):
            continue
        suffix = "" if role == "exported" else f"_{role}"
        target = os.path.join(folder, f"{label}_seed{seed}{suffix}.keras")
        os.makedirs(folder, exist_ok=True)
        with files.staged(target) as staging:  # a kept model is replaced only by a whole one
            shutil.copyfile(source, staging)
        kept[role] = {
            "path": os.path.relpath(target, os.path.dirname(ledger_path) or "."),
            "sha256": sha256(target),
        }
    return kept


def machine() -> str:
    """The CPU model (a recorded row repeats to the last digit only on the model that ran it)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
