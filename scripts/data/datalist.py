"""Read a prepared dataset's ``datalist.json`` and split it into cross-validation folds.

Example:
    >>> dl = load_datalist("data/phantom")  # doctest: +SKIP
    >>> train, test = split_folds(dl, test_fold=0)  # doctest: +SKIP
    >>> test[0]["image"]  # absolute path  # doctest: +SKIP
    '/.../data/phantom/images/case003.png'
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

from scripts.data.errors import DatasetValidationError

__all__ = ["load_datalist", "split_folds"]

_REQUIRED_TOP = ("name", "num_folds", "raters", "spatial_shape", "channels", "training")
_PATH_KEYS = ("alpha", "trimap")


def load_datalist(dataset_dir: str | PathLike, check_files: bool = True) -> dict:
    """Load ``dataset_dir/datalist.json`` with every path made absolute.

    Args:
        dataset_dir: a folder written by ``python -m scripts.prepare_data``.
        check_files: raise when a listed file is missing.

    Returns:
        the datalist dict (``name``, ``num_folds``, ``seed``, ``raters``, ``spatial_shape``, ``channels``,
        ``training``, ...); ``training`` items hold absolute ``str`` paths for ``image`` (a list of one
        grey PNG per channel for images of neither 1 nor 3 channels), ``alpha``, ``trimap`` and each of
        ``masks``, plus ``case`` and ``fold``.

    Raises:
        DatasetValidationError: missing or malformed datalist, a fold out of range, a missing file, a path
            that is absolute or leaves ``dataset_dir`` (``..``, a symbolic link out of it).
    """
    root = Path(dataset_dir).expanduser().absolute()
    path = root / "datalist.json"
    if not path.is_file():
        raise DatasetValidationError(f"{path}: not found (prepare the data with python -m scripts.prepare_data)")
    try:
        with open(path) as f:
            datalist = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetValidationError(f"{path}: cannot read ({e})") from e
    if not isinstance(datalist, dict) or any(k not in datalist for k in _REQUIRED_TOP):
        raise DatasetValidationError(f"{path}: expected a dict with keys {list(_REQUIRED_TOP)}")
    num_folds = datalist["num_folds"]
    if not isinstance(num_folds, int) or isinstance(num_folds, bool) or num_folds < 1:
        raise DatasetValidationError(f"{path}: num_folds must be a positive integer, got {num_folds!r}")
    if not isinstance(datalist["training"], list):
        raise DatasetValidationError(f"{path}: training must be a list of cases")
    items = []
    for i, item in enumerate(datalist["training"]):
        if not isinstance(item, dict) or any(k not in item for k in ("image", *_PATH_KEYS, "masks", "fold", "case")):
            raise DatasetValidationError(f"{path}: training item {i} lacks image/alpha/masks/trimap/fold/case")
        if not isinstance(item["fold"], int) or not 0 <= item["fold"] < num_folds:
            raise DatasetValidationError(f"{path}: case '{item['case']}' has fold {item['fold']!r}, "
                                         f"expected 0 .. {num_folds - 1}")
        new = dict(item)
        if not isinstance(item["masks"], list) or not item["masks"]:
            raise DatasetValidationError(f"{path}: case '{item['case']}': masks must be a non-empty list of paths")
        for key in _PATH_KEYS:
            new[key] = _inside(root, path, item, key, item[key])
        new["masks"] = [_inside(root, path, item, "masks", m) for m in item["masks"]]
        if isinstance(item["image"], list):  # one grey PNG per channel
            if not item["image"]:
                raise DatasetValidationError(f"{path}: case '{item['case']}': image must be a path or a non-empty list")
            new["image"] = [_inside(root, path, item, "image", p) for p in item["image"]]
        else:
            new["image"] = _inside(root, path, item, "image", item["image"])
        images = new["image"] if isinstance(new["image"], list) else [new["image"]]
        if check_files:
            for p in (*images, *(new[k] for k in _PATH_KEYS), *new["masks"]):
                if not Path(p).is_file():
                    raise DatasetValidationError(f"{path}: case '{item['case']}': file {p} is missing")
        items.append(new)
    return {**datalist, "training": items}


def _inside(root: Path, datalist_path: Path, item: dict, key: str, rel: object) -> str:
    """``root / rel`` as an absolute ``str``; an error naming the entry when ``rel`` is not a relative path that
    stays inside ``root`` (absolute, ``..`` that leaves it, or a symbolic link that points out of it)."""
    where = f"{datalist_path}: case '{item.get('case')}': {key} {rel!r}"
    if not isinstance(rel, str) or not rel:
        raise DatasetValidationError(f"{where}: expected a path relative to the dataset folder")
    if Path(rel).is_absolute():
        raise DatasetValidationError(f"{where}: absolute paths are refused; paths are relative to {root}")
    full = root / rel
    real_root = root.resolve()
    if not full.resolve().is_relative_to(real_root):
        raise DatasetValidationError(f"{where}: leaves the dataset folder {root} (through '..' or a symbolic link)")
    return str(full)


def split_folds(datalist: dict, test_fold: int) -> tuple[list[dict], list[dict]]:
    """Split ``datalist["training"]`` into (train items, test items) for one cross-validation round.

    Args:
        datalist: as returned by :func:`load_datalist`.
        test_fold: the held-out fold, ``0 .. num_folds-1``.

    Returns:
        ``(items of every other fold, items of test_fold)``, each in datalist order.
    """
    num_folds = datalist["num_folds"]
    if not 0 <= test_fold < num_folds:
        raise ValueError(f"test_fold must be in 0 .. {num_folds - 1}, got {test_fold}")
    train = [item for item in datalist["training"] if item["fold"] != test_fold]
    test = [item for item in datalist["training"] if item["fold"] == test_fold]
    return train, test
