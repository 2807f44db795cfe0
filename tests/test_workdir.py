"""A workdir is one experiment held by one live run: fingerprint refusal, the run lock, stale locks.

The lock is checked against a real second process (a holder started with `subprocess`), and a
holder killed with SIGKILL must not block the next run.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from generalist_tf import cli, workdir
from tests.helpers_train import ROOT, parse_flags, run_main


def smoke_fingerprint(*args):
    values = parse_flags("--flagfile=flags/smoke.cfg", *args).flag_values_dict()
    return workdir.fingerprint(values, cli.flag_names())


def test_fingerprint_holds_the_experiment_not_the_runtime():
    base = smoke_fingerprint("--workdir=/tmp/a")
    assert base["variant"] == "generalist_d" and base["seed"] == "0" and "model" in base
    # Runtime and evaluation-only flags may change between a run and its resume.
    same = smoke_fingerprint("--workdir=/tmp/b", "--verbose=0", "--eval_attacks=fgsm_linf")
    assert same == base
    assert smoke_fingerprint("--variant=pgd_at") != base
    assert smoke_fingerprint("--bn_moving_variance=biased") != base


def test_a_different_experiment_is_refused_naming_each_flag(tmp_path):
    first = smoke_fingerprint()
    assert workdir.check_fingerprint(str(tmp_path), first, restart=False)
    workdir.write_fingerprint(str(tmp_path), first)
    assert not workdir.check_fingerprint(str(tmp_path), first, restart=False)
    other = smoke_fingerprint("--variant=pgd_at", "--seed=3")
    with pytest.raises(workdir.WorkdirError) as error:
        workdir.check_fingerprint(str(tmp_path), other, restart=False)
    text = str(error.value)
    assert "--variant: 'generalist_d' -> 'pgd_at'" in text and "--seed: '0' -> '3'" in text
    assert "\n" not in text and "--restart" in text
    assert workdir.check_fingerprint(str(tmp_path), other, restart=True)


def test_rerun_as_another_variant_writes_nothing(tmp_path):
    """End to end: a finished run started again as another experiment exits 2 in one line."""
    first = run_main("--flagfile=flags/smoke.cfg", f"--workdir={tmp_path}", "--epochs=1")
    assert first.returncode == 0, first.stderr[-2000:]
    before = {
        name: (tmp_path / name).read_bytes()
        for name in ("results.json", "flags.cfg", "experiment.json")
    }
    second = run_main(
        "--flagfile=flags/smoke.cfg", f"--workdir={tmp_path}", "--epochs=1", "--variant=pgd_at"
    )
    assert second.returncode == 2
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "--variant: 'generalist_d' -> 'pgd_at'" in last
    for name, content in before.items():
        assert (tmp_path / name).read_bytes() == content, name


HOLDER = textwrap.dedent(
    """
    import sys, time
    from generalist_tf import workdir
    lock = workdir.RunLock(sys.argv[1]).acquire()  # kept: a collected lock closes its file
    print("held", flush=True)
    time.sleep(120)
    """
)


def start_holder(path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_live_run_holds_the_workdir_and_a_killed_one_does_not(tmp_path):
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(workdir.WorkdirError) as error:
            workdir.RunLock(str(tmp_path)).acquire()
        text = str(error.value)
        assert f"pid {holder.pid} on " in text and "since" in text and "\n" not in text
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel released the killed holder's flock: the stale lock file does not block.
    assert (tmp_path / workdir.LOCK).exists()
    lock = workdir.RunLock(str(tmp_path)).acquire()
    assert f"pid {os.getpid()}" in (tmp_path / workdir.LOCK).read_text()
    lock.release()


def test_second_process_on_a_held_workdir_is_refused_by_main(tmp_path):
    holder = start_holder(tmp_path)
    try:
        start = time.monotonic()
        result = run_main("--flagfile=flags/smoke.cfg", f"--workdir={tmp_path}")
        assert result.returncode == 2
        last = result.stderr.strip().splitlines()[-1]
        assert "is in use by a live run" in last and f"pid {holder.pid}" in last
        assert not (tmp_path / "flags.cfg").exists()  # nothing of the run was written
        assert time.monotonic() - start < 120  # refused at once, not after training
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_evaluation_never_writes_over_a_training_run(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"variant": "generalist_d"}))
    export = tmp_path / "export"
    export.mkdir()
    result = run_main(
        "--mode=eval", f"--model={export}", "--dataset=digits", f"--workdir={tmp_path}"
    )
    assert result.returncode == 2
    assert "holds a training run" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize(
    "tf_config, follower",
    [
        ("", False),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}', False),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}', True),
        ('{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "chief"}}', False),
        ('{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker"}}', True),
    ],
)
def test_only_the_chief_of_a_multiworker_run_takes_the_lock(tf_config, follower):
    assert workdir.is_multiworker_follower({"TF_CONFIG": tf_config}) == follower
