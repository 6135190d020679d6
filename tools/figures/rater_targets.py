"""Targets from raters for one case of a prepared dataset: image | raters' outlines | raters' mean | trimap.

Reads only the prepared dataset (``datalist.json`` and its PNGs): the alpha matte and the trimap
drawn are the ones training and evaluation use, so for a dataset imported without an alpha or a
trimap (``python -m scripts.prepare_data --dataset folder ...``) the figure shows the two rules of
``docs/data.md`` ("Targets from raters") as they were applied.

Example (re-creates ``docs/figures/rater_targets_case01.png``)::

    python -m tools.brain_growth_layouts --out runs/bg-layouts
    python -m scripts.prepare_data --dataset folder --source runs/bg-layouts/qubiq --out runs/bg-qubiq
    python -m tools.figures.rater_targets --dataset_dir runs/bg-qubiq --case case01 \
        --out docs/figures/rater_targets_case01.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from scripts.data.datalist import load_datalist
from scripts.data.trimaps import UNKNOWN
from scripts.data.writer import read_png

__all__ = ["draw_rater_targets", "main"]


def draw_rater_targets(dataset_dir: str | PathLike, case: str, out: str | PathLike) -> Path:
    """Draw the four panels of ``case`` into the PNG ``out`` and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = {it["case"]: it for it in load_datalist(dataset_dir)["training"]}
    if case not in items:
        raise ValueError(f"{dataset_dir}: no case '{case}' (cases: {sorted(items)[:5]} ...)")
    item = items[case]
    files = item["image"] if isinstance(item["image"], list) else [item["image"]]
    image = read_png(files[0])
    masks = [read_png(m) for m in item["masks"]]
    alpha, trimap = read_png(item["alpha"]), read_png(item["trimap"])
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.9), dpi=80)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("image")
    axes[1].imshow(image, cmap="gray")
    colours = plt.cm.tab10(np.linspace(0, 1, 10))
    for k, m in enumerate(masks):
        axes[1].contour(m, levels=[0.5], colors=[colours[k % 10]], linewidths=0.8)
    axes[1].set_title(f"{len(masks)} raters' masks")
    axes[2].imshow(alpha, cmap="gray", vmin=0, vmax=255)
    axes[2].set_title("alpha = raters' mean")
    shown = np.where(trimap == UNKNOWN, 128, np.where(trimap == 255, 255, 0))
    axes[3].imshow(shown, cmap="gray", vmin=0, vmax=255)
    axes[3].set_title(f"trimap: unknown {100 * (trimap == UNKNOWN).mean():.1f} %")
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.figures.rater_targets", description=__doc__.splitlines()[0])
    p.add_argument("--dataset_dir", required=True, help="prepared dataset (datalist.json)")
    p.add_argument("--case", required=True, help="the case to draw")
    p.add_argument("--out", required=True, help="PNG file to write")
    args = p.parse_args(argv)
    try:
        print(draw_rater_targets(args.dataset_dir, args.case, args.out))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
