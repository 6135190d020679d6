"""Why is the published closed-form row so much worse than ours? Variants of closed-form matting, measured.

Our closed-form row (pymatting, defaults) gives SAD 0.58 on Brain-growth; the paper's Table 1
publishes 1.54. This study re-solves closed-form matting (own Laplacian and solver,
:mod:`tools.baselines.laplacian`) with one setting changed at a time from pymatting's defaults and
scores every variant on all cases with the same metrics:

- regularisation ``eps`` of the matting Laplacian and the window radius;
- input scaling (image in 0..255 instead of 0..1, i.e. ``eps / 255^2``; per-image contrast stretch);
- colour handling (grey as one channel vs replicated to RGB, which equals ``eps / 3``);
- trimap handling (the grey border values left by resizing: unknown, thresholded at 128,
  background or foreground; a 0..255 trimap read with 0..1 thresholds 0.1 / 0.9);
- solver (hard known-pixel constraints vs soft ones with weight ``lam``, as in Levin's code);
- output and evaluation (8-bit cast without clipping, which wraps around; a different region).

Example::

    python -m tools.studies.closed_form_study --dataset_dir data/brain-growth \
        --out docs/results/closed_form_variants_brain_growth.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from scripts.atomic import write_text_atomic
from scripts.metrics.matting import compute_grad, compute_mse, compute_sad
from tools.baselines.laplacian import matting_laplacian, solve_alpha

__all__ = ["BASE", "VARIANTS", "variant_alpha", "run_study", "main"]

#: pymatting's closed-form defaults, as our baseline row runs them
BASE: dict[str, Any] = {"eps": 1e-7, "radius": 1, "scale": "0..1", "channels": "rgb", "trimap": "non-0/255 unknown",
                        "lam": None, "output": "clip", "region": "trimap == 128"}

#: (name, changes to BASE)
VARIANTS: list[tuple[str, dict]] = [
    ("base (pymatting defaults, own solver)", {}),
    *[(f"eps {e:g}", {"eps": e}) for e in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)],
    ("radius 2 (5 x 5 windows)", {"radius": 2}),
    ("image in 0..255", {"scale": "0..255"}),
    ("image contrast-stretched per case", {"scale": "min-max"}),
    ("grey, one channel", {"channels": "grey"}),
    ("border greys thresholded at 128 (only 128 unknown)", {"trimap": "threshold 128"}),
    ("border greys = background", {"trimap": "border bg"}),
    ("border greys = foreground", {"trimap": "border fg"}),
    ("soft constraints, lam 100 (Levin's code)", {"lam": 100.0}),
    ("soft constraints, lam 0.01", {"lam": 0.01}),
    ("output cast to 8 bits without clipping (wraps)", {"output": "wrap"}),
    ("evaluated on every non-0/255 trimap pixel", {"region": "non-0/255"}),
    ("0..255 trimap read with 0..1 thresholds (< 0.1 bg, > 0.9 fg), lam 100", {"trimap": "0..255 as 0..1", "lam": 100.0}),
    ("0..255 trimap read with 0..1 thresholds, hard constraints", {"trimap": "0..255 as 0..1"}),
]


def _trimap(t: np.ndarray, rule: str) -> np.ndarray:
    """The solver's trimap (0 bg, 1 fg, else unknown; or the raw 0..255 values) from the 8-bit trimap."""
    out = np.full(t.shape, 0.5)
    if rule == "non-0/255 unknown":
        out[t == 0], out[t == 255] = 0.0, 1.0
    elif rule == "threshold 128":
        out[t < 128], out[t > 128] = 0.0, 1.0
    elif rule == "border bg":
        out[t != 128], out[t == 255] = 0.0, 1.0
    elif rule == "border fg":
        out[t != 128], out[t == 0] = 1.0, 0.0
    elif rule == "0..255 as 0..1":
        return t.astype(np.float64)
    else:
        raise ValueError(f"unknown trimap rule {rule!r}")
    return out


def variant_alpha(image: np.ndarray, trimap: np.ndarray, variant: dict) -> np.ndarray:
    """Closed-form alpha of one 8-bit grey ``image`` / ``trimap`` under ``variant`` (BASE with changes)."""
    v = {**BASE, **variant}
    img = image.astype(np.float64)
    if v["scale"] == "0..1":
        img = img / 255.0
    elif v["scale"] == "min-max":
        img = (img - img.min()) / max(img.max() - img.min(), 1e-12)
    elif v["scale"] != "0..255":
        raise ValueError(f"unknown scale {v['scale']!r}")
    if v["channels"] == "rgb":
        img = np.repeat(img[..., None], 3, axis=-1)
    lap = matting_laplacian(img, v["eps"], v["radius"])
    t = _trimap(trimap, v["trimap"])
    if v["trimap"] == "0..255 as 0..1":  # every pixel is < 0.1 or > 0.9: all constrained to their raw value
        known = (t < 0.1) | (t > 0.9)
        target = t
        if v["lam"] is None:
            alpha = np.where(known, target, 0.5)  # nothing left to solve for
        else:
            import scipy.sparse as sp
            import scipy.sparse.linalg as spla

            d = sp.diags(known.ravel().astype(np.float64))
            alpha = spla.spsolve((lap + v["lam"] * d).tocsc(), v["lam"] * (known * target).ravel()).reshape(t.shape)
    else:
        alpha = solve_alpha(lap, t, v["lam"])
    if v["output"] == "wrap":  # uint8 cast of alpha * 255 without clipping: modulo 256
        return (np.floor(alpha * 255.0 + 0.5).astype(np.int64) % 256) / 255.0
    return np.clip(alpha, 0.0, 1.0)


def _region(trimap: np.ndarray, rule: str) -> np.ndarray:
    if rule == "trimap == 128":
        return trimap == 128
    if rule == "non-0/255":
        return (trimap != 0) & (trimap != 255)
    raise ValueError(f"unknown region {rule!r}")


def run_study(dataset_dir: str | Path, variants: list[tuple[str, dict]] = VARIANTS) -> dict:
    """SAD / MSE / Grad (means over the cases) of every variant, plus the trivial 'trimap > 0' matte."""
    dataset_dir = Path(dataset_dir)
    items = json.loads((dataset_dir / "datalist.json").read_text())["training"]
    cases = [tuple(np.asarray(Image.open(dataset_dir / it[k])) for k in ("image", "trimap", "alpha")) for it in items]
    rows = []

    def score(name: str, changes: dict, alpha_fn) -> None:
        start = time.perf_counter()
        values = []
        for image, trimap, gt in cases:
            pred = torch.from_numpy(alpha_fn(image, trimap))[None, None]
            y = torch.from_numpy(gt.astype(np.float64) / 255.0)[None, None]
            mask = torch.from_numpy(_region(trimap, changes.get("region", BASE["region"])))[None, None]
            values.append([float(f(pred, y, mask)[0]) for f in (compute_sad, compute_mse, compute_grad)])
        mean = np.mean(values, axis=0)
        rows.append({"variant": name, "changes": changes, "sad": mean[0], "mse": mean[1], "grad": mean[2],
                     "seconds": round(time.perf_counter() - start, 1)})
        print(f"{name:75s} SAD {mean[0]:.4f} MSE {mean[1]:.4f} Grad {mean[2]:.4f}", flush=True)

    for name, changes in variants:
        score(name, changes, lambda im, t, c=changes: variant_alpha(im, t, c))
    score("no solver: alpha = 1 wherever the trimap is not 0", {"no solver": True},
          lambda im, t: (t > 0).astype(np.float64))
    return {"dataset_dir": str(dataset_dir), "cases": len(cases), "base": BASE, "variants": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--out", help="JSON file for the table")
    args = parser.parse_args(argv)
    from tools.provenance import cpu_model, git_commit, load_average

    run = {"commit": git_commit(), "cpu": cpu_model(), "load_average_start": load_average()}
    result = run_study(args.dataset_dir)
    run["load_average_end"] = load_average()
    result["run"] = run
    if args.out:
        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
