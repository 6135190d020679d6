"""Write a validated dataset as PNG files plus ``datalist.json``, atomically.

Layout (see ``docs/architecture.md``)::

    DIR/datalist.json
    DIR/images/<case>.png   DIR/alpha/<case>.png   DIR/masks/<case>_r<k>.png   DIR/trimaps/<case>.png

An image of 1 (grey) or 3 (RGB) channels is one PNG; an image of any other number of channels C
(several MR modalities) is C grey PNGs ``images/<case>_c<k>.png`` listed in order under ``image``
(MONAI's ``LoadImaged`` stacks a list of files as channels).

Everything is written into a hidden temporary folder next to ``DIR`` (same file system), every PNG is
read back and compared with the array it came from, ``datalist.json`` is written last, and only
then is the folder renamed to ``DIR``. Cases are written one at a time as they come (an iterable of
``(case, arrays)`` pairs), so memory does not grow with the number of cases. A failed or
interrupted run removes its temporary folder (a killed one leaves only the hidden
``.DIR.tmp-<pid>-*`` folder, which the next run for ``DIR`` removes), so ``DIR`` never holds a
partial dataset. A full or unwritable file system is a one-line error naming the folder.
An existing non-empty ``DIR`` is refused unless ``overwrite=True`` and it is itself a prepared dataset
(holds ``datalist.json``); it is then swapped out only after the new dataset is complete.

Example:
    >>> write_dataset(cases, folds, "/tmp/ds", {"name": "toy", "num_folds": 2, "seed": 0})  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image

from scripts.atomic import is_stale
from scripts.data.errors import DataPreparationError

__all__ = ["DATALIST_NAME", "case_paths", "write_png", "read_png", "write_dataset", "temporary_prefix",
           "remove_stale_dataset_temporaries", "storage_error"]

DATALIST_NAME = "datalist.json"


def case_paths(case: str, raters: int, channels: int = 1) -> dict:
    """Relative paths of one case's files: ``image`` (a list of one PNG per channel when ``channels`` is
    neither 1 nor 3), ``alpha``, ``masks`` (list) and ``trimap``."""
    return {
        "image": f"images/{case}.png" if channels in (1, 3) else [f"images/{case}_c{k}.png" for k in range(channels)],
        "alpha": f"alpha/{case}.png",
        "masks": [f"masks/{case}_r{k}.png" for k in range(raters)],
        "trimap": f"trimaps/{case}.png",
    }


def write_png(path: str | PathLike, array: np.ndarray) -> None:
    """Write a uint8 (H, W) array as an 8-bit grey PNG or a uint8 (H, W, 3) array as an RGB PNG, losslessly."""
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"{path}: expected uint8 (H, W) or (H, W, 3), got {array.dtype} {array.shape}")
    Image.fromarray(np.ascontiguousarray(array), mode="L" if array.ndim == 2 else "RGB").save(path, format="PNG")


def read_png(path: str | PathLike) -> np.ndarray:
    """Read a PNG written by :func:`write_png` back into the same uint8 array (no transpose)."""
    with Image.open(path) as img:
        return np.array(img)


def temporary_prefix(out: Path, kind: str) -> str:
    """Prefix of this process's hidden temporary folders next to ``out``: ``.<out>.<kind>-<pid>-``."""
    return f".{out.name}.{kind}-{os.getpid()}-"


def remove_stale_dataset_temporaries(out: str | PathLike) -> list[Path]:
    """Clean up after a killed run for ``out``: remove its stale ``.<out>.{tmp,download,old}-*`` folders.

    A temporary is stale when the process in its name is gone (or, without a pid, it predates this
    process). A stale ``.old-`` folder is a previous dataset that was being replaced: when ``out`` is
    missing (killed between the two renames) it is renamed back to ``out`` instead of deleted.

    Returns the removed (or restored) paths.
    """
    out = Path(out).expanduser().absolute()
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(?P<kind>tmp|download|old)-(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+$")
    done = []
    for path in sorted(out.parent.iterdir()):
        match = pattern.match(path.name)
        if not match or not is_stale(path, int(match["pid"]) if match["pid"] else None):
            continue
        if match["kind"] == "old" and not out.exists() and (path / DATALIST_NAME).is_file():
            os.rename(path, out)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        done.append(path)
    return done


#: errors of the file system that the user can fix, and how they are described
_STORAGE_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                   errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                   errno.EROFS: "read-only file system"}


def storage_error(error: OSError, folder: Path, what: str) -> DataPreparationError | None:
    """A one-line :class:`DataPreparationError` for a full or unwritable ``folder`` (None for other errors)."""
    reason = _STORAGE_ERRORS.get(error.errno)
    if reason is None:
        return None
    return DataPreparationError(f"{folder}: {reason} while writing {what}; free space or choose another --out "
                                "(nothing already there was changed)")


def _check_target(out: Path, overwrite: bool) -> bool:
    """Return whether ``out`` exists (and may be replaced); raise when it must not be touched."""
    if not out.exists() and not out.is_symlink():
        return False
    if not out.is_dir() or out.is_symlink():
        raise DataPreparationError(f"{out}: exists and is not a folder; choose another --out")
    if not any(out.iterdir()):
        return True
    if not overwrite:
        raise DataPreparationError(f"{out}: folder exists and is not empty; pass --overwrite to replace a "
                                   "prepared dataset, or choose another --out")
    if not (out / DATALIST_NAME).is_file():
        raise DataPreparationError(f"{out}: not a prepared dataset (no {DATALIST_NAME}); refusing to replace it")
    return True


def _image_pairs(rel: str | list, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(path, array) of the image's PNG(s): one file, or one grey PNG per channel of an (H, W, C) image."""
    if isinstance(rel, str):
        return [(rel, image)]
    return [(r, np.ascontiguousarray(image[..., k])) for k, r in enumerate(rel)]


def write_dataset(cases: Mapping[str, dict] | Iterable[tuple[str, dict]], folds: Mapping[str, int],
                  out: str | PathLike, meta: dict, overwrite: bool = False,
                  item_extras: Mapping[str, dict] | None = None) -> Path:
    """Write ``cases`` to ``out`` (atomically, see the module docstring) and return ``out``.

    Args:
        cases: ``{case: {"image", "alpha", "masks", "trimap"}}`` of validated uint8 arrays (written in
            sorted order), or an iterable of ``(case, arrays)`` pairs written in the order they come and
            dropped after writing (a generator keeps memory flat however many cases there are).
        folds: ``{case: fold}`` for every case.
        out: the dataset folder.
        meta: top-level entries of ``datalist.json`` (``name``, ``num_folds``, ``seed``, ...); ``training``
            is added here.
        overwrite: replace an existing prepared dataset at ``out``.
        item_extras: optional ``{case: {key: value}}`` added to the case's ``datalist.json`` item (e.g. its
            ``group`` or ``source_shape``).

    Raises:
        DataPreparationError: ``out`` may not be replaced, a written file does not read back identically,
            or the file system is full or not writable (the message names the folder).
    """
    out = Path(out).expanduser().absolute()
    if isinstance(cases, Mapping):
        missing = sorted(set(cases) - set(folds))
        if missing:
            raise DataPreparationError(f"no fold for case(s) {missing[:5]}")
        mapping = cases
        cases = ((case, mapping[case]) for case in sorted(mapping))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_dataset_temporaries(out)
        replace = _check_target(out, overwrite)
        tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(out, "tmp"), dir=out.parent))
    except OSError as e:
        error = storage_error(e, out.parent, f"the dataset {out.name}")
        if error is None:
            raise
        raise error from e
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset gets ordinary permissions
        for sub in ("images", "alpha", "masks", "trimaps"):
            (tmp / sub).mkdir()
        training = []
        for case, arrays in cases:
            if case not in folds:
                raise DataPreparationError(f"no fold for case '{case}'")
            image = arrays["image"]
            paths = case_paths(case, len(arrays["masks"]), 1 if image.ndim == 2 else image.shape[2])
            pairs = [*_image_pairs(paths["image"], image), (paths["alpha"], arrays["alpha"]),
                     (paths["trimap"], arrays["trimap"]), *zip(paths["masks"], arrays["masks"])]
            for rel, array in pairs:
                write_png(tmp / rel, array)
                back = read_png(tmp / rel)
                if back.shape != array.shape or not np.array_equal(back, array):
                    raise DataPreparationError(f"case '{case}': {rel} does not read back identically")
            training.append({"case": case, "fold": int(folds[case]), **paths, **(item_extras or {}).get(case, {})})
            del arrays, pairs  # the next case does not keep this one alive
        datalist = {**meta, "training": training}
        with open(tmp / DATALIST_NAME, "w") as f:
            json.dump(datalist, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

        if replace:
            backup = Path(tempfile.mkdtemp(prefix=temporary_prefix(out, "old"), dir=out.parent))
            backup.rmdir()
            os.rename(out, backup)
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(backup, out)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            error = storage_error(e, out.parent, f"the dataset {out.name}")
            if error is not None:
                raise error from e
        raise
    return out
