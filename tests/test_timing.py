"""Where a run's time goes: phases add up, and a run records them in results.json."""

import json
import os
import time

import pytest

from generalist_tf import timing, train
from tests.helpers_train import config_from


def test_phases_add_up_in_order():
    phases = timing.Phases()
    with phases.phase("b"):
        time.sleep(0.01)
    phases.add("a", 2.0)
    with phases.phase("b"):
        time.sleep(0.01)
    assert list(phases.wall) == ["b", "a"]
    assert 0.02 <= phases.wall["b"] < 1.0 and phases.wall["a"] == 2.0
    assert phases.as_dict()["a"] == {"wall_s": 2.0}
    assert set(phases.as_dict()["b"]) == {"wall_s", "cpu_s"}
    assert phases.summary().startswith("b 0.0 s, a 2.0 s")


def test_process_start_is_before_now():
    seconds = timing.seconds_since_process_start()
    assert seconds is None or 0.0 < seconds < 24 * 3600


def test_a_run_records_its_phases(tmp_path, monkeypatch):
    monkeypatch.setattr(timing, "RUN", timing.Phases())
    cfg = config_from(
        "smoke.cfg", epochs=3, num_steps=2, eval_num_steps=2, workdir=str(tmp_path), verbose=0
    )
    start = time.perf_counter()
    train.train(cfg)
    wall = time.perf_counter() - start
    with open(os.path.join(tmp_path, "results.json")) as f:
        timings = json.load(f)["timings"]
    for phase in ("data", "build and restore", "training epochs", "final table", "export"):
        assert timings[phase]["wall_s"] > 0, phase
    for phase in ("first epoch's extra (tracing)", "first validation", "between epochs"):
        assert phase in timings, phase
    assert {"fit set-up", "fit teardown"} <= set(timings)
    assert "attack suite" not in timings  # smoke.cfg: --nofinal_eval
    assert sum(t["wall_s"] for t in timings.values()) == pytest.approx(wall, rel=0.1, abs=1.0)
    assert timing.RUN.wall == {}  # a second run in this process starts from nothing


def test_progress_is_a_live_bar_only_on_a_terminal():
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert timing.progress_verbosity(1, Terminal()) == 1
    assert timing.progress_verbosity(1, io.StringIO()) == 2  # a file or a pipe: lines
    assert timing.progress_verbosity(0, io.StringIO()) == 0
    assert timing.progress_verbosity(2, Terminal()) == 2
