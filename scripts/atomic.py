"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file.

Hand-written (the standard library has no atomic write): the data goes to a uniquely named
temporary file in the target's folder (same file system), is flushed and ``fsync``ed, and is
moved onto the target with ``os.replace``; on any error the temporary file is removed and the old
target is untouched.

A killed process cannot remove its temporary file, so the names carry the writer's process id,
``.<name>.<pid>-<hex>.tmp``: the first atomic write of a process into a folder removes the
temporaries there whose process is gone (:func:`remove_stale_temporaries`), never those of a
running writer. Names without a pid (``.<name>.<hex>.tmp``, from earlier versions) count as
stale when they are older than the current process.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Optional, Union

__all__ = ["atomic_write", "write_text_atomic", "temporary_name", "pid_alive", "is_stale",
           "remove_stale_temporaries", "PROCESS_START"]

PathLike = Union[str, "os.PathLike[str]"]

#: when this process started (as far as this module knows): temporaries without a pid older than it are stale
PROCESS_START = time.time()
#: ``.<name>.<pid>-<32 hex>.tmp`` (current) and ``.<name>.<32 hex>.tmp`` (no pid: earlier versions)
TEMPORARY_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?(?P<hex>[0-9a-f]{32})\.tmp$")
_swept: set = set()


def temporary_name(name: str) -> str:
    """The hidden temporary name of a file ``name`` written by this process: ``.<name>.<pid>-<hex>.tmp``."""
    return f".{name}.{os.getpid()}-{uuid.uuid4().hex}.tmp"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (a process of another user counts as alive)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(path: Path, pid: Optional[int]) -> bool:
    """A temporary is stale when its writer's process is gone, or (no pid in its name) it predates this process."""
    if pid is not None:
        return not pid_alive(pid)
    try:
        return path.lstat().st_mtime < PROCESS_START
    except FileNotFoundError:
        return False


def remove_stale_temporaries(folder: PathLike, recursive: bool = False) -> list[Path]:
    """Remove the stale atomic-write temporaries of ``folder`` (and of its sub-folders when ``recursive``).

    Returns the removed paths. Temporaries of a running process are kept.

    Example::

        remove_stale_temporaries("eval/cv", recursive=True)   # e.g. after a killed cross-validation
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    entries: Iterable[Path] = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    removed = []
    for path in entries:
        match = TEMPORARY_PATTERN.match(path.name)
        if not match or not is_stale(path, int(match["pid"]) if match["pid"] else None):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def atomic_write(path: PathLike, write: Callable[[IO[Any]], Any]) -> Path:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, then move it onto ``path``.

    Args:
        path: the target file (its folder is created when missing).
        write: writes the content to the binary file object it is given.

    Example::

        atomic_write("out/alpha.npy", lambda f: np.save(f, alpha, allow_pickle=False))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = str(path.parent.absolute())
    if folder not in _swept:  # once per folder and process: a killed earlier run's leftovers go
        remove_stale_temporaries(path.parent)
        _swept.add(folder)
    # opened with the usual umask-derived permissions, unlike tempfile.mkstemp's owner-only 0600
    tmp = path.parent / temporary_name(path.name)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write`."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))
