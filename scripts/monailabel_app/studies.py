"""Export a prepared dataset of the bundle as a MONAI Label studies folder.

::

    python -m scripts.monailabel_app.studies --dataset data/phantom --out studies \\
        [--format nifti|png] [--labels N] [--fold K]

writes ``studies/<case>.nii.gz`` (default) or ``studies/<case>.png`` for every case (or only the
cases of fold ``K``), and, for the first ``N`` of them, the true alpha matte as a *final* label in
``studies/labels/final/<case>.<ext>``, where MONAI Label's local datastore finds it at start-up
(so the server's training task has labels to train on right away).

NIfTI is the format to use with 3D Slicer: a NIfTI study holds the image as an (H, W, 1) volume
with an identity affine, and the labels Slicer saves for it are on the same voxel grid. A PNG
study keeps the file exactly as prepared (``images/<case>.png``); its labels must be PNGs too.

Example:
    >>> export_studies("data/phantom", "studies", fmt="nifti", labels=4)  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import shutil
from os import PathLike
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

__all__ = ["export_studies", "main"]


def _write(array: np.ndarray, path: Path, fmt: str) -> None:
    if fmt == "png":
        from scripts.data.writer import write_png

        write_png(path, array)
        return
    import nibabel as nib

    if array.ndim != 2:
        raise ValueError(f"{path}: NIfTI studies are for grey images; use --format png for RGB datasets")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array[:, :, None]), np.eye(4)), str(path))  # (H, W, 1)


def export_studies(
    dataset_dir: Union[str, PathLike],
    out: Union[str, PathLike],
    fmt: str = "nifti",
    labels: int = 0,
    fold: Optional[int] = None,
) -> Path:
    """Write the studies folder (see the module docstring) and return it.

    Args:
        dataset_dir: a folder written by ``python -m scripts.prepare_data``.
        out: the studies folder to create (must not exist or be empty).
        fmt: ``"nifti"`` or ``"png"``.
        labels: how many cases (in case order) also get their alpha matte as a final label.
        fold: export only this fold's cases (``None``: all).

    Raises:
        ValueError: unknown format, or ``out`` exists and is not empty.
    """
    from scripts.data.datalist import load_datalist
    from scripts.data.writer import read_png

    if fmt not in ("nifti", "png"):
        raise ValueError(f"format must be 'nifti' or 'png', got {fmt!r}")
    out = Path(out).expanduser().absolute()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: exists and is not empty; choose another --out")
    items = load_datalist(dataset_dir)["training"]
    if fold is not None:
        items = [item for item in items if item["fold"] == int(fold)]
        if not items:
            raise ValueError(f"{dataset_dir}: fold {fold} has no cases")
    ext = ".nii.gz" if fmt == "nifti" else ".png"
    label_dir = out / "labels" / "final"
    label_dir.mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(sorted(items, key=lambda it: it["case"])):
        case = item["case"]
        if fmt == "png":
            shutil.copyfile(item["image"], out / f"{case}.png")
        else:
            _write(read_png(item["image"]), out / f"{case}{ext}", fmt)
        if i < labels:
            _write(read_png(item["alpha"]), label_dir / f"{case}{ext}", fmt)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser("python -m scripts.monailabel_app.studies", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="prepared dataset folder (python -m scripts.prepare_data)")
    parser.add_argument("--out", required=True, help="studies folder to create")
    parser.add_argument("--format", default="nifti", choices=["nifti", "png"])
    parser.add_argument("--labels", type=int, default=0, help="cases that also get their alpha matte as a final label")
    parser.add_argument("--fold", type=int, default=None, help="export only this fold's cases")
    args = parser.parse_args(argv)
    out = export_studies(args.dataset, args.out, fmt=args.format, labels=args.labels, fold=args.fold)
    print(f"studies written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
