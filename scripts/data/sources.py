"""Fetch and open the source files of a dataset: local paths or URLs, ``.zip`` or plain files.

URLs are downloaded with MONAI's :func:`monai.apps.download_url` (``urllib`` underneath, so
``file://`` addresses work too) and checked against a sha256; local files are checked when a sha256
is given. Zip archives are opened with :mod:`zipfile`; a truncated or corrupt archive is a
:class:`~scripts.data.errors.DatasetSourceError`.

Example:
    >>> from scripts.data.sources import fetch_source, read_pickle_source
    >>> path = fetch_source("https://example.org/data.zip", "/tmp/dl", sha256="...")  # doctest: +SKIP
    >>> records = read_pickle_source(path)  # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from os import PathLike
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image

from scripts.data.errors import DatasetSourceError
from scripts.data.safe_pickle import safe_loads_pickle

__all__ = ["is_url", "fetch_source", "read_pickle_source", "read_trimap_source", "read_zip_member",
           "MAX_MEMBER_BYTES", "MAX_COMPRESSION_RATIO"]

logger = logging.getLogger(__name__)

_URL_SCHEMES = ("http", "https", "ftp", "file")


def is_url(source: str | PathLike) -> bool:
    """Whether ``source`` is an address (``http(s)://``, ``ftp://`` or ``file://``) rather than a path."""
    return urlparse(str(source)).scheme.lower() in _URL_SCHEMES


def fetch_source(source: str | PathLike, download_dir: str | PathLike, sha256: str | None = None) -> Path:
    """Return a local path for ``source``, downloading it when it is a URL.

    Args:
        source: a local path or a URL.
        download_dir: folder the download is written to (created when missing).
        sha256: expected sha256 hex digest. Required for URLs; for local paths it is checked when given.

    Raises:
        DatasetSourceError: missing file, no hash for a URL, failed download or hash mismatch.
    """
    source_str = str(source)
    if is_url(source_str):
        from monai.apps.utils import HashCheckError, download_url  # lazy: monai is slow to import

        if not sha256:
            raise DatasetSourceError(f"{source_str}: a URL source needs a pinned sha256 (pass --source_sha256 "
                                     "/ --trimaps_sha256)")
        name = PurePosixPath(unquote(urlparse(source_str).path)).name or "download"
        target = Path(download_dir) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            download_url(source_str, filepath=target, hash_val=sha256.lower(), hash_type="sha256", progress=False)
        except HashCheckError as e:
            raise DatasetSourceError(f"{source_str}: sha256 mismatch, expected {sha256} ({e})") from e
        except (OSError, RuntimeError) as e:  # URLError, HTTPError, ContentTooShortError are OSErrors
            raise DatasetSourceError(f"{source_str}: download failed ({e})") from e
        if not target.is_file():
            raise DatasetSourceError(f"{source_str}: download produced no file at {target}")
        return target
    path = Path(source_str).expanduser()
    if not path.exists():
        raise DatasetSourceError(f"{path}: source not found")
    if sha256 and path.is_file():
        from monai.apps.utils import check_hash

        if not check_hash(path, sha256.lower(), "sha256"):
            raise DatasetSourceError(f"{path}: sha256 mismatch, expected {sha256}")
    return path


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise DatasetSourceError(f"{path}: not a complete zip archive (truncated or corrupt: {e})") from e


#: largest zip member read (declared and actual size): the pickle of a dataset, not a decompression bomb
MAX_MEMBER_BYTES = 1 << 30
#: largest ratio of a member's size to its compressed size (images and pickles compress far less)
MAX_COMPRESSION_RATIO = 200


def read_zip_member(
    zf: zipfile.ZipFile, path: str | PathLike, member: str, max_bytes: int = MAX_MEMBER_BYTES,
    max_ratio: float = MAX_COMPRESSION_RATIO,
) -> bytes:
    """The bytes of one zip member, refused before and while decompressing when it is too large.

    The declared size and compression ratio are checked first; the member is then decompressed in
    chunks and refused as soon as the bytes actually produced pass ``max_bytes`` (a member whose
    header lies about its size), so a bomb costs at most ``max_bytes`` of memory. Hand-written:
    :mod:`zipfile` reads a member whole, trusting nothing but the data.

    Raises:
        DatasetSourceError: one line naming the archive and member: too large (declared or actual),
            too compressed, or unreadable (truncated, bad CRC, corrupt).
    """
    try:
        info = zf.getinfo(member)
    except KeyError as e:
        raise DatasetSourceError(f"{path}: no member '{member}'") from e
    if info.file_size > max_bytes:
        raise DatasetSourceError(f"{path}: member '{member}' declares {info.file_size} bytes, above the limit of "
                                 f"{max_bytes} bytes; refused unread")
    if info.compress_size and info.file_size / info.compress_size > max_ratio:
        raise DatasetSourceError(f"{path}: member '{member}' expands {info.file_size / info.compress_size:.0f}x "
                                 f"(limit {max_ratio:g}x): refused as a decompression bomb")
    chunks, total = [], 0
    try:
        with zf.open(info) as stream:
            while True:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise DatasetSourceError(f"{path}: member '{member}' decompresses past {max_bytes} bytes (it "
                                             f"declares {info.file_size}): refused as a decompression bomb")
                chunks.append(chunk)
    except DatasetSourceError:
        raise
    except Exception as e:  # BadZipFile (bad CRC), EOFError, zlib.error (not an OSError), ...
        raise DatasetSourceError(
            f"{path}: member '{member}' cannot be read (truncated or corrupt: {type(e).__name__}: {e})"
        ) from e
    return b"".join(chunks)


def _read_member(zf: zipfile.ZipFile, path: Path, member: str) -> bytes:
    return read_zip_member(zf, path, member)


def _is_junk(member: str) -> bool:
    parts = PurePosixPath(member).parts
    return member.endswith("/") or any(p == "__MACOSX" or p.startswith("._") for p in parts)


def read_pickle_source(path: str | PathLike) -> dict:
    """Read the Medical Matting pickle at ``path`` (the ``.pkl`` itself, or a ``.zip`` holding one ``.pkl``).

    The pickle is read with :func:`scripts.data.safe_pickle.safe_loads_pickle`.

    Raises:
        DatasetSourceError: not a zip / pickle, zero or several ``.pkl`` members, truncated data,
            a refused global, or a top level that is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetSourceError(f"{path}: expected a .pkl file or a .zip holding one")
    if zipfile.is_zipfile(path) or path.suffix.lower() == ".zip":
        with _open_zip(path) as zf:
            members = [m for m in zf.namelist() if m.lower().endswith(".pkl") and not _is_junk(m)]
            if len(members) != 1:
                raise DatasetSourceError(f"{path}: expected exactly one .pkl in the zip, found {members or 'none'}")
            data, name = _read_member(zf, path, members[0]), f"{path}:{members[0]}"
    else:
        data, name = path.read_bytes(), str(path)
    try:
        records = safe_loads_pickle(data, source=name)
    except pickle.UnpicklingError as e:  # includes UnsafePickleError
        raise DatasetSourceError(str(e)) from e
    if not isinstance(records, dict):
        raise DatasetSourceError(f"{name}: expected a dict of cases at the top level, got {type(records).__name__}")
    return records


def _decode_png(data: bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode != "L":
                raise DatasetSourceError(f"{name}: trimap must be an 8-bit grey PNG (mode 'L'), got mode '{img.mode}'")
            return np.array(img, dtype=np.uint8)
    except DatasetSourceError:
        raise
    except Exception as e:  # PIL raises many types for broken files
        raise DatasetSourceError(f"{name}: cannot decode trimap image ({type(e).__name__}: {e})") from e


def read_trimap_source(path: str | PathLike) -> dict[str, np.ndarray]:
    """Read trimaps from a ``.zip`` of PNGs (any folder inside, e.g. ``trimap/case01.png``) or a folder of PNGs.

    Returns:
        ``{case: uint8 (H, W) array}``, the case being the file name without ``.png``.

    Raises:
        DatasetSourceError: unreadable archive or image, non-grey PNG, two files for one case, no PNG at all.
    """
    path = Path(path)
    trimaps: dict[str, np.ndarray] = {}

    def add(case: str, data: bytes, name: str) -> None:
        if case in trimaps:
            raise DatasetSourceError(f"{path}: two trimaps for case '{case}' ({name})")
        trimaps[case] = _decode_png(data, name)

    if path.is_dir():
        for f in sorted(path.rglob("*.png")):
            add(f.stem, f.read_bytes(), str(f))
    else:
        with _open_zip(path) as zf:
            for member in sorted(zf.namelist()):
                if member.lower().endswith(".png") and not _is_junk(member):
                    add(PurePosixPath(member).stem, _read_member(zf, path, member), f"{path}:{member}")
    if not trimaps:
        raise DatasetSourceError(f"{path}: no trimap PNG found")
    return trimaps
