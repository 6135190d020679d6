"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file.

Hand-written (the standard library has no atomic write): the data goes to a uniquely named
temporary file in the target's folder (same file system), is flushed and ``fsync``ed, and is
moved onto the target with ``os.replace``; on any error the temporary file is removed and the old
target is untouched.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Union

__all__ = ["atomic_write", "write_text_atomic"]

PathLike = Union[str, "os.PathLike[str]"]


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
    # opened with the usual umask-derived permissions, unlike tempfile.mkstemp's owner-only 0600
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
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
