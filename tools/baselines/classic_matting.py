"""Classic trimap-based alpha matting baselines (pymatting) on a prepared dataset.

The paper's Table 1 compares against closed-form, KNN and learning-based matting, which all take
the *evaluation trimap* as input (the learned model does not). Running them with pymatting on our
prepared data and scoring them with our metrics gives (a) baselines measured on the same cases and
(b) an independent check that our metric implementation is on the same scale as the published
tables. The matting itself is pymatting's; only the glue (trimap conversion, grey-to-RGB, scoring)
is written here.

Example::

    python -m tools.baselines.classic_matting --dataset_dir data/brain-growth \
        --methods cf knn lbdm --out docs/results/classic_baselines_brain_growth.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scripts.metrics import MattingMetric

METHODS = {
    "cf": "estimate_alpha_cf",  # closed-form matting (Levin et al. 2008)
    "knn": "estimate_alpha_knn",  # KNN matting (Chen et al. 2013)
    "lbdm": "estimate_alpha_lbdm",  # learning-based digital matting (Zheng & Kambhamettu 2009)
    "lkm": "estimate_alpha_lkm",  # large-kernel matting (He et al. 2010)
    "rw": "estimate_alpha_rw",  # random-walk matting (Grady et al. 2005)
}
METRIC_NAMES = ("sad", "mse", "grad", "conn")


def trimap_for_pymatting(trimap: np.ndarray) -> np.ndarray:
    """Convert a 0/128/255 trimap to pymatting's 0/0.5/1 convention.

    Pixels that are neither exactly 0 nor exactly 255 (the unknown value 128 and the grey values
    left by resizing at region borders) are all treated as unknown, so the solver estimates them.
    """
    out = np.full(trimap.shape, 0.5, dtype=np.float64)
    out[trimap == 0] = 0.0
    out[trimap == 255] = 1.0
    return out


def run_method(method: str, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """Run one pymatting method; ``image`` (H, W) or (H, W, 3) uint8, ``trimap`` (H, W) uint8."""
    import pymatting

    rgb = image.astype(np.float64) / 255.0
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    alpha = getattr(pymatting, METHODS[method])(rgb, trimap_for_pymatting(trimap))
    return np.clip(alpha, 0.0, 1.0)


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def evaluate_classic(dataset_dir: str | Path, methods: list[str]) -> dict:
    """Score each method on every case of a prepared dataset; returns per-case and mean metrics."""
    dataset_dir = Path(dataset_dir)
    datalist = json.loads((dataset_dir / "datalist.json").read_text())
    results: dict = {"dataset_dir": str(dataset_dir), "methods": {}}
    for method in methods:
        metrics = {(n, r): MattingMetric(n, region=r) for n in METRIC_NAMES for r in ("unknown", "image")}
        cases, seconds = [], 0.0
        for item in datalist["training"]:
            image = _load(dataset_dir / item["image"])
            trimap = _load(dataset_dir / item["trimap"])
            gt = _load(dataset_dir / item["alpha"]).astype(np.float32) / 255.0
            start = time.perf_counter()
            pred = run_method(method, image, trimap).astype(np.float32)
            seconds += time.perf_counter() - start
            y_pred = torch.from_numpy(pred)[None, None]
            y = torch.from_numpy(gt)[None, None]
            unknown = torch.from_numpy(trimap == 128)[None, None]
            row = {"case": item["case"], "fold": item["fold"]}
            for (name, region), metric in metrics.items():
                value = metric(y_pred, y, mask=unknown)
                row[f"{name}_{region}"] = float(value.flatten()[0])
            cases.append(row)
        summary = {f"{n}_{r}": float(m.aggregate().item()) for (n, r), m in metrics.items()}
        results["methods"][method] = {"mean": summary, "cases": cases, "seconds": seconds}
        print(f"{method:5s} " + " ".join(f"{k}={v:.4f}" for k, v in summary.items() if k.endswith("unknown")))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", required=True, help="prepared dataset (with datalist.json)")
    parser.add_argument("--methods", nargs="+", default=["cf", "knn", "lbdm"], choices=sorted(METHODS))
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args(argv)
    results = evaluate_classic(args.dataset_dir, args.methods)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
