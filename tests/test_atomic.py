"""Atomic writes (scripts/atomic.py)."""

import pytest

from scripts.atomic import atomic_write, write_text_atomic


def test_write_then_replace(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "a.json", "first")
    assert path.read_text() == "first"
    write_text_atomic(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "a.bin", "old")

    def broken(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
