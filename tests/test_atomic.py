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


def test_temporaries_carry_the_pid_and_a_killed_writers_are_removed(tmp_path, dead_pid):
    import os
    import time

    hexes = ["0" * 32, "1" * 32, "2" * 32]
    stale = tmp_path / f".a.json.{dead_pid}-{hexes[0]}.tmp"          # killed run (pid gone)
    legacy = tmp_path / f".a.json.{hexes[1]}.tmp"                     # earlier naming, older than this process
    live = tmp_path / f".b.json.{os.getpid()}-{hexes[2]}.tmp"         # a running writer's: kept
    unrelated = tmp_path / ".notes.tmp"                               # not ours: kept
    for path in (stale, legacy, live, unrelated):
        path.write_text("partial")
    old = time.time() - 3600
    os.utime(legacy, (old, old))
    write_text_atomic(tmp_path / "a.json", "good")
    assert (tmp_path / "a.json").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.json", live.name, unrelated.name])


def test_training_checkpoint_handler_removes_only_stale_temporaries(tmp_path, dead_pid):
    import os

    import torch
    from ignite.engine import Engine

    from scripts.handlers.checkpoint import TrainingCheckpointHandler

    ckpt = tmp_path / "models"
    ckpt.mkdir()
    stale = [ckpt / f".checkpoint_epoch=3.pt.{dead_pid}-{'a' * 32}.tmp", ckpt / f".model.pt.{dead_pid}-{'b' * 32}.tmp"]
    live = ckpt / f".checkpoint_epoch=4.pt.{os.getpid() + 0}-{'c' * 32}.tmp"
    for path in (*stale, live):
        path.write_bytes(b"half a checkpoint")
    engine = Engine(lambda e, b: None)
    TrainingCheckpointHandler(ckpt, {"network": torch.nn.Linear(1, 1)}).attach(engine)
    engine.run([0], max_epochs=1)
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == sorted(["checkpoint_epoch=1.pt", "model.pt", live.name])
    torch.load(ckpt / "model.pt", weights_only=True)
