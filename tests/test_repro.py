"""The reproduction driver: trains, evaluates alike, writes RESULTS.md and the trade-off plot."""

import json
import os
import statistics
import struct
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from generalist_tf.experiments import ledger, repro, repro_runs, repro_suites, repro_tables
from tests import helpers_train
from tests.helpers_train import ROOT

TINY = {
    "epochs": 2,
    "num_steps": 2,
    "l2_num_steps": 2,
    "eval_num_steps": 2,
    "eval_square_queries": 20,
    "eval_apgd_steps": 5,
    "eval_attacks": "fgsm_linf,pgd20_linf,square_linf,pgd20_l2,apgd_ce_l2",
}


@pytest.mark.parametrize(
    "seeds",
    [
        pytest.param((0,), id="one_seed"),
        pytest.param((0, 1), id="two_seeds", marks=pytest.mark.slow),
    ],
)
def test_driver_writes_results_for_every_method_and_seed(tmp_path, monkeypatch, seeds):
    monkeypatch.chdir(ROOT)  # flagfiles nest by paths relative to the repository root
    what, method, overrides = repro_suites.ABLATIONS["gd_no_ema"]
    plan = [(m, m, seed, {}) for m in ("pgd_at", "generalist_d") for seed in seeds]
    plan.append(("gd_no_ema", method, 0, overrides))
    # Two runs at a time, each its own process, as `--jobs=2` does.
    finished = repro.run_plan(plan, root=str(tmp_path), suite="digits", extra=TINY, done={}, jobs=2)
    assert [(r.label, r.seed) for r in finished] == [(p[0], p[2]) for p in plan]
    with open(tmp_path / "runs.json") as f:
        assert [(e["label"], e["seed"]) for e in json.load(f)] == [(p[0], p[2]) for p in plan]
    assert all(r.ended >= r.seconds > 0 for r in finished)
    runs, ablation = finished[:-1], finished[-1]
    for run in runs + [ablation]:
        assert 0.0 <= run.metrics["union"] <= run.metrics["worst_linf"] <= run.metrics["clean"]
        assert 0.0 <= run.metrics["last_pgd20"] <= run.metrics["last_clean"] <= 1.0
        assert run.metrics["best_epoch"] in (1, 2)
    results = tmp_path / "RESULTS.md"
    table = repro_tables.write_results(
        str(results),
        runs,
        suite="digits",
        seeds=list(seeds),
        wall=12.0,
        command="python -m generalist_tf.experiments.repro --test",
        ablation_runs=[ablation],
        jobs=2,
    )
    text = results.read_text()
    assert "| pgd_at |" in text and "| generalist_d |" in text
    assert (
        "Generalist-D vs PGD-AT" in text
        and "python -m generalist_tf.experiments.repro --test" in text
    )
    assert "## Exported G against the last G" in text and "Without checkpoint selection" in text
    assert "## Ablations" in text and f"| {what} |" in text
    assert "| generalist_d (as in the table above) |" in text
    assert os.path.getsize(tmp_path / "tradeoff.png") > 1000
    mean, std = table["pgd_at"]["clean"]
    values = [100 * r.metrics["clean"] for r in runs if r.label == "pgd_at"]
    assert mean == pytest.approx(sum(values) / len(seeds))
    # The sample std over seeds (0 for a single seed).
    assert std == pytest.approx(statistics.stdev(values) if len(values) > 1 else 0.0)
    assert "gd_no_ema" not in table  # ablations stay out of the main table

    assert "every run trained by this invocation" in text and "--jobs=2" in text
    assert "## Every run" in text
    assert "`python -m generalist_tf.main --flagfile=flags/digits_pgd_at.cfg" in text
    assert f"--seed={seeds[-1]}" in text and "--ema_decay=0" in text

    # A second invocation reuses what runs.json records and finds on disk, and retrains the rest
    # alone (jobs=1) from scratch (restart: its checkpoints are set aside) to the same numbers:
    # with --deterministic, parallel runs do not interact.
    retrained = ("generalist_d", seeds[-1])
    os.remove(tmp_path / "generalist_d" / f"seed{seeds[-1]}" / "report.json")
    done = repro_runs.reusable(str(tmp_path))
    assert set(done) == {(p[0], p[2]) for p in plan} - {retrained}
    assert repro_runs.read_metrics(str(tmp_path / "pgd_at" / "seed0")) == runs[0].metrics
    again = repro.run_plan(
        plan, root=str(tmp_path), suite="digits", extra=TINY, done=done, restart=True
    )
    assert [r.metrics for r in again] == [r.metrics for r in finished]
    assert [r.ended > 0 for r in again] == [(p[0], p[2]) == retrained for p in plan]
    assert f"{len(plan) - 1} of the {len(plan)} runs were reused" in repro_tables.timing(
        again[:-1], again[-1:], wall=30.0, jobs=1
    )


@pytest.mark.slow
def test_flagfiles_reproduce_their_ledger_rows(tmp_path, monkeypatch):
    """`flags/digits_pgd_at.cfg` and `flags/digits_generalist_d.cfg` (seed 0) repeat their
    committed rows of the digits ledger (RESULTS.json), every column: to the last digit on the
    CPU model that recorded the row, within the seeds' spread on another."""
    monkeypatch.chdir(ROOT)
    entries = ledger.read(os.path.join(ROOT, "RESULTS.json"))
    plan = [(m, m, 0, {}) for m in ("pgd_at", "generalist_d")]
    for _, method, seed, _ in plan:
        entry = ledger.find(entries, method, seed)
        assert entry is not None, f"RESULTS.json has no {method} seed {seed} row"
        argv = repro_runs.command(method, repro_runs.run_flags(seed, "digits", {}))
        assert not ledger.differing(
            entry["flags"], ledger.resolved_flags(argv[3:]), ledger.defaults()
        ), method
    runs = repro.run_plan(plan, root=str(tmp_path), suite="digits", extra={}, done={}, jobs=2)
    for run in runs:
        entry = ledger.find(entries, run.label, 0)
        recorded = entry["metrics"]
        # A row repeats to the last digit only on the CPU model that recorded it; elsewhere it
        # must fall within the seeds' spread (3 standard deviations over the ledger's seeds).
        same_cpu = entry.get("cpu") == ledger.machine()
        for key, _ in repro_suites.COLUMNS + repro_suites.SELECTION_COLUMNS:
            seeds = [e["metrics"][key] for e in entries if e["label"] == run.label]
            tolerance = 1e-9 if same_cpu else max(3 * statistics.pstdev(seeds), 0.005)
            assert run.metrics[key] == pytest.approx(recorded[key], abs=tolerance), (
                run.label,
                key,
                entry.get("cpu", "CPU not recorded"),
            )
        if same_cpu:
            assert run.metrics["best_epoch"] == recorded["best_epoch"], run.label


def prepare_mnist_from_digits(data_dir: str) -> None:
    """A prepared tfds `mnist` in `data_dir`, built by tfds' own MNIST builder from IDX files.

    The images are scikit-learn's 8x8 digits (real handwriting) scaled to 28x28 (a logistic
    regression reaches 92% on its test split); only the download is replaced (no network here).
    """
    from sklearn.datasets import load_digits
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    digits = load_digits()
    images = np.kron(digits.images, np.ones((3, 3)))  # 8x8 -> 24x24, then pad to 28x28
    images = np.pad(images, ((0, 0), (2, 2), (2, 2))) * 255 / 16
    images, labels = images.astype(np.uint8), digits.target.astype(np.uint8)
    splits = {"train": slice(0, 1400), "test": slice(1400, None)}
    files = {}
    for split, part in splits.items():
        n = len(labels[part])
        files[f"{split}_data"] = os.path.join(data_dir, f"{split}-images-idx3-ubyte")
        files[f"{split}_labels"] = os.path.join(data_dir, f"{split}-labels-idx1-ubyte")
        with open(files[f"{split}_data"], "wb") as f:
            f.write(struct.pack(">iiii", 2051, n, 28, 28) + images[part].tobytes())
        with open(files[f"{split}_labels"], "wb") as f:
            f.write(struct.pack(">ii", 2049, n) + labels[part].tobytes())
    with (
        mock.patch.object(tfds_mnist, "_TRAIN_EXAMPLES", 1400),
        mock.patch.object(tfds_mnist, "_TEST_EXAMPLES", len(labels) - 1400),
        mock.patch.object(
            tfds.download.DownloadManager, "download_and_extract", return_value=files
        ),
    ):
        tfds.builder("mnist", data_dir=data_dir).download_and_prepare()


@pytest.mark.slow
def test_mnist_suite_trains_on_a_prepared_mnist(tmp_path, monkeypatch):
    """`--suite=mnist --data_dir=DIR`: the digits recipes on tfds' MNIST with the SmallCNN."""
    monkeypatch.chdir(ROOT)
    data_dir = str(tmp_path / "tfds")
    os.makedirs(data_dir)
    prepare_mnist_from_digits(data_dir)
    plan = [("standard", "standard", 0, {})]
    (run,) = repro.run_plan(
        plan, root=str(tmp_path), suite="mnist", extra={**TINY, "data_dir": data_dir}, done={}
    )
    assert "--dataset=mnist" in run.command and "--model=small_cnn" in run.command
    with open(tmp_path / "standard" / "seed0" / "flags.cfg") as f:
        recorded = f.read().splitlines()
    assert "--dataset=mnist" in recorded and "--model=small_cnn" in recorded
    with open(tmp_path / "standard" / "seed0" / "report.json") as f:
        report = json.load(f)
    assert report["num_examples"] == 397  # the whole (prepared) test split
    assert 0.0 <= run.metrics["union"] <= run.metrics["worst_linf"] <= run.metrics["clean"] <= 1.0
    with open(tmp_path / "standard" / "seed0" / "results.json") as f:
        assert json.load(f)["dataset"] == "mnist"


def test_ledger_carries_finished_runs_to_the_next_session(tmp_path, monkeypatch):
    """A run finished in one session is reused in the next one (fresh workdir) from the ledger,
    and retrained once its command resolves to other flags; --notrain only collects."""
    monkeypatch.chdir(ROOT)
    path = str(tmp_path / "RESULTS_test.json")
    plan = [("pgd_at", "pgd_at", 0, {})]
    trained = []

    def fake_run_one(method, seed, *, root, suite, extra, label=None, restart=False):
        trained.append((method, seed, dict(extra)))
        return repro_suites.Run(
            label or method, seed, helpers_train.FAKE_METRICS, 7.0, command="cmd"
        )

    monkeypatch.setattr(repro, "run_one", fake_run_one)
    args = dict(suite="fashion_mnist", extra={}, done={}, ledger_path=path)
    first = repro.run_plan(plan, root=str(tmp_path / "session1"), **args)
    assert len(trained) == 1 and first[0].ended > 0
    (entry,) = ledger.read(path)
    assert (entry["label"], entry["seed"], entry["method"]) == ("pgd_at", 0, "pgd_at")
    assert entry["flags"]["epsilon"] == "--epsilon=0.1"  # from flags/fashion_mnist_common.cfg
    assert entry["flags"]["variant"] == "--variant=pgd_at" and "workdir" not in entry["flags"]
    assert (
        entry["commit"]
        and entry["metrics"] == helpers_train.FAKE_METRICS
        and entry["seconds"] == 7.0
    )
    assert entry["resumed"] is False

    # The next session: a new workdir root, nothing trained, the ledger's numbers.
    second = repro.run_plan(plan, root=str(tmp_path / "session2"), **args)
    assert (
        len(trained) == 1
        and second[0].metrics == helpers_train.FAKE_METRICS
        and second[0].ended == 0
    )
    assert second[0].commit == entry["commit"]

    # An entry recorded before a flag existed: the missing flag counts as its default.
    default = ledger.defaults()
    del entry["flags"][next(n for n, v in entry["flags"].items() if v == default[n])]
    ledger.upsert(path, entry)
    assert repro.run_plan(plan, root=str(tmp_path / "session3"), **args)[0].ended == 0
    assert len(trained) == 1

    # Another protocol (an override, or an edited flagfile) is another run: retrained.
    changed = {**args, "extra": {"epochs": 3}}
    repro.run_plan(plan, root=str(tmp_path / "session4"), **changed)
    assert trained[-1] == ("pgd_at", 0, {"epochs": 3}) and len(trained) == 2
    assert ledger.read(path)[0]["flags"]["epochs"] == "--epochs=3"  # replaced, not duplicated
    assert len(ledger.read(path)) == 1

    # --notrain: collects what is finished, trains nothing.
    more = plan + [("trades", "trades", 0, {})]
    found = repro.run_plan(more, root=str(tmp_path / "session5"), **changed, train=False)
    assert [r.label for r in found] == ["pgd_at"] and len(trained) == 2
    # --noreuse retrains even what the ledger holds.
    repro.run_plan(plan, root=str(tmp_path / "session6"), **changed, restart=True)
    assert len(trained) == 3


def test_a_run_reused_from_disk_keeps_the_commit_that_finished_it(tmp_path, monkeypatch):
    """A later invocation (another commit) that reuses a finished run from `runs.json` records
    the commit of the tree that trained it, in its result and in the ledger."""
    monkeypatch.chdir(ROOT)
    path = str(tmp_path / "RESULTS_test.json")
    plan = [("pgd_at", "pgd_at", 0, {})]

    def fake_run_one(method, seed, *, root, suite, extra, label=None, restart=False):
        return repro_suites.Run(
            label or method, seed, helpers_train.FAKE_METRICS, 7.0, command="cmd"
        )

    monkeypatch.setattr(repro, "run_one", fake_run_one)
    monkeypatch.setattr(repro, "read_metrics", lambda workdir: helpers_train.FAKE_METRICS)
    args = dict(root=str(tmp_path), suite="fashion_mnist", extra={})
    monkeypatch.setattr(ledger, "commit", lambda: "a" * 40)
    # Trains and records runs.json (and another ledger, as the background queue's invocation).
    repro.run_plan(plan, done={}, ledger_path=str(tmp_path / "first.json"), **args)
    monkeypatch.setattr(ledger, "commit", lambda: "b" * 40)
    (run,) = repro.run_plan(plan, done={("pgd_at", 0): 7.0}, ledger_path=path, train=False, **args)
    assert run.commit == "a" * 40
    assert ledger.read(path)[0]["commit"] == "a" * 40


def test_a_workdir_that_ran_other_flags_is_retrained_from_scratch(tmp_path, monkeypatch):
    """A finished workdir whose recorded flags.cfg differs from what the command now resolves to
    (an edited flagfile) is neither reused nor resumed: it is retrained with --restart."""
    monkeypatch.chdir(ROOT)
    restarts = []

    def fake_run_one(method, seed, *, root, suite, extra, label=None, restart=False):
        restarts.append(restart)
        return repro_suites.Run(
            label or method, seed, helpers_train.FAKE_METRICS, 1.0, command="cmd"
        )

    monkeypatch.setattr(repro, "run_one", fake_run_one)
    monkeypatch.setattr(repro, "read_metrics", lambda workdir: helpers_train.FAKE_METRICS)
    workdir = tmp_path / "pgd_at" / "seed0"
    workdir.mkdir(parents=True)
    plan = [("pgd_at", "pgd_at", 0, {})]
    args = dict(root=str(tmp_path), suite="fashion_mnist", extra={}, ledger_path="")
    (workdir / "flags.cfg").write_text(
        "--flagfile=flags/fashion_mnist_pgd_at.cfg\n--seed=0\n--select_metric=pgd\n"
    )
    repro.run_plan(plan, done={("pgd_at", 0): 5.0}, **args)
    assert restarts == [True]
    (workdir / "flags.cfg").write_text("--flagfile=flags/fashion_mnist_pgd_at.cfg\n--seed=0\n")
    assert repro.run_plan(plan, done={("pgd_at", 0): 5.0}, **args)[0].seconds == 5.0
    assert restarts == [True]  # the same flags: reused, nothing trained


@pytest.mark.slow
def test_fashion_mnist_flagfile_repeats_its_ledger_row(tmp_path, monkeypatch):
    """`flags/fashion_mnist_pgd_at.cfg --seed=0` repeats its committed row (RESULTS_fashion_mnist.json).

    Reduced budget (a full row is about an hour here, most of it the attack suite on 2,000
    images): the whole training run exactly as recorded, and the columns of training's final
    table on the 10,000 test images (clean and PGD-20 of the exported and of the last G, and the
    epoch selected); the attack suite is not rerun (`--nofinal_eval`). About 25 minutes here.
    """
    monkeypatch.chdir(ROOT)
    entry = ledger.find(ledger.read(os.path.join(ROOT, "RESULTS_fashion_mnist.json")), "pgd_at", 0)
    assert entry is not None, "RESULTS_fashion_mnist.json has no pgd_at seed 0 row"
    argv = repro_runs.command(
        "pgd_at", repro_runs.run_flags(0, "fashion_mnist", {}), "fashion_mnist"
    )
    assert not ledger.differing(entry["flags"], ledger.resolved_flags(argv[3:]), ledger.defaults())
    workdir = str(tmp_path / "pgd_at")
    result = helpers_train.run_main(
        *argv[3:], f"--workdir={workdir}", "--nofinal_eval", "--verbose=0", timeout=3600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert results["best_epoch"] == entry["metrics"]["best_epoch"]
    for key, name in (
        ("exported_clean", "best/clean_accuracy"),
        ("exported_pgd20", "best/pgd_accuracy"),
        ("last_clean", "global/clean_accuracy"),
        ("last_pgd20", "global/pgd_accuracy"),
    ):
        assert results["test"][name] == pytest.approx(entry["metrics"][key], abs=1e-6), key
