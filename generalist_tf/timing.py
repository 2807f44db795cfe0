"""Where a run's wall time goes: named phases, each in wall and CPU seconds.

`train` records its phases (data, build, training with its first step and validations, the
final table, export, the attack suite) and `main` the ones before it (interpreter start-up,
imports and set-up); `results.json` keeps them under `timings` and the log prints one line.
CPU seconds (this process, all threads) are the steadier number on a shared machine.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterator


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (Linux `/proc`; None elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            # Field 22 (starttime, clock ticks after boot); the command name may hold spaces.
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def progress_verbosity(verbose: int, stream=None) -> int:
    """Keras' `verbose` for a terminal or not: a live bar (1) only on a terminal.

    Keras' progress bar redraws in place whenever it runs on POSIX, so written to a file or a
    pipe it is one long line of redraws; there 1 becomes 2 (one line per epoch). 0 and 2 stay.
    """
    stream = sys.stdout if stream is None else stream
    is_terminal = getattr(stream, "isatty", lambda: False)()
    return 2 if verbose == 1 and not is_terminal else verbose


class Phases:
    """Ordered phases with their wall and CPU seconds (a phase entered twice adds up)."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def add(self, name: str, wall: float, cpu: float | None = None) -> None:
        self.wall[name] = self.wall.get(name, 0.0) + wall
        if cpu is not None:
            self.cpu[name] = self.cpu.get(name, 0.0) + cpu

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - wall, time.process_time() - cpu)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            name: {"wall_s": round(wall, 3), "cpu_s": round(self.cpu[name], 3)}
            if name in self.cpu
            else {"wall_s": round(wall, 3)}
            for name, wall in self.wall.items()
        }

    def summary(self) -> str:
        """One line: `name 1.2 s, ...` in wall seconds."""
        return ", ".join(f"{name} {wall:.1f} s" for name, wall in self.wall.items())


# The phases of this process's run: `main` adds its own, `train` the rest.
RUN = Phases()
