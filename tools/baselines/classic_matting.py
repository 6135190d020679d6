"""Classic trimap-based alpha matting baselines on a prepared dataset (the classic rows of Table 1).

The paper's Table 1 compares against Bayesian, closed-form, KNN, information-flow and
learning-based matting, which all take the *evaluation trimap* as input (the learned model does
not). Running them on our prepared data and scoring them with our metrics gives (a) baselines
measured on the same cases and (b) an independent check that our metric implementation is on the
same scale as the published tables.

Methods (``--methods``):

- ``cf``, ``knn``, ``lbdm``, ``lkm``, ``rw``: pymatting's closed-form, KNN, learning-based,
  large-kernel and random-walk matting; the grey image is replicated to RGB (pymatting needs 3
  channels); only the glue (trimap conversion, scoring) is written here;
- ``ifm``: information-flow matting, hand-written (:mod:`tools.baselines.information_flow`);
- ``bayes``: Bayesian matting, hand-written (:mod:`tools.baselines.bayesian`); both use the grey
  image as one channel.

Every method sees the trimap with 0 = background, 255 = foreground and **every other value
unknown** (the unknown value 128 and the grey values that resizing left at region borders); the
metrics are computed over the pixels exactly 128, as in the published tables.

Resumable: the output JSON is rewritten after each method, and a method already in it with the same
settings (implementation and its code digest or library version, parameters, input conventions,
the dataset's sha256s, the metric code's digest) is not run again unless ``--force``; with
``--mattes_dir`` it is also run again when its matte files are missing there.

Example::

    python -m tools.baselines.classic_matting --dataset_dir data/brain-growth \
        --methods bayes cf knn ifm lbdm --out docs/results/classic_baselines_brain_growth.json \
        --mattes_dir eval/classic_mattes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from scripts import BUNDLE_ROOT
from scripts.atomic import atomic_write, write_text_atomic
from scripts.metrics import MattingMetric

__all__ = ["METHODS", "METRIC_NAMES", "trimap_for_pymatting", "run_method", "method_settings", "evaluate_classic",
           "main"]

METRIC_NAMES = ("sad", "mse", "grad", "conn")
IMAGE_RULE_RGB = "grey / 255 replicated to 3 channels"
IMAGE_RULE_GREY = "grey / 255, one channel"
TRIMAP_RULE = "0 -> background, 255 -> foreground, every other value unknown"
METRIC_RULE = "scripts.metrics.MattingMetric over trimap == 128 (unknown) and over the image"


@dataclass(frozen=True)
class Method:
    """One baseline: its label, where it comes from, and how the grey image is given to it."""

    label: str
    implementation: str  # "pymatting:<function>" or "<module>:<function>"
    image_rule: str
    parameters: dict = field(default_factory=dict)
    code_files: tuple = ()  # hand-written: files whose digest is part of the settings

    def function(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        module, name = self.implementation.split(":")
        return getattr(__import__(module, fromlist=[name]), name)


def _defaults(module: str) -> dict:
    return dict(__import__(module, fromlist=["DEFAULTS"]).DEFAULTS)


METHODS: dict[str, Method] = {  # in the order of the paper's Table 1, then the other pymatting methods
    "bayes": Method("Bayesian (Chuang et al. 2001)", "tools.baselines.bayesian:estimate_alpha_bayesian",
                    IMAGE_RULE_GREY, _defaults("tools.baselines.bayesian"),
                    ("tools/baselines/bayesian.py", "tools/baselines/laplacian.py")),
    "cf": Method("closed-form (Levin et al. 2008)", "pymatting:estimate_alpha_cf", IMAGE_RULE_RGB),
    "knn": Method("KNN (Chen et al. 2013)", "pymatting:estimate_alpha_knn", IMAGE_RULE_RGB),
    "ifm": Method("information-flow (Aksoy et al. 2017)", "tools.baselines.information_flow:estimate_alpha_ifm",
                  IMAGE_RULE_GREY, _defaults("tools.baselines.information_flow"),
                  ("tools/baselines/information_flow.py", "tools/baselines/laplacian.py")),
    "lbdm": Method("learning-based (Zheng & Kambhamettu 2009)", "pymatting:estimate_alpha_lbdm", IMAGE_RULE_RGB),
    "lkm": Method("large-kernel (He et al. 2010)", "pymatting:estimate_alpha_lkm", IMAGE_RULE_RGB),
    "rw": Method("random-walk (Grady et al. 2005)", "pymatting:estimate_alpha_rw", IMAGE_RULE_RGB),
}


def trimap_for_pymatting(trimap: np.ndarray) -> np.ndarray:
    """Convert a 0/128/255 trimap to the 0/0.5/1 convention (pymatting's and ours).

    Pixels that are neither exactly 0 nor exactly 255 (the unknown value 128 and the grey values
    left by resizing at region borders) are all treated as unknown, so the solver estimates them.
    """
    out = np.full(trimap.shape, 0.5, dtype=np.float64)
    out[trimap == 0] = 0.0
    out[trimap == 255] = 1.0
    return out


def run_method(method: str, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """Run one method; ``image`` (H, W) or (H, W, 3) uint8, ``trimap`` (H, W) uint8 -> alpha in [0, 1]."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    spec = METHODS[method]
    img = image.astype(np.float64) / 255.0
    if img.ndim == 2 and spec.image_rule == IMAGE_RULE_RGB:
        img = np.repeat(img[..., None], 3, axis=-1)
    alpha = spec.function()(img, trimap_for_pymatting(trimap))
    return np.clip(alpha, 0.0, 1.0)


def _digest(paths: tuple) -> str:
    h = hashlib.sha256()
    for rel in paths:
        h.update(rel.encode())
        h.update((BUNDLE_ROOT / rel).read_bytes())
    return h.hexdigest()[:16]


def method_settings(method: str, datalist: dict) -> dict:
    """Everything a stored result of ``method`` depends on; equal settings mean it need not be run again."""
    spec = METHODS[method]
    if spec.implementation.startswith("pymatting:"):
        implementation = {"function": spec.implementation, "pymatting": version("pymatting")}
    else:
        implementation = {"function": spec.implementation, "code_sha256": _digest(spec.code_files)}
    return {
        "implementation": implementation,
        "parameters": spec.parameters or "library defaults",
        "image": spec.image_rule,
        "trimap": TRIMAP_RULE,
        "metrics": {"rule": METRIC_RULE, "code_sha256": _digest(("scripts/metrics/matting.py",))},
        "dataset": {k: datalist.get(k) for k in ("name", "source_sha256", "trimaps_sha256")}
        | {"cases": len(datalist["training"])},
    }


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _matte_path(mattes_dir: Path, method: str, case: str) -> Path:
    return mattes_dir / method / f"{case}.png"


def _save_matte(path: Path, alpha: np.ndarray) -> None:
    png = Image.fromarray(np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8))
    atomic_write(path, lambda f: png.save(f, format="PNG"))


def _score_method(method: str, dataset_dir: Path, items: list, mattes_dir: Path | None, commit: str) -> dict:
    from tools.provenance import cpu_model, load_average

    metrics = {(n, r): MattingMetric(n, region=r) for n in METRIC_NAMES for r in ("unknown", "image")}
    cases, seconds = [], 0.0
    load_start = load_average()
    for item in items:
        image = _load(dataset_dir / item["image"])
        trimap = _load(dataset_dir / item["trimap"])
        gt = _load(dataset_dir / item["alpha"]).astype(np.float32) / 255.0
        start = time.perf_counter()
        pred = run_method(method, image, trimap).astype(np.float32)
        seconds += time.perf_counter() - start
        if mattes_dir is not None:
            _save_matte(_matte_path(mattes_dir, method, item["case"]), pred)
        y_pred, y = torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None]
        unknown = torch.from_numpy(trimap == 128)[None, None]
        row = {"case": item["case"], "fold": item["fold"]}
        for (name, region), metric in metrics.items():
            row[f"{name}_{region}"] = float(metric(y_pred, y, mask=unknown).flatten()[0])
        cases.append(row)
    summary = {f"{n}_{r}": float(m.aggregate().item()) for (n, r), m in metrics.items()}
    run = {"commit": commit, "cpu": cpu_model(), "load_average_start": load_start,
           "load_average_end": load_average(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    return {"label": METHODS[method].label, "mean": summary, "cases": cases, "seconds": seconds, "run": run}


def evaluate_classic(dataset_dir: str | Path, methods: list[str], out: str | Path | None = None,
                     force: bool = False, mattes_dir: str | Path | None = None) -> dict:
    """Score each method on every case of a prepared dataset; per-case and mean metrics, seconds, settings.

    With ``out``, results already there are kept, a method with unchanged settings is skipped
    (unless ``force``, or matte files are missing in ``mattes_dir``), and the file is rewritten
    after every method.
    """
    from tools.provenance import git_commit

    commit = git_commit()  # before this run rewrites ``out`` (a tracked file would make it "-dirty")
    dataset_dir = Path(dataset_dir)
    datalist = json.loads((dataset_dir / "datalist.json").read_text())
    items = datalist["training"]
    mattes = Path(mattes_dir) if mattes_dir is not None else None
    results: dict[str, Any] = {"dataset_dir": str(dataset_dir), "methods": {}}
    if out is not None and Path(out).is_file():
        old = json.loads(Path(out).read_text())
        results["methods"] = dict(old.get("methods", {}))
    for method in methods:
        settings = method_settings(method, datalist)
        stored = results["methods"].get(method)
        mattes_ok = mattes is None or all(_matte_path(mattes, method, it["case"]).is_file() for it in items)
        if not force and stored is not None and stored.get("settings") == settings and mattes_ok:
            print(f"{method:5s} unchanged settings, kept from {out} (--force to run again)")
            continue
        entry = _score_method(method, dataset_dir, items, mattes, commit)
        results["methods"][method] = {"settings": settings, **entry}
        order = list(METHODS) + sorted(set(results["methods"]) - set(METHODS))
        results["methods"] = {m: results["methods"][m] for m in order if m in results["methods"]}
        summary = entry["mean"]
        print(f"{method:5s} " + " ".join(f"{k}={v:.4f}" for k, v in summary.items() if k.endswith("unknown"))
              + f" seconds={entry['seconds']:.1f}", flush=True)
        if out is not None:
            write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", required=True, help="prepared dataset (with datalist.json)")
    parser.add_argument("--methods", nargs="+", default=["bayes", "cf", "knn", "ifm", "lbdm"], choices=sorted(METHODS))
    parser.add_argument("--out", help="JSON file for the results (kept results with the same settings are reused)")
    parser.add_argument("--force", action="store_true", help="run every method again even when its settings are unchanged")
    parser.add_argument("--mattes_dir", help="also write every matte as <mattes_dir>/<method>/<case>.png "
                        "(8-bit; for tools.figures.qualitative; keep it outside the repository or in an ignored folder)")
    args = parser.parse_args(argv)
    evaluate_classic(args.dataset_dir, args.methods, out=args.out, force=args.force, mattes_dir=args.mattes_dir)
    if args.out:
        print(f"results in {args.out}")


if __name__ == "__main__":
    main()
