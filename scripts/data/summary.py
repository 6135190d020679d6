"""Human-readable summary of a prepared dataset (printed at the end of ``scripts.prepare_data``).

Example:
    >>> print(summarize_dataset("data/phantom"))  # doctest: +SKIP
"""

from __future__ import annotations

from os import PathLike

import numpy as np

from scripts.data.datalist import load_datalist
from scripts.data.trimaps import UNKNOWN
from scripts.data.writer import read_png

__all__ = ["dataset_statistics", "summarize_dataset"]


def dataset_statistics(dataset_dir: str | PathLike) -> dict:
    """Read every file of a prepared dataset and return its statistics.

    Returns:
        dict with ``name``, ``cases``, ``fold_sizes`` (list), ``raters``, ``image_shape``, ``image_range``,
        ``alpha_range``, ``mask_values``, ``unknown_fraction`` (share of trimap pixels equal to 128) and
        ``soft_alpha_fraction`` (share of alpha pixels strictly between 0 and 255).
    """
    dl = load_datalist(dataset_dir)
    items = dl["training"]
    fold_sizes = [sum(1 for it in items if it["fold"] == k) for k in range(dl["num_folds"])]
    img_lo, img_hi, a_lo, a_hi = 255, 0, 255, 0
    unknown = soft = pixels = 0
    mask_values: set[int] = set()
    image_shapes = set()
    for it in items:
        files = it["image"] if isinstance(it["image"], list) else [it["image"]]
        image = np.stack([read_png(f) for f in files], -1) if len(files) > 1 else read_png(files[0])
        alpha, trimap = read_png(it["alpha"]), read_png(it["trimap"])
        image_shapes.add(image.shape)
        img_lo, img_hi = min(img_lo, int(image.min())), max(img_hi, int(image.max()))
        a_lo, a_hi = min(a_lo, int(alpha.min())), max(a_hi, int(alpha.max()))
        unknown += int((trimap == UNKNOWN).sum())
        soft += int(((alpha > 0) & (alpha < 255)).sum())
        pixels += alpha.size
        for m in it["masks"]:
            mask_values.update(np.unique(read_png(m)).tolist())
    return {
        "name": dl["name"], "cases": len(items), "num_folds": dl["num_folds"], "fold_sizes": fold_sizes,
        "raters": dl["raters"], "image_shape": sorted(image_shapes), "image_range": (img_lo, img_hi),
        "alpha_range": (a_lo, a_hi), "mask_values": sorted(mask_values),
        "unknown_fraction": unknown / max(pixels, 1), "soft_alpha_fraction": soft / max(pixels, 1),
        "skipped": [f"{s['case']}: {s['error']}" for s in dl.get("skipped", [])],
    }


def summarize_dataset(dataset_dir: str | PathLike) -> str:
    """Return a multi-line summary of the prepared dataset at ``dataset_dir``."""
    s = dataset_statistics(dataset_dir)
    shapes = ", ".join(str(tuple(sh)) for sh in s["image_shape"])
    return "\n".join([
        f"dataset        {s['name']} at {dataset_dir}",
        f"cases          {s['cases']}",
        f"folds          {s['num_folds']}: sizes {s['fold_sizes']}",
        f"image shape    {shapes} (uint8)",
        f"raters         {s['raters']} (mask values {s['mask_values']})",
        f"image range    {s['image_range'][0]} .. {s['image_range'][1]}",
        f"alpha range    {s['alpha_range'][0]} .. {s['alpha_range'][1]} "
        f"({100 * s['soft_alpha_fraction']:.2f}% of pixels strictly between 0 and 255)",
        f"trimap unknown {100 * s['unknown_fraction']:.2f}% of pixels (value 128)",
        *([f"skipped        {len(s['skipped'])} case(s):"] + [f"  {line}" for line in s["skipped"]]
          if s["skipped"] else []),
    ])
