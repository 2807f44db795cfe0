"""End to end through `python -m generalist_tf.main`: smoke run, outputs, flagfiles, bad flags."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from generalist_tf import checkpoints, config, data, main, models
from generalist_tf.evaluation import suite
from tests.helpers_train import FLAGS_DIR, config_from, parse_flags, run_main

# Training ends with the attack suite on the exported G (small budgets here).
SMOKE_EXTRA = ("--final_eval", "--eval_square_queries=100", "--eval_apgd_steps=10")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("smoke"))
    result = run_main("--flagfile=flags/smoke.cfg", f"--workdir={workdir}", *SMOKE_EXTRA)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def scalar_tags(directory):
    tags = set()
    for run in glob.glob(os.path.join(directory, "*")):
        acc = event_accumulator.EventAccumulator(run, size_guidance={"tensors": 0, "scalars": 0})
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | set(acc.Tags()["tensors"])
    return tags


def test_smoke_run_writes_tensorboard_scalars(smoke_run):
    workdir, _ = smoke_run
    tags = scalar_tags(os.path.join(workdir, "tensorboard"))
    for name in [
        "epoch_natural/loss",
        "epoch_linf_pgd/loss",
        "epoch_linf_pgd/adv_accuracy",
        "epoch_global/clean_accuracy",
        "epoch_global/pgd_accuracy",
        "epoch_global/loss",
        "epoch_natural_ema/pgd_accuracy",
        "epoch_linf_pgd_ema/clean_accuracy",
        "epoch_learning_rate",
        "epoch_mixing/natural",
        "epoch_mixing/linf_pgd",
        "epoch_communication/redistributions",
    ]:
        assert name in tags, f"{name} missing from {sorted(tags)}"


def test_smoke_export_reproduces_g(smoke_run):
    workdir, _ = smoke_run
    arrays = data.load("digits")
    x = arrays.x_test[:64]
    # G of the last epoch, restored from the run's own last checkpoint.
    network = models.build("digits_cnn", arrays.image_shape, arrays.num_classes)
    latest = tf.train.latest_checkpoint(os.path.join(workdir, checkpoints.CHECKPOINTS))
    tf.train.Checkpoint(**{"global": network}).restore(latest).expect_partial()
    expected = network(x, training=False).numpy()
    loaded = tf.saved_model.load(os.path.join(workdir, "export_last"))
    got = loaded.signatures["serving_default"](images=tf.constant(x))["logits"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    best = tf.saved_model.load(os.path.join(workdir, "export"))
    logits = best.signatures["serving_default"](images=tf.constant(arrays.x_test))["logits"]
    assert logits.shape == (len(arrays.x_test), 10)


def test_smoke_results_and_table(smoke_run):
    workdir, result = smoke_run
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert 1 <= results["best_epoch"] <= 3
    assert results["eval_attack"]["num_steps"] == 5
    arrays = data.load("digits")
    # The table's subset of the test split (smoke.cfg: --eval_examples=128, the table's default).
    x_test, y_test = data.eval_subset(arrays.x_test, arrays.y_test, 128)
    for prefix in ("best", "global", "natural_ema", "linf_pgd_ema"):
        for metric in ("clean_accuracy", "pgd_accuracy"):
            # A count over the 128 examples (a replica-weighted mean is not).
            count = results["test"][f"{prefix}/{metric}"] * len(y_test)
            assert count == pytest.approx(round(count), abs=1e-3), (prefix, metric)
    # The exported G is the "best" row: its clean accuracy, recomputed from the export.
    export = tf.saved_model.load(os.path.join(workdir, "export"))
    logits = export.signatures["serving_default"](images=tf.constant(x_test))["logits"]
    served = float(np.mean(np.argmax(logits, axis=1) == y_test))
    assert results["test"]["best/clean_accuracy"] == pytest.approx(served, abs=1e-6)
    assert "global/pgd_accuracy" in results["validation"]
    robustness = results["robustness"]
    assert robustness["of"] == "export" and set(robustness["worst_case"]) == {"linf", "l2"}
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)
    assert report["num_examples"] == 128 and report["attacks"]["pgd100_linf"]["num_steps"] == 100
    assert "Attack suite on the exported G" in result.stdout
    assert "G (exported, epoch" in result.stdout and "PGD-5 linf" in result.stdout


def test_smoke_flags_record_reparses_to_the_same_config(smoke_run):
    workdir, _ = smoke_run
    recorded = parse_flags(f"--flagfile={os.path.join(workdir, main.FLAGS_RECORD)}")
    original = config_from(
        "smoke.cfg", workdir=workdir, final_eval=True, eval_square_queries=100, eval_apgd_steps=10
    )
    assert config.from_flags(recorded.flag_values_dict()) == original


def test_quickstart_with_two_cpu_replicas_exports_a_working_model(tmp_path):
    result = run_main(
        "--flagfile=flags/smoke.cfg",
        f"--workdir={tmp_path}",
        "--num_cpu_replicas=2",
        "--epochs=6",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Reloaded without the project: plain TensorFlow, in a fresh process.
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        "from sklearn.datasets import load_digits\n"
        "d = load_digits(); x = (d.images / 16.0).astype('float32')[..., None]\n"
        f"m = tf.saved_model.load({str(tmp_path / 'export')!r})\n"
        "p = m.signatures['serving_default'](images=tf.constant(x))['logits'].numpy().argmax(-1)\n"
        "print((p == d.target).mean())\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) > 0.7  # well above chance (0.1)


@pytest.mark.parametrize(
    "flagfile", sorted(os.path.basename(p) for p in glob.glob(f"{FLAGS_DIR}/*.cfg"))
)
def test_every_flagfile_parses_and_validates(flagfile):
    cfg = config_from(flagfile, workdir="/tmp/unused")
    assert cfg.optimisation.epochs >= 1
    with open(os.path.join(FLAGS_DIR, flagfile)) as f:
        lines = [line.rstrip("\n") for line in f]
    assert lines[0].startswith("# "), "a flagfile opens with its description"
    assert any(line.startswith("# Command:") for line in lines) or flagfile.endswith("common.cfg")
    for line in lines:
        # absl keeps a trailing '# ...' inside the value: comments go on their own lines.
        assert line.startswith("#") or " #" not in line, line


def test_a_bad_flag_fails_with_one_line_and_status_2(tmp_path):
    """Through the command line once; every config message is checked in-process
    (`test_bad_input.CONFIG_CASES`), through the same `config.from_flags` that main calls."""
    args, message = ["--epsilon=8"], "--epsilon must be in (0, 1]"
    result = run_main("--flagfile=flags/smoke.cfg", f"--workdir={tmp_path}", *args, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert lines[-1].startswith("error: ") and message in lines[-1], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "variant",
    ["standard", "pgd_at", "trades", "avg", "max", "msd", "generalist_d_multinorm", "generalist_t"],
)
def test_every_variant_trains_evaluates_and_exports(tmp_path, variant):
    from generalist_tf import train

    cfg = config_from(
        "smoke.cfg",
        variant=variant,
        epochs=2,
        num_steps=2,
        l2_num_steps=2,
        eval_num_steps=2,
        eval_examples=64,
        workdir=str(tmp_path),
        verbose=0,
    )
    results = train.train(cfg)
    assert results["learners"] == list(cfg.algorithm.learners)
    for name in cfg.algorithm.learners:
        assert f"{name}_ema/clean_accuracy" in results["test"]
    assert os.path.isdir(tmp_path / "export") and os.path.isdir(tmp_path / "export_last")


EVAL_FAST = [
    "--eval_square_queries=50",
    "--eval_apgd_steps=5",
    "--eval_examples=64",
    "--eval_attacks=fgsm_linf,pgd20_linf,apgd_ce_linf,square_linf,pgd20_l2",
]


def test_eval_mode_on_the_export_and_on_an_npz(smoke_run, tmp_path):
    workdir, _ = smoke_run
    arrays = data.load("digits")
    npz = tmp_path / "digits_test.npz"
    np.savez(npz, x_test=(arrays.x_test * 255).round().astype(np.uint8), y_test=arrays.y_test)
    # digits has default budgets (0.3, 1.0); an npz must state its own. The npz run spreads its
    # batches over 2 logical CPU replicas, as a training run's strategy would.
    for dataset, budget in (
        ("digits", ()),
        (
            f"npz:{npz}",
            (
                "--eval_epsilon_linf=0.3",
                "--eval_epsilon_l2=1.0",
                "--num_cpu_replicas=2",
                "--eval_batch_size=16",
            ),
        ),
    ):
        out = tmp_path / dataset.replace(":", "_").replace("/", "_")
        result = run_main(
            "--mode=eval",
            f"--model={workdir}/export",
            f"--dataset={dataset}",
            f"--workdir={out}",
            *EVAL_FAST,
            *budget,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        with open(out / "report.json") as f:
            report = json.load(f)
        assert set(report) >= {
            "clean_accuracy",
            "num_examples",
            "attacks",
            "worst_case",
            "union_accuracy",
            "alarms",
        }
        assert report["num_examples"] == 64
        assert report["attacks"]["pgd20_linf"]["num_steps"] == 20
        assert report["attacks"]["pgd20_linf"]["epsilon"] == pytest.approx(0.3)
        assert "pgd20_linf" in result.stdout


def test_eval_mode_rejects_a_savedmodel_without_the_signature(tmp_path):
    module = tf.Module()
    module.v = tf.Variable(1.0)
    tf.saved_model.save(module, str(tmp_path / "bare"))
    result = run_main(
        "--mode=eval",
        f"--model={tmp_path / 'bare'}",
        "--dataset=digits",
        f"--workdir={tmp_path / 'out'}",
        *EVAL_FAST,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "serving_default" in last, result.stderr[-2000:]


def test_every_export_has_a_model_card(smoke_run):
    workdir, _ = smoke_run
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)
    for name in ("export", "export_last"):
        with open(os.path.join(workdir, name, "MODEL_CARD.md")) as f:
            card = f.read()
        assert "## Claim (RobustBench style)" in card and "## Reproduce" in card
        assert f"--flagfile={workdir}/flags.cfg" in card
        assert "selection: best clean + PGD accuracy of G" in card
    with open(os.path.join(workdir, "export", "MODEL_CARD.md")) as f:
        card = f.read()
    # The selected G's card carries the suite's numbers with their intervals.
    clean = report["clean_accuracy"]
    low, high = report["intervals"]["clean_accuracy"]
    assert f"{100 * clean:.2f} [{100 * low:.2f}, {100 * high:.2f}]%" in card
    assert "## Attack suite" in card


def test_eval_mode_reports_autoattack_standard_for_both_norms(smoke_run, tmp_path):
    workdir, _ = smoke_run
    out = tmp_path / "standard"
    result = run_main(
        "--mode=eval",
        f"--model={workdir}/export",
        f"--workdir={out}",
        "--eval_attacks=standard",
        "--eval_examples=48",
        "--eval_apgd_steps=5",
        "--eval_square_queries=50",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "report.json") as f:
        report = json.load(f)
    assert set(report["attacks"]) == set(suite.ATTACK_SETS["standard"])
    for norm in ("linf", "l2"):
        value = report["autoattack_standard"][norm]
        low, high = report["intervals"]["autoattack_standard"][norm]
        assert low <= value <= high and high - low > 0
        # Below AutoAttack's budgets (5 iterations, 50 queries): the report must say so.
        assert report["autoattack_budgets"][norm]["standard"] is False
        worst = min(report["attacks"][n]["accuracy"] for n in suite.STANDARD_ATTACKS[norm])
        assert value <= worst
    assert report["subset"] == {"num_examples": 48, "of": 360}
    with open(out / "report.md") as f:
        assert "**A subset: 48 of the 360 test examples**" in f.read()


def test_a_cpu_only_run_logs_no_cuda_error_and_no_warning_of_ours(tmp_path):
    """Run as a user runs it (no TF_CPP_MIN_LOG_LEVEL of theirs), output to a pipe: TensorFlow's
    CPU-only start-up lines are dropped, none of our calls draws a warning, and the suite logs
    one line per finished attack instead of redrawing a bar."""
    result = run_main(
        "--flagfile=flags/smoke.cfg",
        f"--workdir={tmp_path}",
        "--epochs=1",
        "--final_eval",
        "--eval_attacks=pgd20_linf,square_linf",
        "--eval_examples=32",
        "--eval_square_queries=20",
        "--verbose=1",
        env={"TF_CPP_MIN_LOG_LEVEL": None},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "\r" not in log and "\x1b" not in log  # no redrawn bar in a pipe
    bad = [
        line
        for line in log.splitlines()
        if re.search(r"cuda|cuInit|Warning|warn\(|absl::InitializeLog", line, re.I)
        or re.match(r"[WE]\d{4} ", line)  # an absl/TensorFlow warning or error line
    ]
    assert not bad, bad
    for attack in ("pgd20_linf", "square_linf"):
        assert re.search(rf"{attack}: accuracy \d\.\d+ in \d+\.\d s", log), attack


def test_tensorflow_s_start_up_filter_writes_every_other_line_back(monkeypatch, capfd):
    """Lines of the start-up window that are not CPU-only noise reach stderr, also when the
    import fails (what a broken TensorFlow printed must not vanish)."""
    import builtins

    monkeypatch.setattr(main, "_USER_LOG_LEVEL", False)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "tensorflow":
            os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers\n")
            os.write(2, b"a real problem\n")
            raise ImportError("no tensorflow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(ImportError):
        main.start_tensorflow_quietly()
    err = capfd.readouterr().err
    assert "a real problem" in err and "cudart_stub" not in err
