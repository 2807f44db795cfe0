"""The command line's flags (`cli`): definitions, parsing from the root, the resolved-flags record."""

import pytest

from generalist_tf import cli, config


def test_flag_names_are_the_defined_flags_sorted_without_absl_s_own():
    names = cli.flag_names()
    assert names == sorted(set(names))
    assert "flagfile" not in names  # absl's own flag
    for name in ("workdir", "epsilon", "mixing", "select_metric", "precision"):
        assert name in names, name


def test_parse_reads_relative_flagfiles_from_the_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository root: flags/ is found all the same
    values = cli.parse("--flagfile=flags/smoke.cfg", "--epochs=4", "--workdir=/tmp/unused")
    assert values["epochs"].value == 4 and values["workdir"].value == "/tmp/unused"


def test_written_flags_reparse_to_the_same_config(tmp_path):
    values = cli.parse("--flagfile=flags/smoke.cfg", "--workdir=/tmp/unused", "--seed=5")
    path = str(tmp_path / "flags.cfg")
    cli.write_flags(values, path)
    with open(path) as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("# ") and "--seed=5" in lines
    again = cli.parse(f"--flagfile={path}")
    assert config.from_flags(again.flag_values_dict()) == config.from_flags(
        values.flag_values_dict()
    )


def test_config_from_flagfile_applies_the_overrides_and_validates():
    cfg = cli.config_from_flagfile("flags/smoke.cfg", workdir="/tmp/unused", epochs=2, seed=9)
    assert (cfg.optimisation.epochs, cfg.runtime.seed) == (2, 9)
    with pytest.raises(ValueError, match=r"^--epochs must be an integer >= 1, got 0$"):
        cli.config_from_flagfile("flags/smoke.cfg", workdir="/tmp/unused", epochs=0)


def test_parse_leaves_the_working_directory_alone_and_names_a_missing_flagfile(
    tmp_path, monkeypatch
):
    import os

    from absl import flags

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.cfg").write_text("# mine\n--flagfile=flags/smoke.cfg\n\n--seed=3\n")
    values = cli.parse("--flagfile=mine.cfg", "--workdir=/tmp/unused")  # here, nesting the root's
    assert values["seed"].value == 3 and values["dataset"].value == "digits"
    assert os.getcwd() == str(tmp_path)
    with pytest.raises(flags.Error, match="^--flagfile=nowhere.cfg: cannot read it"):
        cli.parse("--flagfile=nowhere.cfg")
