"""``python -m tools.studies.error_analysis``: where the mattes' error lies, and what no retraining could remove.

Reads the predictions that the evaluation wrote (``fold<k>/predictions/<case>_alpha.npy``) of one or
more cross-validation folders (``tools.crossval`` / ``tools.reproduce``; several folders: the same
protocol with other training seeds) and the true mattes and trimaps of the prepared dataset (the
evaluation's own preprocessing of each fold's test cases), and reports, per folder and for the mean
of the folders' predictions:

- ``sad``, ``mse``, ``grad``: the published metrics inside the trimap's unknown region
  (:mod:`scripts.metrics`, the values of the fold reports);
- ``sad_background`` / ``sad_transition`` / ``sad_foreground``: SAD split by the true alpha
  (8-bit: 0, strictly between, 255); the three sum to ``sad``;
- ``sad_known``: SAD over the rest of the image (the trimap's known background and foreground): a
  haze or holes away from the border, which the published metrics do not see;
- ``signed_error``: the mean of ``prediction - truth`` over the unknown region (per image, then over
  the images): a matte that is too high or too low overall;
- ``sad_recalibrated`` / ``mse_recalibrated``: the errors after the best piecewise-constant map
  of the predicted value (20 bins; the median of the true alpha per bin for SAD, the mean for MSE),
  *fitted on the evaluated cases themselves*: an upper bound on what any recalibration of the
  matte's values (temperature, gamma, isotonic fit on a validation split) could gain;
- the row ``mean of the folders``: the average of the folders' predictions, an ensemble of the
  seeds. If it is hardly better than each folder, the error is what every seed gets wrong alike
  (bias), not seed-to-seed variance, and neither averaging nor weight averaging will remove it.

Hand-written: the metrics are the bundle's; the breakdown and the oracle are a few tensor lines no
library offers. Reads only ``.npy`` files (``allow_pickle=False``) and the prepared dataset.

Example::

    python -m tools.studies.error_analysis --crossval_dirs runs/brain-growth/ours runs/brain-growth/ours_seed1 \\
        --json docs/results/error_analysis.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scripts import BUNDLE_ROOT
from scripts.atomic import write_text_atomic
from scripts.metrics.matting import compute_grad, compute_mse, compute_sad, quantize_alpha
from scripts.handlers.prediction_writer import case_name_from_path
from tools.provenance import git_commit, load_average
from tools.tables import fmt, md_row, md_rule

__all__ = ["RECALIBRATION_BINS", "ROWS", "error_breakdown", "recalibration_oracle", "load_truth", "load_predictions",
           "main"]

#: bins of the predicted value in the recalibration oracle
RECALIBRATION_BINS = 20
#: the reported quantities, in table order
ROWS = ("sad", "mse", "grad", "sad_background", "sad_transition", "sad_foreground", "sad_known", "signed_error",
        "sad_recalibrated", "mse_recalibrated")


def recalibration_oracle(pred: torch.Tensor, alpha: torch.Tensor, unknown: torch.Tensor, statistic: str,
                         bins: int = RECALIBRATION_BINS) -> torch.Tensor:
    """``pred`` with each value replaced by the ``statistic`` ("median" or "mean") of the true alpha
    inside ``unknown`` over the pixels whose prediction falls in the same of ``bins`` equal bins of [0, 1]
    (a bin without such pixels keeps the predictions). Fitted on the data it is applied to: an upper bound.
    """
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}.")
    pred = pred.to(torch.float64).clamp(0.0, 1.0)
    index = (pred * bins).long().clamp_max(bins - 1)
    region = unknown.bool()
    out = pred.clone()
    for b in range(bins):
        fit = region & (index == b)
        if fit.any():
            values = alpha.to(torch.float64)[fit]
            out[index == b] = values.median() if statistic == "median" else values.mean()
    return out


def error_breakdown(pred: torch.Tensor, alpha: torch.Tensor, unknown: torch.Tensor) -> dict[str, float]:
    """The quantities of the module docstring for predictions ``pred``, true mattes ``alpha`` and the
    unknown regions ``unknown`` (each (N, 1, H, W), values in [0, 1]); means over the N images."""
    region = unknown.bool()
    truth = quantize_alpha(alpha)
    error = quantize_alpha(pred) - truth
    per_pixel = error.abs() * region
    result = {
        "sad": compute_sad(pred, alpha, region).mean().item(),
        "mse": compute_mse(pred, alpha, region).mean().item(),
        "grad": compute_grad(pred, alpha, region).mean().item(),
        "sad_background": (per_pixel * (truth == 0)).sum(dim=(1, 2, 3)).mean().item() / 1000.0,
        "sad_transition": (per_pixel * ((truth > 0) & (truth < 1))).sum(dim=(1, 2, 3)).mean().item() / 1000.0,
        "sad_foreground": (per_pixel * (truth == 1)).sum(dim=(1, 2, 3)).mean().item() / 1000.0,
        "sad_known": compute_sad(pred, alpha, ~region).mean().item(),
        "signed_error": ((error * region).sum(dim=(1, 2, 3)) / region.sum(dim=(1, 2, 3)).clamp_min(1)).mean().item(),
        "sad_recalibrated": compute_sad(recalibration_oracle(pred, alpha, region, "median"), alpha, region).mean().item(),
        "mse_recalibrated": compute_mse(recalibration_oracle(pred, alpha, region, "mean"), alpha, region).mean().item(),
    }
    return result


def load_truth(dataset_dir: Path) -> dict[str, tuple[int, torch.Tensor, torch.Tensor]]:
    """``{case: (fold, alpha (1, H, W), unknown (1, H, W) bool)}`` of every case of the prepared
    dataset, through the evaluation's preprocessing of each fold's test cases."""
    from scripts.data.datalist import load_datalist
    from scripts.data.trimaps import UNKNOWN
    from tools.crossval import fold_config

    truth: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}
    for fold in range(int(load_datalist(dataset_dir)["num_folds"])):
        parser = fold_config(dataset_dir, fold)
        cases = parser.get_parsed_content("split")["test"]
        dataset = parser.get_parsed_content("dataset")
        for entry, item in zip(cases, dataset):
            alpha = torch.as_tensor(item["alpha"]).float()
            unknown = torch.as_tensor(item["trimap"]) == UNKNOWN
            truth[case_name_from_path(entry["image"])] = (fold, alpha, unknown)
    return truth


def load_predictions(crossval_dir: Path, truth: dict[str, tuple[int, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The predicted mattes (N, 1, H, W) of ``crossval_dir`` in the order of ``truth``; a ``ValueError``
    naming the file when one is missing, not a float array of the truth's shape, or outside [0, 1]."""
    out = []
    for case, (fold, alpha, _) in truth.items():
        path = crossval_dir / f"fold{fold}" / "predictions" / f"{case}_alpha.npy"
        if not path.is_file():
            raise ValueError(f"{path}: missing (the evaluation of fold {fold} writes it)")
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: not a readable .npy array ({err})") from err
        if array.dtype.kind != "f" or array.size != alpha.numel():
            raise ValueError(f"{path}: expected a float array of {alpha.numel()} values ({tuple(alpha.shape)}), "
                             f"got {array.dtype} {array.shape}")
        pred = torch.from_numpy(array.astype(np.float32)).reshape(alpha.shape)
        if not bool(torch.isfinite(pred).all()) or pred.min() < 0 or pred.max() > 1:
            raise ValueError(f"{path}: values outside [0, 1]")
        out.append(pred)
    return torch.stack(out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m tools.studies.error_analysis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--crossval_dirs", nargs="+", required=True,
                        help="cross-validation folders with fold<k>/predictions/<case>_alpha.npy")
    parser.add_argument("--dataset_dir", default=str(BUNDLE_ROOT / "data" / "brain-growth"))
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    truth = load_truth(Path(args.dataset_dir))
    alpha = torch.stack([t[1] for t in truth.values()])
    unknown = torch.stack([t[2] for t in truth.values()])
    try:
        preds = {d: load_predictions(Path(d), truth) for d in args.crossval_dirs}
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    rows = {d: error_breakdown(p, alpha, unknown) for d, p in preds.items()}
    if len(preds) > 1:
        rows["mean of the folders"] = error_breakdown(torch.stack(list(preds.values())).mean(dim=0), alpha, unknown)
        rows["each folder, mean"] = {k: statistics.fmean(rows[d][k] for d in preds) for k in ROWS}
    result = {"command": "python -m tools.studies.error_analysis " + " ".join(sys.argv[1:] if argv is None else argv),
              "commit": git_commit(), "load_average": load_average(), "cases": len(truth), "rows": rows}
    print(md_row(["predictions", *ROWS]))
    print("| --- |" + md_rule(len(ROWS), "---:")[1:])
    for name, values in rows.items():
        print(md_row([name, *(fmt(values[k]) for k in ROWS)]))
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
