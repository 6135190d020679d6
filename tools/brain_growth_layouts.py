"""``python -m tools.brain_growth_layouts``: Brain-growth written out as a user's own data would arrive.

Writes the Medical Matting pickle's cases in the two layouts ``python -m scripts.prepare_data``
imports (``docs/data.md``, "Your own data"), to check the import paths against the pickle path and
to run the cross-validation of Brain-growth as imported from the QUBIQ layout:

- ``OUT/qubiq/<case>/image.nii.gz`` and ``task01_seg01.nii.gz`` .. ``task01_seg07.nii.gz``
  (the QUBIQ challenge's layout; identity affine, the pickle's uint8 arrays unchanged);
- ``OUT/manifest.csv`` with ``OUT/files/<case>.png`` and ``<case>_rater<k>.png`` (masks as 0 / 255,
  as most tools save them) and, with ``--alpha_and_trimaps``, the pickle's alpha
  (``<case>_alpha.png``) and the published trimaps (``<case>_trimap.png``) as the manifest's
  ``alpha`` / ``trimap`` columns.

Example::

    python -m tools.brain_growth_layouts --out runs/bg-layouts
    python -m scripts.prepare_data --dataset folder --source runs/bg-layouts/qubiq --out data/bg-qubiq
"""

from __future__ import annotations

import argparse
import csv
import sys
import zipfile
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from scripts import BUNDLE_ROOT
from scripts.data.safe_pickle import safe_loads_pickle
from scripts.data.sources import read_trimap_source

__all__ = ["DEFAULT_SOURCE", "write_layouts", "main"]

DEFAULT_SOURCE = BUNDLE_ROOT.parent / "shared" / "data" / "brain-growth"


def write_layouts(out: str | PathLike, source_dir: str | PathLike = DEFAULT_SOURCE, num_cases: int | None = None,
                  alpha_and_trimaps: bool = False) -> dict[str, Path]:
    """Write the QUBIQ folder layout and the PNG + CSV manifest of the first ``num_cases`` cases (all: None).

    Returns:
        ``{"qubiq": folder of case folders, "manifest": the CSV file}``.
    """
    import nibabel as nib
    from PIL import Image

    out, source_dir = Path(out), Path(source_dir)
    with zipfile.ZipFile(source_dir / "brain_growth_alpha.zip") as zf:
        records = safe_loads_pickle(zf.read("brain_growth_alpha.pkl"), source=str(source_dir))
    trimaps = read_trimap_source(source_dir / "trimap_brain.zip") if alpha_and_trimaps else {}
    names = sorted(records)[:num_cases]
    qubiq, files = out / "qubiq", out / "files"
    files.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in names:
        record = records[case]
        folder = qubiq / case
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(record["image"], np.eye(4)), folder / "image.nii.gz")
        row = {"case": case, "image": f"files/{case}.png"}
        Image.fromarray(record["image"]).save(files / f"{case}.png")
        for k, mask in enumerate(record["masks"], 1):
            nib.save(nib.Nifti1Image(mask, np.eye(4)), folder / f"task01_seg{k:02d}.nii.gz")
            Image.fromarray((mask * 255).astype(np.uint8)).save(files / f"{case}_rater{k}.png")
            row[f"mask{k}"] = f"files/{case}_rater{k}.png"
        if alpha_and_trimaps:
            Image.fromarray(record["alpha"]).save(files / f"{case}_alpha.png")
            Image.fromarray(trimaps[case]).save(files / f"{case}_trimap.png")
            row.update(alpha=f"files/{case}_alpha.png", trimap=f"files/{case}_trimap.png")
        rows.append(row)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"qubiq": qubiq, "manifest": manifest}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.brain_growth_layouts", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder to write (qubiq/, files/, manifest.csv)")
    p.add_argument("--source_dir", default=str(DEFAULT_SOURCE), help="folder of brain_growth_alpha.zip and "
                                                                     "trimap_brain.zip (default ../shared/...)")
    p.add_argument("--num_cases", type=int, help="first N cases only (default all 39)")
    p.add_argument("--alpha_and_trimaps", action="store_true",
                   help="add the pickle's alpha and the published trimaps to the manifest")
    args = p.parse_args(argv)
    try:
        paths = write_layouts(args.out, args.source_dir, args.num_cases, args.alpha_and_trimaps)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"QUBIQ layout {paths['qubiq']}\nmanifest     {paths['manifest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
