"""The sha256 of a file, read in blocks (downloads, config snapshots, release weights)."""

from __future__ import annotations

import hashlib
import os
from typing import Union

__all__ = ["sha256_file"]


def sha256_file(path: Union[str, "os.PathLike[str]"], block_size: int = 1 << 20) -> str:
    """Hex sha256 of ``path``'s bytes, read ``block_size`` bytes at a time (bounded memory).

    Example::

        sha256_file("models/model.pt")  # 'e3b0c442...'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()
