"""The results ledger (`experiments.ledger`): read, find, upsert, and which flags differ."""

import pytest

from generalist_tf.experiments import ledger
from tests.helpers_train import ROOT


def test_ledger_rejects_a_file_that_is_not_one(tmp_path):
    bad = tmp_path / "RESULTS_x.json"
    bad.write_text('{"runs": [{"label": "a"}]}')
    with pytest.raises(ValueError, match=r"results ledger .*RESULTS_x.json: not a ledger"):
        ledger.read(str(bad))
    bad.write_text("{trunc")
    with pytest.raises(ValueError, match="not a ledger"):
        ledger.read(str(bad))
    assert ledger.read(str(tmp_path / "missing.json")) == []


def entry(label, seed, **metrics):
    return {"label": label, "seed": seed, "flags": {"seed": f"--seed={seed}"}, "metrics": metrics}


def test_upsert_replaces_the_entry_of_the_same_run_and_keeps_the_others(tmp_path):
    path = str(tmp_path / "RESULTS_x.json")
    ledger.upsert(path, entry("trades", 0, clean=0.1))
    ledger.upsert(path, entry("avg", 1, clean=0.2))
    ledger.upsert(path, entry("trades", 0, clean=0.3))
    entries = ledger.read(path)
    assert [(e["label"], e["seed"]) for e in entries] == [("avg", 1), ("trades", 0)]
    assert ledger.find(entries, "trades", 0)["metrics"] == {"clean": 0.3}
    assert ledger.find(entries, "trades", 1) is None


def test_differing_counts_a_missing_flag_as_its_default_and_ignores_where_runs_write():
    default = {"epochs": "--epochs=3", "seed": "--seed=0"}
    recorded = {"epochs": "--epochs=3", "workdir": "--workdir=/a"}
    current = {"seed": "--seed=0", "workdir": "--workdir=/b"}
    assert ledger.differing(recorded, current, default) == []
    assert ledger.differing(recorded, {**current, "seed": "--seed=1"}, default) == ["seed"]


def test_resolved_flags_are_the_command_s_values_without_where_it_writes(monkeypatch):
    monkeypatch.chdir(ROOT)  # flagfiles nest by paths relative to the repository root
    flags = ledger.resolved_flags(["--flagfile=flags/smoke.cfg", "--epochs=7", "--workdir=/x"])
    assert flags["epochs"] == "--epochs=7" and "workdir" not in flags
    assert set(flags) == set(ledger.defaults())


def test_kept_models_are_copied_beside_the_ledger_with_their_hash(tmp_path):
    import hashlib

    workdir = tmp_path / "run"
    (workdir / "free_window").mkdir(parents=True)
    (workdir / "export.keras").write_bytes(b"G")
    (workdir / "free_window" / "natural.keras").write_bytes(b"natural EMA")
    from generalist_tf.experiments import repro_runs

    path = str(tmp_path / "repo" / "RESULTS_x.json")
    kept = ledger.keep_models(path, "generalist_d", 2, repro_runs.kept_model_files(str(workdir)))
    assert kept == {
        "exported": {
            "path": "models/RESULTS_x/generalist_d_seed2.keras",
            "sha256": hashlib.sha256(b"G").hexdigest(),
        },
        "free_window_natural": {
            "path": "models/RESULTS_x/generalist_d_seed2_free_window_natural.keras",
            "sha256": hashlib.sha256(b"natural EMA").hexdigest(),
        },
    }
    assert (tmp_path / "repo" / kept["exported"]["path"]).read_bytes() == b"G"
    # A run without an export keeps nothing (and fails nothing).
    assert ledger.keep_models(path, "x", 0, {"exported": str(tmp_path / "none.keras")}) == {}
