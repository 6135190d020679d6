"""Write a validated dataset as PNG files plus ``datalist.json``, atomically.

Layout (see ``docs/architecture.md``)::

    DIR/datalist.json
    DIR/images/<case>.png   DIR/alpha/<case>.png   DIR/masks/<case>_r<k>.png   DIR/trimaps/<case>.png

Everything is written into a hidden temporary folder next to ``DIR`` (same file system), every PNG is
read back and compared with the array it came from, ``datalist.json`` is written last, and only
then is the folder renamed to ``DIR``. A failed or interrupted run removes its temporary folder (a
killed one leaves only the hidden ``.DIR.tmp-*`` folder), so ``DIR`` never holds a partial dataset.
An existing non-empty ``DIR`` is refused unless ``overwrite=True`` and it is itself a prepared dataset
(holds ``datalist.json``); it is then swapped out only after the new dataset is complete.

Example:
    >>> write_dataset(cases, folds, "/tmp/ds", {"name": "toy", "num_folds": 2, "seed": 0})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image

from scripts.data.errors import DataPreparationError

__all__ = ["DATALIST_NAME", "case_paths", "write_png", "read_png", "write_dataset"]

DATALIST_NAME = "datalist.json"


def case_paths(case: str, raters: int) -> dict:
    """Relative paths of one case's files: ``image``, ``alpha``, ``masks`` (list) and ``trimap``."""
    return {
        "image": f"images/{case}.png",
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


def write_dataset(cases: Mapping[str, dict], folds: Mapping[str, int], out: str | PathLike, meta: dict,
                  overwrite: bool = False) -> Path:
    """Write ``cases`` to ``out`` (atomically, see the module docstring) and return ``out``.

    Args:
        cases: ``{case: {"image", "alpha", "masks", "trimap"}}`` of validated uint8 arrays.
        folds: ``{case: fold}`` for every case.
        out: the dataset folder.
        meta: top-level entries of ``datalist.json`` (``name``, ``num_folds``, ``seed``, ...); ``training``
            is added here.
        overwrite: replace an existing prepared dataset at ``out``.

    Raises:
        DataPreparationError: ``out`` may not be replaced, or a written file does not read back identically.
    """
    out = Path(out).expanduser().absolute()
    missing = sorted(set(cases) - set(folds))
    if missing:
        raise DataPreparationError(f"no fold for case(s) {missing[:5]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    replace = _check_target(out, overwrite)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset gets ordinary permissions
        for sub in ("images", "alpha", "masks", "trimaps"):
            (tmp / sub).mkdir()
        training = []
        for case in sorted(cases):
            arrays = cases[case]
            paths = case_paths(case, len(arrays["masks"]))
            pairs = [(paths["image"], arrays["image"]), (paths["alpha"], arrays["alpha"]),
                     (paths["trimap"], arrays["trimap"]), *zip(paths["masks"], arrays["masks"])]
            for rel, array in pairs:
                write_png(tmp / rel, array)
                back = read_png(tmp / rel)
                if back.shape != array.shape or not np.array_equal(back, array):
                    raise DataPreparationError(f"case '{case}': {rel} does not read back identically")
            training.append({"case": case, "fold": int(folds[case]), **paths})
        datalist = {**meta, "training": training}
        with open(tmp / DATALIST_NAME, "w") as f:
            json.dump(datalist, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

        if replace:
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
