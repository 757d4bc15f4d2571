"""atomic_path: temp file next to the target, rename on success, delete on failure."""

from __future__ import annotations

import os

import pytest

from cryogan_core.io.atomic import atomic_path


def test_success_renames_onto_final_and_leaves_no_temp(tmp_path):
    final = tmp_path / "particles.star"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent
        assert tmp.name.startswith(".particles.star.partial-")
        assert str(os.getpid()) in tmp.name
        assert tmp.suffix == ".star"
        tmp.write_text("hello")
        assert not final.exists()  # nothing under the final name while writing
    assert final.read_text() == "hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["particles.star"]


def test_existing_file_is_kept_until_the_block_ends(tmp_path):
    final = tmp_path / "map.mrc"
    final.write_text("old")
    with atomic_path(final) as tmp:
        tmp.write_text("new")
        assert final.read_text() == "old"
    assert final.read_text() == "new"


def test_exception_deletes_temp_and_keeps_old_file(tmp_path):
    final = tmp_path / "map.mrc"
    final.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert final.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.mrc"]


def test_exception_before_writing_anything(tmp_path):
    final = tmp_path / "x.star"
    with pytest.raises(KeyError):
        with atomic_path(final):
            raise KeyError("nothing written")
    assert list(tmp_path.iterdir()) == []


def test_creates_parent_directories(tmp_path):
    final = tmp_path / "Job" / "job001" / "out.star"
    with atomic_path(str(final)) as tmp:
        tmp.write_text("x")
    assert final.read_text() == "x"


def test_block_that_writes_nothing_is_an_error(tmp_path):
    final = tmp_path / "x.star"
    with pytest.raises(FileNotFoundError):
        with atomic_path(final):
            pass
    assert not final.exists()
