"""Bad input: a one-line error naming the flag, file or value; exit status 2; nothing lost.

Config-level cases are checked in-process through `config.from_flags` (the same function main
calls before `_fail`); cases that need files, checkpoints or a run go through the command line.
"""

import os

import numpy as np
import pytest

from generalist_tf import checkpoints, experiment
from tests.helpers_train import config_from, run_main

CONFIG_CASES = [
    # (overrides, message fragment)
    ({"dataset": "imagenet"}, "--dataset='imagenet' is unknown"),
    ({"model": "vgg16"}, "--model='vgg16' is unknown"),
    ({"variant": "generalist_x"}, "--variant='generalist_x' is unknown"),
    ({"steps_per_execution": "0"}, "--steps_per_execution must be >= 1, got 0"),
    ({"epsilon": "-0.1"}, "--epsilon must be in (0, 1] for images in [0, 1], got -0.1"),
    ({"epsilon": "8"}, "--epsilon must be in (0, 1] for images in [0, 1], got 8"),
    ({"step_size": "0.5"}, "--step_size must be in (0, --epsilon=0.3], got 0.5"),
    ({"num_steps": "0"}, "--num_steps must be >= 1, got 0"),
    ({"epochs": "0"}, "--epochs must be an integer >= 1, got 0"),
    ({"batch_size": "0"}, "--batch_size must be >= 1, got 0"),
    ({"mixing": "natural=0:0.5,1:0.5;linf_pgd=0:0.6,1:0.6"}, "sum to 1 at every epoch"),
    ({"mixing": "natural=0:1,1:1"}, "--mixing must give one schedule per learner"),
    ({"mixing": "natural=0:1,oops;linf_pgd=0:0,1:0"}, "--mixing (natural) must look like"),
    ({"communication_start": "1", "communication_period": "7"}, "after the last epoch 3"),
    ({"epsilon": "eight"}, "--epsilon must be a number or a ratio like 8/255, got 'eight'"),
    ({"learning_rate": "0:0.1,1:0"}, "--learning_rate values must be > 0"),
    ({"learners": "natural"}, "--learners is only read with --variant=custom"),
    ({"jit_compile": "maybe"}, "--jit_compile must be one of"),
    ({"dataset": "npz:/tmp/x.npz"}, "--eval_epsilon_linf is required with --dataset=npz:"),
    ({"eval_attacks": "pgd7_linf"}, "--eval_attacks: unknown ['pgd7_linf']"),
    ({"epsilon": "0.3  # eps"}, "holds a trailing comment"),
    ({"select_metric": "val_global/pgd_acc"}, "--select_metric='val_global/pgd_acc' is neither"),
    ({"select_clean_floor": "1.5"}, "--select_clean_floor must be in [0, 1], got 1.5"),
    ({"val_every": "0"}, "--val_every must be >= 1, got 0"),
    ({"val_examples": "-1"}, "--val_examples must be >= 0 (0: all), got -1"),
    ({"steps_per_epoch": "-2"}, "--steps_per_epoch must be >= 0, got -2"),
    ({"bn_moving_variance": "sample"}, "--bn_moving_variance must be one of"),
    ({"precision": "fp8"}, "--precision must be one of"),
]


def test_a_missing_optional_dependency_is_reported_before_any_work(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "art" else real(name, *a)
    )
    with pytest.raises(ValueError, match="--reference=art needs the Adversarial Robustness"):
        config_from("smoke.cfg", workdir="/tmp/unused", reference="art", final_eval="true")


def test_a_batch_that_does_not_split_over_the_replicas_is_refused(tmp_path):
    result = run_main(*FAST, f"--workdir={tmp_path}", "--num_cpu_replicas=2", "--batch_size=63")
    assert_one_line_error(result, "--batch_size=63 does not split evenly over the 2 replicas")
    assert os.listdir(tmp_path) == []  # refused before the run's files (flags.cfg, ...)


@pytest.mark.parametrize("overrides, message", CONFIG_CASES)
def test_config_errors_name_the_flag_and_value(overrides, message):
    with pytest.raises(ValueError) as error:
        config_from("smoke.cfg", workdir="/tmp/unused", **overrides)
    text = str(error.value)
    assert message in text and "\n" not in text


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in last, last


FAST = [
    "--flagfile=flags/smoke.cfg",
    "--epochs=1",
    "--num_steps=2",
    "--eval_num_steps=2",
    "--eval_examples=32",
    "--verbose=0",
]


def test_missing_flagfile(tmp_path):
    result = run_main("--flagfile=flags/does_not_exist.cfg", f"--workdir={tmp_path}")
    assert_one_line_error(result, "flags/does_not_exist.cfg")


def test_trailing_comment_on_an_integer_flag(tmp_path):
    flagfile = tmp_path / "bad.cfg"
    flagfile.write_text("--flagfile=flags/smoke.cfg\n--epochs=3  # three epochs\n")
    result = run_main(f"--flagfile={flagfile}", f"--workdir={tmp_path}")
    assert_one_line_error(result, "--epochs=3  # three epochs")


def test_unwritable_workdir():
    assert_one_line_error(
        run_main(*FAST, "--workdir=/proc/no/such/dir"), "--workdir=/proc/no/such/dir"
    )


@pytest.mark.parametrize(
    "arrays, fragment",
    [
        ({"x_train": np.zeros((10, 8, 8), np.uint8)}, "missing keys"),
        (
            {
                "x_train": np.zeros((10, 8, 8), np.uint8),
                "y_train": np.zeros(9, np.int64),
                "x_test": np.zeros((4, 8, 8), np.uint8),
                "y_test": np.zeros(4, np.int64),
            },
            "y_train must have shape (10,)",
        ),
        (
            {
                "x_train": np.full((10, 8, 8), 3.0, np.float32),
                "y_train": np.zeros(10, np.int64),
                "x_test": np.zeros((4, 8, 8), np.float32),
                "y_test": np.zeros(4, np.int64),
            },
            "float x_train must lie in [0, 1]",
        ),
        (None, "not a readable .npz file"),
        (
            {
                "x_train": np.zeros((8, 8, 8), np.uint8),
                "y_train": np.arange(8) % 2,
                "x_test": np.zeros((4, 8, 8), np.uint8),
                "y_test": np.zeros(4, np.int64),
            },
            "8 training examples leave an empty validation split",
        ),
        (
            {
                "x_train": np.zeros((100, 8, 8), np.uint8),
                "y_train": np.full(100, 3),
                "x_test": np.zeros((4, 8, 8), np.uint8),
                "y_test": np.full(4, 3),
            },
            "the training labels hold a single class ([3])",
        ),
    ],
)
def test_bad_npz(tmp_path, arrays, fragment):
    path = tmp_path / "data.npz"
    if arrays is None:
        path.write_bytes(b"this is not a zip archive")
    else:
        np.savez(path, **arrays)
    result = run_main(
        *FAST,
        f"--dataset=npz:{path}",
        "--eval_epsilon_linf=0.3",
        "--eval_epsilon_l2=1.0",
        f"--workdir={tmp_path / 'run'}",
    )
    assert_one_line_error(result, str(path), fragment)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 1-epoch run: its export and checkpoint must survive every failure below."""
    workdir = tmp_path_factory.mktemp("finished")
    result = run_main(*FAST, f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir


def snapshot(directory):
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


def copy_of(run, tmp_path):
    """A copy of `run` to break: the module's finished run stays intact for the next test."""
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(run, workdir)
    return workdir


def test_nan_loss_stops_keeps_checkpoint_and_export(finished_run, tmp_path):
    workdir = copy_of(finished_run, tmp_path)
    export_before = snapshot(workdir / "export")
    # A new experiment in the finished run's workdir (--restart): epoch 1 trains at a sane
    # learning rate (its checkpoint is written), epoch 2 at 1e12 diverges.
    result = run_main(
        *FAST,
        f"--workdir={workdir}",
        "--restart",
        "--epochs=3",
        "--learning_rate=0:0.05,1/3:0.05,1/2:1e12,1:1e12",
    )
    assert_one_line_error(result, "/loss is nan at epoch 2 step")
    assert snapshot(workdir / "export") == export_before  # replaced only by a finished run
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(workdir / checkpoints.CHECKPOINTS))
    assert latest.endswith("ckpt-19"), latest  # the last good checkpoint: end of epoch 1


def test_corrupt_checkpoint_is_reported_and_export_kept(finished_run, tmp_path):
    workdir = copy_of(finished_run, tmp_path)
    export_before = snapshot(workdir / "export")
    for index in (workdir / checkpoints.CHECKPOINTS).glob("ckpt-*.index"):
        index.write_bytes(b"garbage")
    result = run_main(*FAST, f"--workdir={workdir}")
    assert_one_line_error(result, "cannot be restored", "--restart")
    assert snapshot(workdir / "export") == export_before


def test_a_checkpoint_of_another_model_is_refused_whole_and_the_records_kept(
    finished_run, tmp_path
):
    """No experiment record (a workdir from before records, or checkpoints copied in): the
    restore itself must refuse another network in one line, and put flags.cfg back."""
    workdir = copy_of(finished_run, tmp_path)
    (workdir / "experiment.json").unlink()
    before = snapshot(workdir)
    result = run_main(*FAST, f"--workdir={workdir}", "--model=preact_resnet18")
    assert_one_line_error(result, "ckpt-19 cannot be restored: it does not match this model")
    assert "Value in checkpoint could not be found" not in result.stderr
    after = snapshot(workdir)
    after.pop(".lock", None), before.pop(".lock", None)
    assert after == before  # flags.cfg still describes the model that was trained


def test_steps_per_execution_must_divide_every_fit():
    cfg = config_from("smoke.cfg", steps_per_execution=2, workdir="/tmp/w")
    experiment.check_whole_executions(cfg, 20, offset=4)  # whole executions: accepted
    with pytest.raises(ValueError, match=r"--steps_per_execution=2 must divide the 19 steps"):
        experiment.check_whole_executions(cfg, 19, offset=0)
    with pytest.raises(ValueError, match=r"stopped 3 steps into an epoch"):
        experiment.check_whole_executions(cfg, 20, offset=3)


def eval_npz(tmp_path, shape, max_label):
    path = tmp_path / f"eval_{'x'.join(map(str, shape))}_{max_label}.npz"
    n = 20
    labels = np.arange(n) % (max_label + 1)
    np.savez(
        path,
        x_train=np.zeros((n, *shape), np.uint8),
        y_train=labels,
        x_test=np.zeros((n, *shape), np.uint8),
        y_test=labels,
    )
    return path


EVAL_ARGS = ["--mode=eval", "--eval_epsilon_linf=0.3", "--eval_epsilon_l2=1.0", "--verbose=0"]


@pytest.mark.parametrize(
    "shape, max_label, fragment",
    [
        ((10, 10), 9, "takes images of shape 8x8x1, but --dataset=npz:"),
        ((8, 8, 3), 9, "has 8x8x3 (height, width, channels)"),
        ((8, 8), 12, "has 10 classes, but --dataset=npz:"),
    ],
)
def test_evaluation_data_the_model_cannot_take_is_refused_before_any_attack(
    finished_run, tmp_path, shape, max_label, fragment
):
    path = eval_npz(tmp_path, shape, max_label)
    out = tmp_path / "eval"
    result = run_main(
        *EVAL_ARGS, f"--model={finished_run}/export", f"--dataset=npz:{path}", f"--workdir={out}"
    )
    assert_one_line_error(result, f"--model={finished_run}/export", fragment)
    assert not (out / "report.json").exists()


def test_a_surrogate_of_another_shape_is_refused_before_any_attack(finished_run, tmp_path):
    import tensorflow as tf

    module = tf.Module()
    module.w = tf.Variable(tf.zeros([100, 10]))
    module.serve = tf.function(
        lambda images: {"logits": tf.reshape(images, [-1, 100]) @ module.w},
        input_signature=[tf.TensorSpec([None, 10, 10, 1], tf.float32, "images")],
    )
    surrogate = tmp_path / "surrogate"
    tf.saved_model.save(module, str(surrogate), signatures={"serving_default": module.serve})
    result = run_main(
        *EVAL_ARGS,
        f"--model={finished_run}/export",
        f"--surrogate={surrogate}",
        "--dataset=digits",
        "--eval_attacks=fgsm_linf",
        f"--workdir={tmp_path / 'eval'}",
    )
    assert_one_line_error(result, f"--surrogate={surrogate} takes images of shape 10x10x1")


def test_an_unreachable_tpu_is_refused_in_one_line_before_any_file(tmp_path):
    # `.invalid` never resolves (RFC 2606), so the lookup fails at once, offline or not.
    result = run_main(*FAST, f"--workdir={tmp_path}", "--tpu=no-such-tpu.invalid")
    assert_one_line_error(result, "--tpu=no-such-tpu.invalid: cannot connect to the TPU")
    assert os.listdir(tmp_path) == []


def test_a_malformed_tf_config_is_refused_in_one_line_before_any_file(tmp_path):
    bad = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 5}}'
    result = run_main(*FAST, f"--workdir={tmp_path}", env={"TF_CONFIG": bad})
    assert_one_line_error(result, "TF_CONFIG=", "task index 5 is outside")
    assert not tmp_path.exists() or os.listdir(tmp_path) == []


def leftovers(directory):
    """Temporary files a failed write could leave: TF's `_temp` checkpoints, our staging names."""
    names = []
    for root, dirs, files_ in os.walk(directory):
        for name in dirs + files_:
            if "_temp" in name or ".staging-" in name or name.startswith((".export-", ".retired-")):
                names.append(os.path.join(root, name))
    return names


def test_a_full_disk_in_a_checkpoint_keeps_the_finished_run(finished_run, tmp_path):
    """Simulated (runs everywhere): the first save of a --restart fails as a full disk does,
    after its data files are written."""
    workdir = copy_of(finished_run, tmp_path)
    export_before = snapshot(workdir / "export")
    result = run_main(
        *FAST,
        f"--workdir={workdir}",
        "--restart",
        env={checkpoints.FAULT_ENV: "disk_full_in_save:1"},
    )
    assert_one_line_error(result, "no space left on the device of --workdir=", "ckpt-19")
    assert snapshot(workdir / "export") == export_before
    # The failed checkpoint is gone entirely (data files and staging), nothing else left.
    assert not list((workdir / checkpoints.CHECKPOINTS).glob("ckpt-*")), os.listdir(
        workdir / checkpoints.CHECKPOINTS
    )
    assert leftovers(workdir) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real small file system (tmpfs); skipped where mounting is not permitted."""
    import subprocess

    mount_point = tmp_path / "disk"
    mount_point.mkdir()

    def mount(size_kib: int):
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
        )
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
        return mount_point

    yield mount
    subprocess.run(["umount", str(mount_point)], capture_output=True)


def test_a_full_disk_keeps_the_finished_run_and_leaves_no_temporary_files(
    finished_run, small_tmpfs
):
    """A real full disk: the finished run, copied onto a tmpfs with 300 KiB to spare, is run
    again; re-exporting it fails for space."""
    import shutil

    used = sum(len(v) for v in snapshot(finished_run).values()) // 1024
    disk = small_tmpfs(used + 1024)
    workdir = disk / "run"
    shutil.copytree(finished_run, workdir)
    free_kib = shutil.disk_usage(disk).free // 1024
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * (free_kib - 300) * 1024)
    before = snapshot(workdir)
    result = run_main(*FAST, f"--workdir={workdir}")
    assert_one_line_error(result, f"no space left on the device of --workdir={workdir}")
    after = snapshot(workdir)
    for record in (".lock", "flags.cfg"):  # the lock and this invocation's resolved flags
        after.pop(record, None), before.pop(record, None)
    assert after == before  # checkpoints, exports, results, reports, events: all as they were
    assert any(name.startswith("export/") for name in after)
    assert leftovers(disk) == []
