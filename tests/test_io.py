"""Atomic outputs on tiny folders: every state a kill can leave recovers to the old or the new set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from talbench.errors import InputError, OutputError
from talbench.io import COMMIT_MARK, atomic_path, check_output_file, recover_outputs, staged_outputs, staging_dir

NAMES = ("a.json", "b.csv", "run")  # two files and a folder, as a stage writes them


def _write_set(folder: Path, tag: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.json").write_text(f"{tag} a")
    (folder / "b.csv").write_text(f"{tag} b")
    (folder / "run").mkdir(exist_ok=True)
    (folder / "run" / "last.ckpt").write_text(f"{tag} ckpt")


def _read_set(folder: Path) -> tuple[str, ...]:
    return ((folder / "a.json").read_text(), (folder / "b.csv").read_text(), (folder / "run" / "last.ckpt").read_text())


OLD, NEW = ("old a", "old b", "old ckpt"), ("new a", "new b", "new ckpt")


def test_staged_outputs_replace_together_and_a_failing_body_changes_nothing(tmp_path):
    _write_set(tmp_path, "old")
    with pytest.raises(RuntimeError):
        with staged_outputs(tmp_path, "stage") as tmp:
            _write_set(tmp, "new")
            raise RuntimeError("the stage failed after writing")
    assert _read_set(tmp_path) == OLD and not staging_dir(tmp_path, "stage").exists()
    with staged_outputs(tmp_path, "stage") as tmp:
        _write_set(tmp, "new")
    assert _read_set(tmp_path) == NEW and sorted(p.name for p in tmp_path.iterdir()) == sorted(NAMES)


@pytest.mark.parametrize("placed", range(len(NAMES) + 1))
@pytest.mark.parametrize("moved_aside", [False, True])
def test_every_state_of_an_interrupted_commit_recovers_to_the_new_set(tmp_path, placed, moved_aside):
    """A commit killed after `placed` entries (and, for the next folder, after moving the old one aside)."""
    _write_set(tmp_path, "old")
    staging = staging_dir(tmp_path, "stage")
    _write_set(staging / "new", "new")
    (staging / COMMIT_MARK).write_text("\n".join(NAMES))
    (staging / "old").mkdir()
    for name in sorted(NAMES)[:placed]:
        if (tmp_path / name).is_dir():
            (tmp_path / name).rename(staging / "old" / name)
        os.replace(staging / "new" / name, tmp_path / name)
    if moved_aside and placed < len(NAMES) and sorted(NAMES)[placed] == "run":
        (tmp_path / "run").rename(staging / "old" / "run")
    recover_outputs(tmp_path)
    assert _read_set(tmp_path) == NEW and not staging.exists()


def test_a_kill_while_cleaning_up_leaves_nothing_to_trip_over(tmp_path):
    _write_set(tmp_path, "new")
    staging = staging_dir(tmp_path, "stage")
    (staging / "old").mkdir(parents=True)
    (staging / COMMIT_MARK).write_text("")  # `new/` already removed, the mark not yet
    recover_outputs(tmp_path)
    assert _read_set(tmp_path) == NEW and not staging.exists()


def test_unfinished_staging_is_dropped_by_its_own_stage_only(tmp_path):
    _write_set(tmp_path, "old")
    for stage in ("train", "evaluate"):
        _write_set(staging_dir(tmp_path, stage) / "new", "half")
    recover_outputs(tmp_path, "evaluate")
    assert not staging_dir(tmp_path, "evaluate").exists() and staging_dir(tmp_path, "train").exists()
    assert _read_set(tmp_path) == OLD


def test_atomic_path_never_replaces_a_folder_with_a_file_or_back(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "keep").write_text("x")
    with pytest.raises(InputError, match="a folder is there"):
        with atomic_path(tmp_path / "folder") as tmp:
            tmp.write_text("a file")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="a file is there"):
        with atomic_path(tmp_path / "file") as tmp:
            tmp.mkdir()
    assert (tmp_path / "folder" / "keep").read_text() == "x" and (tmp_path / "file").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]


def test_atomic_path_swaps_folders_whole(tmp_path):
    target = tmp_path / "report"
    target.mkdir()
    (target / "old.md").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.md").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.md"] and sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_work_folders_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / f".out.json.{dead}.abc").mkdir()
    (tmp_path / f".out.json.{os.getpid()}.def").mkdir()  # this process: alive
    with atomic_path(tmp_path / "out.json") as tmp:
        tmp.write_text("{}")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [f".out.json.{os.getpid()}.def", "out.json"]


def test_check_output_file_refuses_folders_and_special_files(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="a folder is there"):
        check_output_file(tmp_path / "folder")
    with pytest.raises(InputError, match="not a regular file"):
        check_output_file("/dev/null")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_output_file(tmp_path / "plain" / "out.json")
    assert check_output_file(tmp_path / "new" / "deeper" / "out.json") == tmp_path / "new" / "deeper" / "out.json"


def test_a_failed_write_is_an_output_error_naming_the_target(tmp_path):
    with pytest.raises(OutputError) as err:
        with atomic_path(tmp_path / "out.json"):
            raise OSError(28, "No space left on device")  # as a write into the temporary copy fails
    assert str(err.value).startswith(f"{tmp_path / 'out.json'}: -: field 'output': cannot write (No space left on device)")
    assert list(tmp_path.iterdir()) == []
