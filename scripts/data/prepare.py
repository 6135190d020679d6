"""Prepare a matting dataset: read (or synthesise), validate, assign folds, write atomically, summarise.

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
from scripts.data.folds import assign_folds, lidc_patient
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
    p.add_argument("--dataset", required=True, choices=sorted(DATASET_SPECS))
    p.add_argument("--source", help="pickle (.pkl or .zip holding it): path or URL (brain-growth: published zip)")
    p.add_argument("--trimaps", help="trimap PNGs (.zip or folder): path or URL (brain-growth: published zip; "
                                     "lidc/isic: derived when absent)")
    p.add_argument("--source_sha256", "--source-sha256", help="pinned sha256 of --source (required for a URL)")
    p.add_argument("--trimaps_sha256", "--trimaps-sha256", help="pinned sha256 of --trimaps (required for a URL)")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--folds", type=int, default=4, help="number of cross-validation folds (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and the phantoms (default 0)")
    p.add_argument("--num_cases", "--num-cases", type=int,
                   help=f"phantom: cases to synthesise (default {DEFAULT_PHANTOM_CASES}); real data: keep the first N cases")
    p.add_argument("--preset", default="brain-growth", choices=sorted(PHANTOM_PRESETS),
                   help="phantom preset (default brain-growth)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset at --out")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 done, 2 bad input or unwritable output: one line)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name, value in (("--source", args.source), ("--trimaps", args.trimaps)):
        if value is not None and is_url(value):
            print(f"{name}: downloading {value}", file=sys.stderr)
    try:
        out = prepare_dataset(args.dataset, args.out, source=args.source, trimaps=args.trimaps, folds=args.folds,
                              seed=args.seed, num_cases=args.num_cases, preset=args.preset,
                              overwrite=args.overwrite, source_sha256=args.source_sha256,
                              trimaps_sha256=args.trimaps_sha256)
    except (ValueError, OSError) as e:  # DataPreparationError and friends, file system: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summarize_dataset(out))
    return 0
