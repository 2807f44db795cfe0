"""Writing a run's files so that a failed write leaves the finished file, never half a file.

Every result file (results.json, report.json, flags.cfg, the ledger, model cards, plots) goes
through `staged`: it is written under a temporary name in the same directory and renamed over
the target only once complete, and the temporary file is removed when the write fails. A full
disk (`is_disk_full`) then costs the write that failed and nothing finished before it.

No TensorFlow import: `cli` and `config` use this module before TensorFlow starts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator

# What the OS (errno) or TensorFlow's file system layer (message text) says on a full disk.
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded")


class DiskFullError(OSError):
    """A write failed because the file system is full; `path` is what was being written."""

    def __init__(self, path: str):
        super().__init__(errno.ENOSPC, "no space left on device", path)
        self.path = path


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (an OSError, or a TensorFlow op error of a save) means the disk is full."""
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    # TensorFlow reports ENOSPC as ResourceExhaustedError (also its out-of-memory error, whose
    # message differs), or as a plain error from its file system layer.
    return any(text in str(error) for text in _DISK_FULL_MESSAGES)


@contextlib.contextmanager
def staged(path: str) -> Iterator[str]:
    """Yields a temporary path next to `path`; renames it to `path` if the block succeeds.

    The temporary name keeps `path`'s extension (matplotlib and Keras read the format from it).
    On any failure the temporary file is removed and `path` is left as it was; a full disk is
    raised as `DiskFullError(path)`.
    """
    directory, name = os.path.split(os.path.abspath(path))
    stem, extension = os.path.splitext(name)
    # Created by the caller's open() (so with the usual permissions), hidden, one per process.
    staging = os.path.join(directory, f".{stem}.staging-{os.getpid()}{extension}")
    try:
        yield staging
        os.replace(staging, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(staging)
        if is_disk_full(e):
            raise DiskFullError(path) from None
        raise


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` through `staged`."""
    with staged(path) as staging, open(staging, "w") as f:
        f.write(text)


def write_bytes(path: str, content: bytes) -> None:
    """Writes `content` to `path` through `staged`."""
    with staged(path) as staging, open(staging, "wb") as f:
        f.write(content)


def write_json(path: str, value, **dump_options) -> None:
    """Writes `value` as JSON (plus a final newline) to `path` through `staged`."""
    write_text(path, json.dumps(value, **dump_options) + "\n")
