"""A killed evaluation resumes where it stopped and ends with the report of an uninterrupted one.

`--mode=eval` records every finished batch of every attack under `<workdir>/eval_progress`
(`resume.py`). Here one evaluation runs through, and the same command in another workdir
is killed with SIGKILL after its first attack finished and its second started, then started
again: its report must equal the uninterrupted one (timings aside) and the records must be gone.
The records of another evaluation (another epsilon) are discarded, not reused.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from generalist_tf import export
from generalist_tf.evaluation import resume
from tests import helpers_eval, helpers_train

ATTACKS = "pgd20_linf,apgd_ce_linf,square_linf,pgd20_l2"


def _without_seconds(report):
    report = json.loads(json.dumps(report))
    for entry in report["attacks"].values():
        entry.pop("seconds")
    return report


def _arguments(model, workdir, *extra):
    return [
        "--mode=eval",
        f"--model={model}",
        f"--workdir={workdir}",
        f"--eval_attacks={ATTACKS}",
        "--eval_examples=96",
        "--eval_batch_size=16",
        "--eval_apgd_steps=10",
        "--eval_square_queries=300",
        "--verbose=0",
        *extra,
    ]


def _report(workdir):
    with open(os.path.join(workdir, "report.json")) as f:
        return json.load(f)


def test_sigkilled_evaluation_resumes_to_an_identical_report(tmp_path):
    model = str(tmp_path / "export")
    export.export_saved_model(helpers_eval.fitted(), helpers_eval.build_digits_cnn, model)
    full, killed = tmp_path / "full", tmp_path / "killed"
    result = helpers_train.run_main(*_arguments(model, full))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not os.path.exists(full / resume.DIRECTORY)

    process = subprocess.Popen(
        [sys.executable, "-m", "generalist_tf.main", *_arguments(model, killed)],
        cwd=helpers_train.ROOT,
        env=dict(os.environ, PYTHONPATH=helpers_train.ROOT, TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    progress = killed / resume.DIRECTORY
    deadline = time.monotonic() + 300
    # Killed once the first attack is complete (6 batches) and the second has started.
    while time.monotonic() < deadline and process.poll() is None:
        if len(glob.glob(str(progress / "apgd_ce_linf" / "*.npy"))) >= 1:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the evaluation ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(glob.glob(str(progress / "pgd20_linf" / "*.npy"))) == 6
    assert not os.path.exists(killed / "report.json")

    # A copy whose first batch record of pgd20_linf is inverted: if records are reused, its
    # report shows the inverted batch (proof that the resumed run did not recompute it).
    tampered = tmp_path / "tampered"
    shutil.copytree(killed, tampered)
    record = tampered / resume.DIRECTORY / "pgd20_linf" / "0.npy"
    np.save(record, ~np.load(record))

    result = helpers_train.run_main(*_arguments(model, killed))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _without_seconds(_report(killed)) == _without_seconds(_report(full))
    assert not os.path.exists(progress)

    result = helpers_train.run_main(*_arguments(model, tampered))
    assert result.returncode == 0, result.stderr[-3000:]
    first = _report(full)["attacks"]["pgd20_linf"]["accuracy"]
    inverted = _report(tampered)["attacks"]["pgd20_linf"]["accuracy"]
    # 16 examples of batch 0 inverted: the accuracy moves by (16 - 2 k) / 96 for k robust ones.
    assert inverted != first and abs(inverted - first) <= 16 / 96 + 1e-9


def test_records_of_another_evaluation_are_not_reused(tmp_path):
    progress = resume.Progress(str(tmp_path), "first")
    progress.save_batch("pgd20_linf", 0, np.array([True, False]))
    assert progress.batch("pgd20_linf", 0).tolist() == [True, False]
    again = resume.Progress(str(tmp_path), "first")
    assert again.batch("pgd20_linf", 0).tolist() == [True, False]
    other = resume.Progress(str(tmp_path), "second")
    assert other.batch("pgd20_linf", 0) is None
    x, y = np.zeros((4, 2, 2, 1), np.float32), np.zeros(4)
    logits = np.ones((4, 3))
    key = resume.fingerprint(logits, x, y, {"epsilon": 0.1})
    assert key == resume.fingerprint(logits, x, y, {"epsilon": 0.1})
    assert key != resume.fingerprint(logits, x, y, {"epsilon": 0.2})
    assert key != resume.fingerprint(logits + 1, x, y, {"epsilon": 0.1})
