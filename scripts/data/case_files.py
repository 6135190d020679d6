"""Find the files of each case: one folder per case (the QUBIQ layout) or a CSV manifest.

Folder layout (``--dataset folder``): every sub-folder of ``--source`` is a case named after it.
Inside, files are matched by glob patterns (:mod:`fnmatch`, case-sensitive, hidden files ignored):

======================  =====================  ===================================================
option                  default                 matches
======================  =====================  ===================================================
``--image_pattern``     ``image.*``             the image; several files are the channels (sorted)
``--mask_pattern``      ``task01_seg*``         the raters' masks (sorted by name: rater 0, 1, ...)
``--alpha_pattern``     none                    an alpha matte (optional)
``--trimap_pattern``    none                    a trimap, 128 = unknown (optional)
======================  =====================  ===================================================

The defaults read the QUBIQ layout as distributed (``case01/image.nii.gz``,
``case01/task01_seg01.nii.gz`` ...); ``--mask_pattern 'task02_seg*'`` picks a task's second
structure. A DICOM series is a sub-folder matched by a pattern (``--image_pattern dicom``).

Manifest (``--dataset manifest``): a CSV file with a header; paths relative to the CSV's folder.

=================  ==========================================================================
column             content
=================  ==========================================================================
``image``          the image file; several files (channels) separated by ``;``
``mask*``          one column per rater (``mask1``, ``mask2``, ... in header order), or one
                   ``masks`` column of ``;``-separated files
``alpha``          optional alpha matte
``trimap``         optional trimap
``case``           optional case name (default: the image file's name without its extension)
``group``          optional patient / group id (``patient`` is read as well): folds keep a group
``fold``           optional fixed fold 0 .. K-1, kept as given
``split``          optional fixed split ``train`` / ``test``, kept as given
=================  ==========================================================================

Empty cells of the optional columns mean "not given" for that row.

Example:
    >>> cases = folder_cases("qubiq/brain-growth/Training")  # doctest: +SKIP
    >>> cases[0].case, len(cases[0].masks)  # doctest: +SKIP
    ('case01', 7)
"""

from __future__ import annotations

import csv
import fnmatch
import re
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from scripts.data.errors import DatasetSourceError, DatasetValidationError
from scripts.image_formats import IMPORTER_IMAGE_SUFFIXES, longest_first

__all__ = ["CaseFiles", "DEFAULT_IMAGE_PATTERN", "DEFAULT_MASK_PATTERN", "SPLITS", "folder_cases",
           "manifest_cases", "read_test_cases"]

#: default patterns: the QUBIQ layout
DEFAULT_IMAGE_PATTERN = "image.*"
DEFAULT_MASK_PATTERN = "task01_seg*"
#: values of the manifest's ``split`` column
SPLITS = ("train", "test")
_MAX_MANIFEST_BYTES = 64 * 2**20


@dataclass
class CaseFiles:
    """The files of one case, before reading.

    Args:
        case: the case name (a file-name stem).
        images: the image file(s); several are the channels in this order.
        masks: one file per rater.
        alpha: optional alpha matte file.
        trimap: optional trimap file.
        group: optional patient / group id.
        fold: optional fixed fold.
        split: optional fixed split (``train`` / ``test``).
        where: what to name in errors about the case (its folder or manifest row).
    """

    case: str
    images: list[Path]
    masks: list[Path]
    alpha: Path | None = None
    trimap: Path | None = None
    group: str | None = None
    fold: int | None = None
    split: str | None = None
    where: str = field(default="")


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _match(folder: Path, pattern: str) -> list[Path]:
    entries = [p for p in folder.iterdir() if not p.name.startswith(".") and fnmatch.fnmatchcase(p.name, pattern)]
    return sorted(entries, key=_natural_key)


def folder_cases(source: str | PathLike, image_pattern: str = DEFAULT_IMAGE_PATTERN,
                 mask_pattern: str = DEFAULT_MASK_PATTERN, alpha_pattern: str | None = None,
                 trimap_pattern: str | None = None) -> list[CaseFiles]:
    """The cases of a folder-per-case dataset, sorted by name (see the module docstring).

    A case folder that lacks an image or masks is still returned (with empty lists): the import
    reports it with the other bad cases (or skips it with ``--skip_bad_cases``).

    Raises:
        DatasetSourceError: ``source`` is not a folder or holds no case folder.
    """
    root = Path(source).expanduser()
    if not root.is_dir():
        raise DatasetSourceError(f"{root}: not a folder (--dataset folder reads one sub-folder per case)")
    cases = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural_key):
        images = _match(folder, image_pattern)
        masks = [m for m in _match(folder, mask_pattern) if m not in images]
        alpha = _match(folder, alpha_pattern) if alpha_pattern else []
        trimap = _match(folder, trimap_pattern) if trimap_pattern else []
        for what, found in (("alpha", alpha), ("trimap", trimap)):
            if len(found) > 1:
                raise DatasetSourceError(f"{folder}: {len(found)} files match the {what} pattern "
                                         f"({', '.join(p.name for p in found[:3])}); expected one")
        cases.append(CaseFiles(folder.name, images, masks, alpha[0] if alpha else None,
                               trimap[0] if trimap else None, where=str(folder)))
    if not cases:
        raise DatasetSourceError(f"{root}: no case folder found (expected one sub-folder per case)")
    return cases


def _paths(base: Path, cell: str) -> list[Path]:
    return [(base / part.strip()) for part in cell.split(";") if part.strip()]


def _stem(path: Path) -> str:
    name = path.name
    for suffix in longest_first(IMPORTER_IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def manifest_cases(manifest: str | PathLike) -> list[CaseFiles]:
    """The cases listed in a CSV manifest, in file order (see the module docstring).

    Raises:
        DatasetSourceError: a missing / unreadable / oversized file, no header, no ``image`` or mask column,
            two rows with one case name, a bad ``fold`` or ``split`` value (naming the row).
    """
    path = Path(manifest).expanduser()
    if not path.is_file():
        raise DatasetSourceError(f"{path}: manifest not found")
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise DatasetSourceError(f"{path}: manifest larger than {_MAX_MANIFEST_BYTES // 2**20} MiB")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = list(rows[0].keys()) if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetSourceError(f"{path}: cannot read the CSV manifest ({type(e).__name__}: {e})") from e
    if not rows:
        raise DatasetSourceError(f"{path}: the manifest has no rows (a header line and one row per case)")
    header = [h.strip() if isinstance(h, str) else h for h in header]
    if None in header:
        raise DatasetSourceError(f"{path}: a row has more cells than the header")
    if "image" not in header:
        raise DatasetSourceError(f"{path}: no 'image' column (columns: {header})")
    mask_columns = [h for h in header if h == "masks" or re.fullmatch(r"mask[_ ]?\d*", h)]
    if not mask_columns:
        raise DatasetSourceError(f"{path}: no mask column ('mask1', 'mask2', ... or 'masks'; columns: {header})")
    group_column = "group" if "group" in header else ("patient" if "patient" in header else None)
    base = path.parent
    cases, seen = [], {}
    for line, raw in enumerate(rows, start=2):
        row = {(k.strip() if isinstance(k, str) else k): (v or "").strip() for k, v in raw.items()}
        where = f"{path}: row {line}"
        images = _paths(base, row["image"])
        masks = [p for c in mask_columns for p in _paths(base, row[c])]
        case = row.get("case") or (_stem(images[0]) if images else "")
        if not case:
            raise DatasetSourceError(f"{where}: no image and no case name")
        if case in seen:
            raise DatasetSourceError(f"{where}: case '{case}' already on row {seen[case]} (case names must be unique)")
        seen[case] = line
        fold = row.get("fold") or None
        if fold is not None:
            if not fold.isdigit():
                raise DatasetSourceError(f"{where}: fold {fold!r} is not a whole number >= 0")
            fold = int(fold)
        split = (row.get("split") or "").lower() or None
        if split is not None and split not in SPLITS:
            raise DatasetSourceError(f"{where}: split {row.get('split')!r} must be one of {list(SPLITS)}")
        alpha = _paths(base, row.get("alpha", ""))
        trimap = _paths(base, row.get("trimap", ""))
        cases.append(CaseFiles(case, images, masks, alpha[0] if alpha else None, trimap[0] if trimap else None,
                               group=(row.get(group_column) or None) if group_column else None, fold=fold,
                               split=split, where=f"{where} (case '{case}')"))
    return cases


def read_test_cases(path: str | PathLike) -> list[str]:
    """Case names listed one per line in ``path`` (blank lines and ``#`` comments ignored)."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetSourceError(f"{path}: cannot read the test-case list ({type(e).__name__}: {e})") from e
    names = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise DatasetValidationError(f"{path}: the test-case list is empty")
    return names
