"""Prepare a matting dataset: read (or synthesise), validate, assign folds, write atomically, summarise.

``--dataset folder`` / ``--dataset manifest`` import the user's own multi-rater data
(:mod:`scripts.data.import_dataset`); the other datasets are the Medical Matting pickles and the phantom.

This is the implementation of ``python -m scripts.prepare_data``; see ``docs/data.md``.

Example:
    >>> from scripts.data.prepare import prepare_dataset
    >>> out = prepare_dataset("phantom", "/tmp/phantom", num_cases=8, seed=0, preset="lidc")  # doctest: +SKIP
    >>> out = prepare_dataset("brain-growth", "/tmp/bg",  # doctest: +SKIP
    ...                       source="../shared/data/brain-growth/brain_growth_alpha.zip",
    ...                       trimaps="../shared/data/brain-growth/trimap_brain.zip")
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path

from scripts.digest import sha256_file
from scripts.data.errors import DataPreparationError, DatasetValidationError
from scripts.data.case_import import SIZE_RULES, ImportOptions
from scripts.data.folds import assign_folds, lidc_patient
from scripts.data.image_files import DEFAULT_MASK_THRESHOLD
from scripts.data.import_dataset import IMPORT_KINDS, import_dataset
from scripts.data.phantom import PHANTOM_PRESETS, get_preset, iter_phantom_cases, phantom_case_names
from scripts.data.sources import fetch_source, is_url, read_pickle_source, read_trimap_source
from scripts.data.specs import DATASET_SPECS, DatasetSpec, get_spec
from scripts.data.summary import summarize_dataset
from scripts.data.trimaps import trimap_from_annotations
from scripts.data.validation import validate_case, validate_case_name
from scripts.data.writer import remove_stale_dataset_temporaries, storage_error, temporary_prefix, write_dataset

__all__ = ["DEFAULT_PHANTOM_CASES", "MIN_FOLDS", "load_cases", "iter_cases", "prepare_dataset", "main"]

logger = logging.getLogger(__name__)

#: number of phantom cases when ``num_cases`` is not given
DEFAULT_PHANTOM_CASES = 40
#: cross-validation needs a training and a test fold
MIN_FOLDS = 2


def _pinned_hash(given: str | None, source: str | PathLike, default) -> str | None:
    """The sha256 to check: the given one, else the pinned one when ``source`` is the published address."""
    if given:
        return given
    if default is not None and str(source) == default.url:
        return default.sha256
    return None


def iter_cases(spec: DatasetSpec, source: str | PathLike | None, trimaps: str | PathLike | None,
               download_dir: str | PathLike, num_cases: int | None = None, source_sha256: str | None = None,
               trimaps_sha256: str | None = None, provenance: dict | None = None
               ) -> tuple[list[str], Iterator[tuple[str, dict]]]:
    """Fetch and read a real (pickled) dataset; return its case names and a generator of validated cases.

    The source files are read (and the case names checked) here; each case is validated (and its trimap
    derived when needed) only when the generator reaches it, so the writer can write it and drop it.

    Args:
        spec: the dataset's layout.
        source: path or URL of the pickle (``.pkl`` or ``.zip``); None uses ``spec.source``.
        trimaps: path or URL of the trimap PNGs (``.zip`` or folder); None uses ``spec.trimaps`` or, when the
            dataset has no published trimaps, derives them (:func:`scripts.data.trimaps.trimap_from_annotations`).
        download_dir: where URL sources are downloaded.
        num_cases: keep only the first ``num_cases`` cases in sorted order (None: all).
        source_sha256: sha256 of the source (required for a URL that is not the published one).
        trimaps_sha256: sha256 of the trimaps.
        provenance: when given, receives ``source_sha256`` (and ``trimaps_sha256``) of the files read.

    Returns:
        ``(names, cases)``: the sorted case names and a generator of ``(case, validated arrays)`` in that order.
    """
    provenance = {} if provenance is None else provenance
    if source is None:
        if spec.source is None:
            raise DataPreparationError(f"--source is required for {spec.name} (no public address is known)")
        source = spec.source.url
    if trimaps is None and spec.trimaps is not None:
        trimaps = spec.trimaps.url
    src_path = fetch_source(source, download_dir, _pinned_hash(source_sha256, source, spec.source))
    provenance["source_sha256"] = sha256_file(src_path)
    records = read_pickle_source(src_path)
    for case in records:
        validate_case_name(case)
    names = sorted(records)
    if num_cases is not None:
        if num_cases < 1:
            raise ValueError(f"num_cases must be >= 1, got {num_cases}")
        names = names[:num_cases]
    trimap_arrays = None
    if trimaps is not None:
        trimap_path = fetch_source(trimaps, download_dir, _pinned_hash(trimaps_sha256, trimaps, spec.trimaps))
        if trimap_path.is_file():
            provenance["trimaps_sha256"] = sha256_file(trimap_path)
        trimap_arrays = read_trimap_source(trimap_path)
        unused = sorted(set(trimap_arrays) - set(records))
        if unused:
            logger.warning("%d trimap(s) without a case are ignored: %s", len(unused), unused[:5])
    elif spec.trimaps_required:
        raise DataPreparationError(f"--trimaps is required for {spec.name}")

    if trimap_arrays is not None:
        for case in names:
            if case not in trimap_arrays:
                raise DatasetValidationError(f"case '{case}': no trimap PNG named '{case}.png' in {trimaps}")

    def cases() -> Iterator[tuple[str, dict]]:
        for case in names:
            trimap = trimap_arrays[case] if trimap_arrays is not None else None
            arrays = validate_case(case, records[case], spec, trimap=trimap)
            if arrays["trimap"] is None:
                arrays["trimap"] = trimap_from_annotations(arrays["alpha"], arrays["masks"], dilation=1)
            yield case, arrays

    return names, cases()


def load_cases(spec: DatasetSpec, source: str | PathLike | None, trimaps: str | PathLike | None,
               download_dir: str | PathLike, num_cases: int | None = None, source_sha256: str | None = None,
               trimaps_sha256: str | None = None, provenance: dict | None = None) -> dict[str, dict]:
    """:func:`iter_cases` gathered into ``{case: validated arrays}`` (sorted by case; holds every case in memory)."""
    _, cases = iter_cases(spec, source, trimaps, download_dir, num_cases, source_sha256, trimaps_sha256, provenance)
    return dict(cases)


def prepare_dataset(dataset: str, out: str | PathLike, source: str | PathLike | None = None,
                    trimaps: str | PathLike | None = None, folds: int = 4, seed: int = 0,
                    num_cases: int | None = None, preset: str = "brain-growth", overwrite: bool = False,
                    source_sha256: str | None = None, trimaps_sha256: str | None = None) -> Path:
    """Prepare ``dataset`` into ``out`` and return ``out`` (absolute).

    Args:
        dataset: ``brain-growth``, ``lidc``, ``isic`` or ``phantom``.
        out: the dataset folder to create (see ``docs/architecture.md`` for its layout).
        source: pickle path or URL (real datasets; brain-growth defaults to the published zip).
        trimaps: trimap zip / folder path or URL (brain-growth defaults to the published zip; optional for
            lidc / isic, derived from the annotations when absent).
        folds: number of cross-validation folds.
        seed: seed of the fold assignment and of the phantom synthesis.
        num_cases: phantom: number of cases (default :data:`DEFAULT_PHANTOM_CASES`); real data: keep the
            first ``num_cases`` cases (sorted by name).
        preset: phantom preset (``brain-growth``, ``lidc``, ``isic``).
        overwrite: replace an existing prepared dataset at ``out`` (only once the new one is complete).
        source_sha256: pinned sha256 of ``source`` (required for URLs other than the published ones).
        trimaps_sha256: pinned sha256 of ``trimaps``.

    Raises:
        DataPreparationError: (a ``ValueError``) on any bad input; nothing is left at ``out`` then.
    """
    spec = get_spec(dataset)
    out = Path(out).expanduser().absolute()
    if int(folds) < MIN_FOLDS:
        raise DataPreparationError(f"--folds {folds}: cross-validation needs at least {MIN_FOLDS} folds "
                                   "(a training and a test fold)")
    meta: dict = {"name": spec.name, "num_folds": int(folds), "seed": int(seed)}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        error = storage_error(e, out.parent, f"the dataset {out.name}")
        if error is None:
            raise
        raise error from e
    remove_stale_dataset_temporaries(out)
    if spec.name == "phantom":
        if source is not None or trimaps is not None:
            raise DataPreparationError("--source / --trimaps are not used with --dataset phantom")
        p = get_preset(preset)
        spec = DatasetSpec("phantom", p.spatial_shape, p.channels, p.raters, trimaps_required=True)
        count = DEFAULT_PHANTOM_CASES if num_cases is None else num_cases
        names = phantom_case_names(count)
        cases = ((c, validate_case(c, r, spec, trimap=r["trimap"])) for c, r in iter_phantom_cases(count, seed, p))
        meta["preset"] = p.name
    else:
        try:
            download_dir = tempfile.mkdtemp(prefix=temporary_prefix(out, "download"), dir=out.parent)
        except OSError as e:
            error = storage_error(e, out.parent, "the download")
            if error is None:
                raise
            raise error from e
        try:
            provenance: dict = {}
            names, cases = iter_cases(spec, source, trimaps, download_dir, num_cases, source_sha256, trimaps_sha256,
                                      provenance)
        finally:
            shutil.rmtree(download_dir, ignore_errors=True)  # the sources are in memory now
        meta["source"] = str(source if source is not None else spec.source.url)
        if trimaps is not None or spec.trimaps is not None:
            meta["trimaps"] = str(trimaps if trimaps is not None else spec.trimaps.url)
        else:
            meta["trimaps"] = "derived: unknown where raters disagree or 0 < alpha < 255, dilated by 1 pixel"
        meta.update(provenance)
    if not names:
        raise DataPreparationError(f"{spec.name}: no cases")
    group_of = lidc_patient if spec.group_folds_by_patient else None
    try:
        fold_of = assign_folds(names, folds, seed, group_of=group_of)
    except DatasetValidationError:
        raise
    except ValueError as e:
        raise DataPreparationError(f"{spec.name}: {e}") from e
    meta.update({"raters": spec.raters, "spatial_shape": list(spec.spatial_shape), "channels": spec.channels})
    return write_dataset(cases, fold_of, out, meta, overwrite=overwrite)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scripts.prepare_data",
        description="Convert a matting dataset (or synthesise phantoms) into per-case PNGs plus datalist.json. "
        "Options are spelt with underscores (--num_cases); the dashed spellings (--num-cases) are accepted too.",
    )
    p.add_argument("--dataset", required=True, choices=sorted([*DATASET_SPECS, *IMPORT_KINDS]),
                   help="a Medical Matting pickle dataset, the phantom, or your own data: 'folder' (one sub-folder "
                        "per case, the QUBIQ layout) or 'manifest' (a CSV file)")
    p.add_argument("--source", help="pickle (.pkl or .zip holding it): path or URL (brain-growth: published zip); "
                                    "folder: the folder of case folders; manifest: the CSV file")
    p.add_argument("--trimaps", help="trimap PNGs (.zip or folder): path or URL (brain-growth: published zip; "
                                     "lidc/isic: derived when absent)")
    p.add_argument("--source_sha256", "--source-sha256", help="pinned sha256 of --source (required for a URL)")
    p.add_argument("--trimaps_sha256", "--trimaps-sha256", help="pinned sha256 of --trimaps (required for a URL)")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--folds", type=int, help="number of cross-validation folds (default 4; a manifest's fold "
                                               "column sets its own)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and the phantoms (default 0)")
    p.add_argument("--num_cases", "--num-cases", type=int,
                   help=f"phantom: cases to synthesise (default {DEFAULT_PHANTOM_CASES}); real data: keep the first N cases")
    p.add_argument("--preset", default="brain-growth", choices=sorted(PHANTOM_PRESETS),
                   help="phantom preset (default brain-growth)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset at --out")
    own = p.add_argument_group("your own data (--dataset folder / manifest; docs/data.md)")
    own.add_argument("--name", help="dataset name in datalist.json (default: the source's name)")
    own.add_argument("--image_pattern", "--image-pattern", help="folder: image file name pattern (default 'image.*'; "
                                                                "several matches are channels)")
    own.add_argument("--mask_pattern", "--mask-pattern", help="folder: raters' mask pattern (default 'task01_seg*')")
    own.add_argument("--alpha_pattern", "--alpha-pattern", help="folder: alpha matte pattern (default: none, the "
                                                                "raters' mean)")
    own.add_argument("--trimap_pattern", "--trimap-pattern", help="folder: trimap pattern (default: none, derived "
                                                                  "from the raters' disagreement)")
    own.add_argument("--slice_axis", "--slice-axis", type=int, default=2, help="axis 3-D volumes are cut along "
                                                                               "(default 2)")
    own.add_argument("--slice_margin", "--slice-margin", type=int, default=0,
                     help="slices kept on each side of the slices with foreground (default 0)")
    own.add_argument("--mask_threshold", "--mask-threshold", type=float,
                     help=f"foreground where mask >= this value (default: {DEFAULT_MASK_THRESHOLD} for JPEG masks; "
                          "lossless masks must hold 0 and one other value)")
    own.add_argument("--spatial_size", "--spatial-size", type=int, nargs=2, metavar=("H", "W"),
                     help="bring every case to H x W (default: every case must have one size)")
    own.add_argument("--size_rule", "--size-rule", choices=SIZE_RULES, default="resize",
                     help="how --spatial_size is reached (default resize)")
    own.add_argument("--trimap_dilation", "--trimap-dilation", type=int, default=1,
                     help="pixels by which the derived unknown region is grown (default 1)")
    own.add_argument("--test_cases", "--test-cases", help="text file of test cases, one per line: a fixed split")
    own.add_argument("--skip_bad_cases", "--skip-bad-cases", action="store_true",
                     help="leave out (and list) cases that fail a check instead of stopping")
    return p


def _import(args: argparse.Namespace) -> Path:
    """``--dataset folder`` / ``manifest``: the options checked, then :func:`import_dataset`."""
    if args.source is None:
        raise DataPreparationError(f"--source is required for --dataset {args.dataset} (the "
                                   f"{'folder of case folders' if args.dataset == 'folder' else 'CSV manifest'})")
    if args.trimaps is not None or args.num_cases is not None:
        raise DataPreparationError(f"--trimaps / --num_cases are not used with --dataset {args.dataset}")
    if args.folds is not None and args.folds < MIN_FOLDS:
        raise DataPreparationError(f"--folds {args.folds}: cross-validation needs at least {MIN_FOLDS} folds")
    options = ImportOptions(slice_axis=args.slice_axis, slice_margin=args.slice_margin,
                            mask_threshold=args.mask_threshold,
                            spatial_size=tuple(args.spatial_size) if args.spatial_size else None,
                            size_rule=args.size_rule, trimap_dilation=args.trimap_dilation)
    return import_dataset(args.dataset, args.source, args.out, folds=args.folds, seed=args.seed, options=options,
                          image_pattern=args.image_pattern, mask_pattern=args.mask_pattern,
                          alpha_pattern=args.alpha_pattern, trimap_pattern=args.trimap_pattern,
                          test_cases=args.test_cases, skip_bad_cases=args.skip_bad_cases,
                          overwrite=args.overwrite, name=args.name)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 done, 2 bad input or unwritable output: one line)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name, value in (("--source", args.source), ("--trimaps", args.trimaps)):
        if value is not None and is_url(value):
            print(f"{name}: downloading {value}", file=sys.stderr)
    try:
        if args.dataset in IMPORT_KINDS:
            out = _import(args)
            print(summarize_dataset(out))
            return 0
        out = prepare_dataset(args.dataset, args.out, source=args.source, trimaps=args.trimaps,
                              folds=4 if args.folds is None else args.folds,
                              seed=args.seed, num_cases=args.num_cases, preset=args.preset,
                              overwrite=args.overwrite, source_sha256=args.source_sha256,
                              trimaps_sha256=args.trimaps_sha256)
    except (ValueError, OSError) as e:  # DataPreparationError and friends, file system: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summarize_dataset(out))
    return 0
