"""Import the user's own multi-rater dataset (folder per case or CSV manifest) into a prepared dataset.

Two passes over the cases, so memory does not grow with the dataset: the first reads and checks
every case (:func:`scripts.data.case_import.import_case`) and keeps only names, groups and fixed
folds; folds are then assigned (:func:`fold_assignment`); the second pass reads each case again
and hands it to the atomic writer (:func:`scripts.data.writer.write_dataset`). A bad case stops the
import with one line naming its file or folder and the problem before anything is written, or,
with ``skip_bad_cases``, is left out and listed (``datalist.json`` ``skipped``, and the summary).

Example:
    >>> import_dataset("folder", "qubiq/brain-growth/Training", "data/bg-qubiq")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path

from scripts.data.case_files import (
    DEFAULT_IMAGE_PATTERN,
    DEFAULT_MASK_PATTERN,
    CaseFiles,
    folder_cases,
    manifest_cases,
    read_test_cases,
)
from scripts.data.case_import import ImportOptions, ImportedCase, import_case
from scripts.data.errors import DataPreparationError, DatasetValidationError
from scripts.data.folds import assign_folds
from scripts.data.writer import write_dataset

__all__ = ["IMPORT_KINDS", "fold_assignment", "import_dataset"]

logger = logging.getLogger(__name__)

#: ``--dataset`` values read by this module
IMPORT_KINDS = ("folder", "manifest")


def fold_assignment(cases: Sequence[ImportedCase], num_folds: int | None, seed: int,
                    test_cases: Sequence[str] | None = None) -> tuple[dict[str, int], int, str]:
    """``({case: fold}, number of folds, rule)`` for the imported cases.

    Rules, first that applies:

    - a ``fold`` for every case (manifest column): kept as given; the folds must be 0 .. K-1, none empty;
    - a fixed split (manifest ``split`` column, or ``test_cases`` naming source cases): 2 folds, the test
      cases are fold 0 and every other case fold 1 (train with ``--fold 0`` to test on the given cases);
    - otherwise ``num_folds`` (default 4) seeded folds (:func:`scripts.data.folds.assign_folds`), grouped by
      the group id (the manifest's ``group``, or the volume of a slice) when any case has one.

    Raises:
        DatasetValidationError: folds given for some cases only, a gap in the given folds, a split given for
            some cases only, a test case that is not in the dataset, or no training / test case left.
    """
    names = [c.name for c in cases]
    given = [c.fold for c in cases if c.fold is not None]
    if given:
        if len(given) != len(cases):
            missing = [c.name for c in cases if c.fold is None][:3]
            raise DatasetValidationError(f"the fold column is empty for case(s) {missing}: give every case a fold")
        count = max(given) + 1
        empty = sorted(set(range(count)) - set(given))
        if empty:
            raise DatasetValidationError(f"the fold column has no case in fold(s) {empty}: folds must be 0 .. K-1")
        if num_folds is not None and num_folds != count:
            raise DatasetValidationError(f"--folds {num_folds} disagrees with the fold column ({count} folds)")
        return {c.name: int(c.fold) for c in cases}, count, "given (manifest fold column)"
    splits = [c.split for c in cases if c.split is not None]
    if splits or test_cases is not None:
        if test_cases is not None:
            sources = {c.source_case for c in cases}
            unknown = sorted(set(test_cases) - sources)
            if unknown:
                raise DatasetValidationError(f"--test_cases names case(s) not in the dataset: {unknown[:5]}")
            test = {c.name for c in cases if c.source_case in set(test_cases)}
        else:
            if len(splits) != len(cases):
                missing = [c.name for c in cases if c.split is None][:3]
                raise DatasetValidationError(f"the split column is empty for case(s) {missing}: "
                                             "give every case train or test")
            test = {c.name for c in cases if c.split == "test"}
        if not test or len(test) == len(cases):
            raise DatasetValidationError("a fixed split needs at least one training and one test case")
        return {n: 0 if n in test else 1 for n in names}, 2, "fixed split: fold 0 = test cases, fold 1 = training"
    num_folds = 4 if num_folds is None else num_folds
    groups = {c.name: c.group for c in cases}
    grouped = any(g is not None for g in groups.values())
    group_of = (lambda name: groups[name] if groups[name] is not None else f"\0{name}") if grouped else None
    try:
        folds = assign_folds(names, num_folds, seed, group_of=group_of)
    except ValueError as e:
        raise DatasetValidationError(str(e)) from e
    return folds, num_folds, f"seeded ({'grouped by patient / volume' if grouped else 'per case'})"


def _cases(files: Sequence[CaseFiles], options: ImportOptions, skip: bool,
           skipped: list[dict]) -> Iterator[tuple[CaseFiles, ImportedCase]]:
    for f in files:
        try:
            parts = import_case(f, options)
        except DataPreparationError as e:
            if not skip:
                raise
            skipped.append({"case": f.case, "error": str(e)})
            logger.warning("skipped: %s", e)
            continue
        for part in parts:
            yield f, part


def import_dataset(kind: str, source: str | PathLike, out: str | PathLike, folds: int | None = None,
                   seed: int = 0, options: ImportOptions = ImportOptions(), image_pattern: str | None = None,
                   mask_pattern: str | None = None, alpha_pattern: str | None = None,
                   trimap_pattern: str | None = None, test_cases: str | PathLike | None = None,
                   skip_bad_cases: bool = False, overwrite: bool = False, name: str | None = None) -> Path:
    """Import ``source`` (a folder of case folders, or a CSV manifest) into the prepared dataset ``out``.

    Args:
        kind: ``folder`` or ``manifest``.
        source: the folder holding one sub-folder per case, or the manifest CSV.
        out: the dataset folder to create.
        folds: number of seeded folds (default 4; must agree with a manifest fold column when given).
        seed: seed of the folds.
        options: reading options (slices, sizes, thresholds, trimap dilation).
        image_pattern, mask_pattern, alpha_pattern, trimap_pattern: folder layout name patterns (None: the
            QUBIQ defaults, no alpha, no trimap).
        test_cases: a text file listing the test cases (one source case per line): a fixed split.
        skip_bad_cases: leave out (and list) cases that fail a check instead of stopping.
        overwrite: replace an existing prepared dataset at ``out``.
        name: the dataset name in ``datalist.json`` (default: the source's name).

    Raises:
        DataPreparationError: (a ``ValueError``) one line naming the file or case and the problem; nothing is
            written at ``out`` then.
    """
    if kind not in IMPORT_KINDS:
        raise DataPreparationError(f"unknown import kind {kind!r}; expected one of {list(IMPORT_KINDS)}")
    source = Path(source).expanduser()
    if kind == "folder":
        files = folder_cases(source, image_pattern or DEFAULT_IMAGE_PATTERN, mask_pattern or DEFAULT_MASK_PATTERN,
                             alpha_pattern, trimap_pattern)
    else:
        if any(p is not None for p in (image_pattern, mask_pattern, alpha_pattern, trimap_pattern)):
            raise DataPreparationError("--image_pattern / --mask_pattern / --alpha_pattern / --trimap_pattern "
                                       "apply to --dataset folder; a manifest names its files")
        files = manifest_cases(source)
    tests = read_test_cases(test_cases) if test_cases is not None else None

    skipped: list[dict] = []
    first: list[ImportedCase] = []
    for f, case in _cases(files, options, skip_bad_cases, skipped):
        case.arrays = None  # the first pass keeps names and fold information only
        first.append(case)
    if not first:
        raise DataPreparationError(f"{source}: no case could be imported" + (f" ({len(skipped)} skipped)" if skipped
                                                                             else ""))
    _check_consistent(first, files, options)
    fold_of, num_folds, rule = fold_assignment(first, folds, seed, tests)

    def cases() -> Iterator[tuple[str, dict]]:
        for _, case in _cases([f for f in files if f.case not in {s["case"] for s in skipped}], options, False, []):
            yield case.name, case.arrays

    reference = first[0]
    meta = {
        "name": name or source.stem, "num_folds": num_folds, "seed": int(seed), "source": str(source),
        "import": {"kind": kind, "folds": rule, "slice_axis": options.slice_axis,
                   "slice_margin": options.slice_margin, "mask_threshold": options.mask_threshold,
                   "size_rule": options.size_rule if options.spatial_size else "none (one size)",
                   "trimap_dilation": options.trimap_dilation,
                   "alpha": _origin([f.alpha for f in files], "raters' mean"),
                   "trimap": _origin([f.trimap for f in files], f"raters' disagreement, dilated by "
                                                                 f"{options.trimap_dilation} pixel(s)")},
        "raters": reference.raters, "spatial_shape": list(reference.spatial), "channels": reference.channels,
    }
    if rule.startswith("fixed split"):
        meta["test_folds"] = [0]  # training and cross-validation test on fold 0 only (scripts/workflows/splits.py)
    if skipped:
        meta["skipped"] = skipped
    extras = {c.name: {"source_case": c.source_case, "source_shape": list(c.source_shape),
                       **({"group": c.group} if c.group is not None else {})} for c in first}
    return write_dataset(cases(), fold_of, out, meta, overwrite=overwrite, item_extras=extras)


def _origin(given: list, derived: str) -> str:
    """Where a target came from: ``file``, the derivation, or both (a manifest may give it on some rows)."""
    count = sum(g is not None for g in given)
    return "file" if count == len(given) else derived if count == 0 else f"file where given, else {derived}"


def _check_consistent(cases: list[ImportedCase], files: Sequence[CaseFiles], options: ImportOptions) -> None:
    """Every case has the first case's size (unless resized), channels and rater count; names are unique."""
    seen: set[str] = set()
    ref = cases[0]
    for c in cases:
        if c.name in seen:
            raise DatasetValidationError(f"case '{c.name}': two cases with this name (a slice name repeats a case)")
        seen.add(c.name)
        for what, mine, theirs in (("rater masks", c.raters, ref.raters), ("image channels", c.channels, ref.channels)):
            if mine != theirs:
                raise DatasetValidationError(f"case '{c.name}': {mine} {what}, case '{ref.name}' has {theirs}; "
                                             "every case needs the same")
        if c.spatial != ref.spatial:
            raise DatasetValidationError(
                f"case '{c.name}': size {tuple(c.spatial)}, case '{ref.name}' has {tuple(ref.spatial)}; pass "
                "--spatial_size H W (with --size_rule resize or pad_crop) to bring every case to one size")
