"""Which cases train, validate and test in one cross-validation round (the honest protocol).

The test fold (``fold``) is used only by evaluation. A dataset with a fixed split (``datalist.json``
``test_folds``, written by ``scripts.prepare_data`` for a manifest ``split`` column or
``--test_cases``) may be tested on those folds only: testing on its training fold would swap the
user's split. Validation during training never touches it:
with ``val_fold=None`` the validator watches the training cases themselves (a fit monitor, never
used to pick a model); with ``val_fold=k`` (k != fold) fold k is held out of training and
validates. The reported model is the one at the end of training in every case.
"""

from __future__ import annotations

import os

from scripts.data.datalist import load_datalist, split_folds

__all__ = ["fold_split", "load_fold_split", "require_cases"]


def fold_split(datalist: dict, fold: int, val_fold: int | None = None) -> dict[str, list[dict]]:
    """Split a loaded datalist into ``{"train", "val", "test"}`` item lists.

    Args:
        datalist: as returned by :func:`scripts.data.datalist.load_datalist`.
        fold: the held-out test fold; ``None`` trains on every case (the release model; ``test``
            is then empty).
        val_fold: a fold held out of training for validation, ``None`` to validate on the training
            cases (must differ from ``fold``).

    Example::

        split = fold_split(load_datalist("data/phantom"), fold=0)
        len(split["train"]), len(split["test"])
    """
    num_folds = int(datalist["num_folds"])
    if fold is None or str(fold).strip().lower() in ("", "none", "null"):
        if val_fold is not None and str(val_fold).strip().lower() not in ("", "none", "null"):
            raise ValueError("val_fold needs a test fold: with fold=null every case trains")
        cases = list(datalist["training"])
        if not cases:
            raise ValueError("the datalist has no cases")
        return {"train": cases, "val": list(cases), "test": []}
    fold = int(fold)
    test_folds = datalist.get("test_folds")
    if test_folds is not None and fold not in test_folds:
        raise ValueError(f"fold {fold}: the dataset has a fixed split whose test cases are fold(s) {test_folds} "
                         f"(datalist.json test_folds); use --fold {test_folds[0]}")
    train, test = split_folds(datalist, fold)
    if val_fold is None or val_fold == "" or str(val_fold).lower() == "none":
        val = list(train)
    else:
        val_fold = int(val_fold)
        if val_fold == fold:
            raise ValueError(f"val_fold must differ from the test fold {fold}: validation never uses the test fold.")
        if not 0 <= val_fold < num_folds:
            raise ValueError(f"val_fold must be in 0 .. {num_folds - 1}, got {val_fold}.")
        val = [item for item in train if item["fold"] == val_fold]
        train = [item for item in train if item["fold"] != val_fold]
    if not train:
        raise ValueError(f"fold {fold}: no training cases left (num_folds={num_folds}, val_fold={val_fold}).")
    if not test:
        raise ValueError(f"fold {fold}: the test fold has no cases.")
    return {"train": train, "val": val, "test": test}


def load_fold_split(dataset_dir: str | os.PathLike, fold: int, val_fold: int | None = None) -> dict:
    """:func:`fold_split` of ``dataset_dir/datalist.json`` plus the datalist's header entries.

    Returns ``{"train", "val", "test", "name", "num_folds", "raters", "channels", "spatial_shape"}``.
    """
    datalist = load_datalist(dataset_dir)
    split = fold_split(datalist, fold, val_fold)
    header = {k: datalist[k] for k in ("name", "num_folds", "raters", "channels", "spatial_shape")}
    return {**header, **split}


def require_cases(items: list[dict], what: str) -> list[dict]:
    """``items`` when not empty; a ``ValueError`` naming ``what`` otherwise (e.g. evaluating with ``--fold null``)."""
    if not items:
        raise ValueError(f"{what}: no cases to evaluate (a model trained with --fold null has no test fold)")
    return items
