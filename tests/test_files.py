"""files: a failed write leaves the finished file and no temporary one; a full disk is named."""

import errno
import json
import os

import pytest

from generalist_tf import files


def test_a_staged_write_replaces_the_file_only_when_complete(tmp_path):
    path = tmp_path / "report.json"
    files.write_json(str(path), {"a": 1}, indent=2)
    assert path.read_text() == json.dumps({"a": 1}, indent=2) + "\n"
    files.write_text(str(path), "second")
    assert path.read_text() == "second"
    assert os.listdir(tmp_path) == ["report.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_staging_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("finished")
    with pytest.raises(RuntimeError, match="boom"):
        with files.staged(str(path)) as staging:
            with open(staging, "w") as f:
                f.write("half")
            raise RuntimeError("boom")
    assert path.read_text() == "finished"
    assert os.listdir(tmp_path) == ["results.json"]


def test_the_staging_name_keeps_the_extension_and_is_hidden(tmp_path):
    with files.staged(str(tmp_path / "curve.png")) as staging:
        name = os.path.basename(staging)
        open(staging, "w").close()
    assert name.startswith(".curve.staging-") and name.endswith(".png")


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        RuntimeError("ckpt-19_temp/part-0; No space left on device [Op:SaveV2]"),
    ],
)
def test_a_full_disk_is_raised_as_disk_full_error_naming_the_target(tmp_path, error):
    path = tmp_path / "flags.cfg"
    with pytest.raises(files.DiskFullError) as raised:
        with files.staged(str(path)) as staging:
            open(staging, "w").close()
            raise error
    assert raised.value.path == str(path) and raised.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "error, full",
    [
        (OSError(errno.ENOSPC, "x"), True),
        (OSError(errno.EACCES, "Permission denied"), False),
        (MemoryError("ResourceExhaustedError: OOM when allocating tensor"), False),
        (ValueError("No space left on device"), True),
    ],
)
def test_is_disk_full(error, full):
    assert files.is_disk_full(error) is full
