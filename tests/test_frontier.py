"""The frontier command (`python -m generalist_tf.experiments.frontier`) and `gtf.frontier`."""

import json
import os

import pytest

from generalist_tf import tradeoff as frontier
from generalist_tf.attacks.budget import Attack
from generalist_tf.experiments import frontier as frontier_command
from tests import helpers_train

ATTACK = Attack("linf", 0.1, 0.025, 3)


def _frontier(*args, timeout=300):
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": helpers_train.ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "generalist_tf.experiments.frontier", *args],
        cwd=helpers_train.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_command_refuses_bad_input_in_one_line(ends, tmp_path):
    robust, _ = ends
    robust_path = str(tmp_path / "robust.keras")
    robust.save(robust_path)
    other = str(tmp_path / "other.keras")
    helpers_train.bn_network().save(other)
    run = tmp_path / "run"
    run.mkdir()
    (run / "flags.cfg").write_text(f"--flagfile={helpers_train.FLAGS_DIR}/quickstart.cfg\n")
    out = str(tmp_path / "out")
    _one_line_error(
        _frontier(
            f"--model={robust_path}",
            f"--natural={other}",
            "--protocol=flags/quickstart.cfg",
            f"--out={out}",
        ),
        f"--natural={other}",
        "architecture",
    )
    _one_line_error(
        _frontier(f"--workdir={run}", f"--out={out}"), f"--workdir={run}", "free_window"
    )
    _one_line_error(
        _frontier(f"--workdir={run}", f"--out={out}", "--operating_point=clean:2"),
        "--operating_point must be",
    )
    assert not os.path.exists(out)


@pytest.mark.slow
def test_command_end_to_end_on_a_digits_run(tmp_path):
    """A short Generalist-D run on digits, then its own frontier with an operating point."""
    run = str(tmp_path / "run")
    result = helpers_train.run_main(
        "--flagfile=flags/quickstart.cfg",
        f"--workdir={run}",
        "--epochs=8",
        "--nofinal_eval",
        "--verbose=0",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = str(tmp_path / "frontier")
    result = _frontier(
        f"--workdir={run}",
        f"--out={out}",
        "--points=3",
        "--apgd_steps=5",
        "--operating_point=clean:0.5",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(open(os.path.join(out, frontier.FRONTIER_JSON)).read())
    assert record["learners"] == ["linf_pgd", "natural"]
    assert record["free_window_epoch"] == 7
    assert any(p["worst_linf"] is not None for p in record["points"] if p["pareto"])
    assert os.path.isdir(os.path.join(out, frontier.OPERATING_EXPORT))


def test_python_api_is_the_command_s_algorithm(ends, split, tmp_path):
    """`gtf.frontier` on two networks gives the library's record; its default grid is the
    command's."""
    import generalist_tf as gtf

    robust, natural = ends
    validation, test = split
    record = gtf.frontier(
        robust,
        natural,
        validation=validation,
        test=test,
        epsilon=0.1,
        out=str(tmp_path),
        num_steps=3,
        points=3,
    )
    direct = frontier.sweep(
        robust, natural, validation=validation, attack=ATTACK, lambdas=[0.0, 0.5, 1.0]
    )
    assert [p["val_pgd"] for p in record["points"]] == [p.val_pgd for p in direct]
    from absl import flags

    values = flags.FlagValues()
    frontier_command.define_flags(values)
    assert values["points"].default == frontier.DEFAULT_POINTS
