"""Checkpoints hold everything; a SIGKILLed run resumes to the same exported G."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from generalist_tf import checkpoints, data, experiment
from generalist_tf.algorithm import mixing
from tests.helpers_train import ROOT, config_from

# 3 epochs of 19 steps; checkpoints every 4 steps and at epoch ends; communication in epochs 2, 3.
RUN = [
    "--flagfile=flags/smoke.cfg",
    "--deterministic",
    "--checkpoint_every_steps=4",
    "--num_steps=2",
    "--eval_num_steps=2",
    "--eval_examples=64",
    "--verbose=0",
]


def run_main(workdir, *extra, fault=None):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop(checkpoints.FAULT_ENV, None)
    if fault:
        env[checkpoints.FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-m", "generalist_tf.main", *RUN, f"--workdir={workdir}", *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def exported_variables(workdir, name):
    loaded = tf.saved_model.load(os.path.join(workdir, name))
    return {f"{i}:{v.name}": v.numpy() for i, v in enumerate(loaded.weights)}


def assert_same_export(a, b):
    for name in ("export", "export_last"):
        va, vb = exported_variables(a, name), exported_variables(b, name)
        assert va.keys() == vb.keys()
        worst = max(float(np.max(np.abs(va[k] - vb[k]))) for k in va)
        assert worst <= 1e-6, f"{name}: max abs weight difference {worst}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    result = run_main(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def kill_and_resume(tmp_path, fault):
    killed = run_main(tmp_path, fault=fault)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    assert not os.path.exists(tmp_path / "export")
    resumed = run_main(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return str(tmp_path)


def test_kill_inside_a_communication_epoch_resumes_exactly(uninterrupted, tmp_path):
    # Step 30 is in epoch 2 (steps 20-38), a communication epoch; the last checkpoint is step 28.
    assert_same_export(uninterrupted, kill_and_resume(tmp_path, "kill_after_step:30"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    [
        "kill_in_save:3",
        "kill_in_save:5",
        "kill_after_step:7",
        "kill_after_step:19",
        "kill_after_step:50",
    ],
)
def test_kill_at_other_points_resumes_exactly(uninterrupted, tmp_path, fault):
    # Save 3 is step 12 (mid-epoch); save 5 is the end of epoch 1 (after validation).
    assert_same_export(uninterrupted, kill_and_resume(tmp_path, fault))


def test_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    killed = run_main(tmp_path, fault="kill_in_save:2")
    assert killed.returncode == -9
    directory = tmp_path / checkpoints.CHECKPOINTS
    # The second save (step 8) wrote its files but was never committed: step 4 is the latest.
    assert tf.train.latest_checkpoint(str(directory)).endswith("ckpt-4")
    assert tf.io.gfile.glob(str(directory / "ckpt-8*"))


def build(tmp_path, seed):
    cfg = config_from("smoke.cfg", workdir=str(tmp_path), seed=seed, variant="generalist_t")
    arrays = data.load("digits")
    strategy = tf.distribute.get_strategy()
    model = experiment.build_experiment(cfg, strategy, arrays=arrays, checkpointing=False).model
    return cfg, arrays, strategy, model


def state(model, manager):
    """Every value a resumed run needs, by name."""
    values = {"step": manager.step.numpy()}
    for key, obj in checkpoints.tracked_objects(model).items():
        variables = obj.variables if hasattr(obj, "variables") else [obj]
        for i, v in enumerate(variables):
            values[f"{key}/{i}"] = np.array(v.numpy())
    return values


def test_checkpoint_restores_every_learner_optimizer_ema_and_counter(tmp_path):
    cfg, arrays, strategy, model = build(tmp_path, seed=0)
    stream = iter(data.train_dataset(arrays, batch_size=cfg.optimisation.batch_size, seed=0))
    for _ in range(3):
        model.train_step(next(stream))
        model.mix([0.2, 0.4, 0.4])
    model.save_best(0.5, 2)
    saver = checkpoints.Manager(str(tmp_path), model, strategy=strategy)
    saver.restore_or_initialize()
    saver.save(3)
    saved = state(model, saver)
    # Momentum slots are not zero after three steps (the optimizers are really in the file).
    assert any(np.abs(v).sum() > 0 for k, v in saved.items() if k.startswith("optimizer_"))

    _, _, _, fresh = build(tmp_path, seed=1)
    restorer = checkpoints.Manager(str(tmp_path), fresh, strategy=strategy)
    assert restorer.restore_or_initialize() == 3
    restored = state(fresh, restorer)
    assert saved.keys() == restored.keys()
    for key in saved:
        np.testing.assert_array_equal(restored[key], saved[key], err_msg=key)
    assert len(mixing.mixable_weights(fresh.learners[2].ema_network)) > 0


def test_the_state_file_commits_the_latest_and_keeps_the_newest(tmp_path):
    """Our writer of `<dir>/checkpoint` (TensorFlow's is deprecated): TensorFlow reads it back."""
    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
    for step in (3, 6, 9):
        checkpoint.write(str(tmp_path / f"ckpt-{step}"))
    checkpoints._write_state(str(tmp_path), "ckpt-9", ["ckpt-6", "ckpt-9"])
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert os.path.basename(state.model_checkpoint_path) == "ckpt-9"
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-6", "ckpt-9"]
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-9")
    assert sorted(os.listdir(tmp_path))[0] == "checkpoint"  # no staging file left
