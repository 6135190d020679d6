"""Fig. 4-style comparison: for a few cases, image | true alpha | each classic method's matte | ours.

Inputs, all read from disk (nothing is computed here except the SAD printed under each matte):

- ``--dataset_dir``: the prepared dataset (``datalist.json``; images, trimaps, true alphas, folds);
- ``--baselines``: the folder that ``python -m tools.baselines.classic_matting ... --mattes_dir DIR``
  wrote, one sub-folder per method with ``<case>.png``;
- ``--crossval_dir``: a ``python -m tools.crossval`` output folder; "ours" for a case is the
  prediction of the fold in which that case is a **test** case (``fold<k>/predictions/<case>_alpha.npy``,
  or ``.png``, with ``k`` the case's fold in ``datalist.json``). Leave it out to draw the classic
  methods only.

Cases: ``--cases`` names them; by default the first case of each fold (4 for Brain-growth).

Example (re-creates ``docs/results/figures/brain_growth_qualitative.png``)::

    python -m tools.figures.qualitative --dataset_dir data/brain-growth --baselines eval/classic_mattes \
        --crossval_dir eval/cv --out docs/results/figures/brain_growth_qualitative.png
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from scripts.handlers.fold_figure import save_figure
from scripts.metrics.matting import compute_sad

__all__ = ["METHOD_ORDER", "SHORT_LABELS", "default_cases", "load_panels", "save_qualitative_figure", "main"]

#: column order: the order of the paper's Table 1 (then the other pymatting methods)
METHOD_ORDER = ("bayes", "cf", "knn", "ifm", "lbdm", "lkm", "rw")
SHORT_LABELS = {"bayes": "Bayesian", "cf": "Closed-Form", "knn": "KNN", "ifm": "Information-Flow",
                "lbdm": "Learning Based", "lkm": "Large-Kernel", "rw": "Random-Walk", "ours": "Ours"}
PANEL_INCHES = 1.7


def default_cases(datalist: dict) -> list[str]:
    """The first case (in datalist order) of every fold, ordered by fold."""
    first: dict[int, str] = {}
    for item in datalist["training"]:
        first.setdefault(int(item["fold"]), item["case"])
    return [first[k] for k in sorted(first)]


def _read_map(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.clip(np.load(path, allow_pickle=False).astype(np.float64).squeeze(), 0.0, 1.0)
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0


def _ours_path(crossval_dir: Path, fold: int, case: str) -> Path:
    folder = crossval_dir / f"fold{fold}" / "predictions"
    for suffix in ("_alpha.npy", "_alpha.png"):
        if (folder / f"{case}{suffix}").is_file():
            return folder / f"{case}{suffix}"
    raise FileNotFoundError(f"no prediction of {case} in {folder} (its test fold is {fold}); "
                            "was the cross-validation run with write_predictions on?")


def load_panels(dataset_dir: str | os.PathLike, cases: Sequence[str], baselines_dir: Optional[str | os.PathLike],
                crossval_dir: Optional[str | os.PathLike], methods: Optional[Sequence[str]] = None) -> tuple[list[str], list[dict]]:
    """Read the panels: returns the matte columns (method keys, then ``"ours"``) and one dict per case
    with ``case``, ``fold``, ``image``, ``trimap``, ``alpha_true`` and ``mattes`` ({column: (H, W) in [0, 1]})."""
    dataset_dir = Path(dataset_dir)
    datalist = json.loads((dataset_dir / "datalist.json").read_text())
    items = {it["case"]: it for it in datalist["training"]}
    missing = [c for c in cases if c not in items]
    if missing:
        raise ValueError(f"case(s) {missing} not in {dataset_dir / 'datalist.json'}")
    columns: list[str] = []
    if baselines_dir is not None:
        base = Path(baselines_dir)
        if not base.is_dir():
            raise FileNotFoundError(f"--baselines {base}: not a folder (write it with classic_matting --mattes_dir)")
        found = [m for m in METHOD_ORDER if (base / m).is_dir()] + sorted(
            p.name for p in base.iterdir() if p.is_dir() and p.name not in METHOD_ORDER)
        columns = list(methods) if methods else found
        absent = [m for m in columns if not (base / m).is_dir()]
        if absent:
            raise FileNotFoundError(f"no matte folder for method(s) {absent} in {base} (found: {found})")
    if crossval_dir is not None:
        columns.append("ours")
    if not columns:
        raise ValueError("nothing to compare: give --baselines and/or --crossval_dir")
    rows = []
    for case in cases:
        it = items[case]
        row: dict[str, Any] = {
            "case": case, "fold": int(it["fold"]),
            "image": np.asarray(Image.open(dataset_dir / it["image"]), dtype=np.float64) / 255.0,
            "trimap": np.asarray(Image.open(dataset_dir / it["trimap"])),
            "alpha_true": np.asarray(Image.open(dataset_dir / it["alpha"]), dtype=np.float64) / 255.0,
            "mattes": {},
        }
        for col in columns:
            if col == "ours":
                path = _ours_path(Path(crossval_dir), row["fold"], case)
            else:
                path = Path(baselines_dir) / col / f"{case}.png"
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: missing (run classic_matting with --mattes_dir again)")
            matte = _read_map(path)
            if matte.shape != row["alpha_true"].shape:
                raise ValueError(f"{path}: shape {matte.shape}, expected {row['alpha_true'].shape}")
            row["mattes"][col] = matte
        rows.append(row)
    return columns, rows


def save_qualitative_figure(columns: Sequence[str], rows: Sequence[dict], path: str | os.PathLike,
                            title: Optional[str] = None, dpi: int = 100) -> Path:
    """Draw rows of cases x (image | true alpha | one column per matte); SAD (unknown region) under each matte.

    The figure is ``PANEL_INCHES * (2 + len(columns))`` wide and ``PANEL_INCHES * len(rows) + 0.5``
    high (inches, times ``dpi`` in pixels).
    """
    if not rows:
        raise ValueError("at least one case is needed")
    ncols = 2 + len(columns)
    fig = Figure(figsize=(PANEL_INCHES * ncols, PANEL_INCHES * len(rows) + 0.5), layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    heads = ["image", "ground truth"] + [SHORT_LABELS.get(c, c) for c in columns]
    for r, row in enumerate(rows):
        unknown = torch.from_numpy(row["trimap"] == 128)[None, None]
        gt = torch.from_numpy(row["alpha_true"])[None, None]
        panels = [row["image"], row["alpha_true"]] + [row["mattes"][c] for c in columns]
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            ax.imshow(panel, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(heads[c], fontsize=9)
            if c >= 2:
                sad = float(compute_sad(torch.from_numpy(panel)[None, None], gt, unknown)[0])
                ax.set_xlabel(f"SAD {sad:.3f}", fontsize=7)
        axes[r][0].set_ylabel(f"{row['case']} (fold {row['fold']})", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", required=True, help="prepared dataset (with datalist.json)")
    parser.add_argument("--baselines", help="folder of classic mattes (classic_matting --mattes_dir)")
    parser.add_argument("--crossval_dir", help="tools.crossval output folder (fold<k>/predictions/)")
    parser.add_argument("--methods", nargs="+", help="classic methods to draw (default: all found, Table 1 order)")
    parser.add_argument("--cases", nargs="+", help="cases to draw (default: the first case of every fold)")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--title", default=None)
    parser.add_argument("--dpi", type=int, default=100)
    args = parser.parse_args(argv)
    datalist = json.loads((Path(args.dataset_dir) / "datalist.json").read_text())
    cases = args.cases or default_cases(datalist)
    columns, rows = load_panels(args.dataset_dir, cases, args.baselines, args.crossval_dir, args.methods)
    path = save_qualitative_figure(columns, rows, args.out, title=args.title, dpi=args.dpi)
    print(f"wrote {path} ({len(rows)} cases x {', '.join(columns)})")


if __name__ == "__main__":
    main()
