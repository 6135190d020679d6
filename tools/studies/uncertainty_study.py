"""``python -m tools.studies.uncertainty_study``: does the uncertainty map follow the raters' disagreement?

For every fold of a cross-validation folder (``tools.crossval`` / ``tools.reproduce``), loads the
fold's trained ``model.pt``, predicts its test cases exactly as the evaluation does (the model's own
prior samples and test-time flips) and compares candidate uncertainty maps, computed from the same
prediction, with the raters' per-pixel variance ``p (1 - p)`` (``p``: fraction of the 7 raters
marking the pixel), by the Pearson correlation inside the structure
(:func:`scripts.metrics.compute_uncertainty_rater_correlation`):

- ``entropy``: the model's map, the binary entropy of the mean sample probability (paper, section 2.2);
- ``sample_std``: the network option of that name (``sample_std_uncertainty``: twice the standard
  deviation of the sample probabilities across the prior samples and flipped views, how much the
  samples disagree);
- ``hard_entropy``: the binary entropy of the mean of the samples thresholded at 0.5;
- ``alpha_variance``: ``alpha (1 - alpha)`` of the predicted matte.

It also reports how confident the samples are where all raters agree (``mean_prob_consensus``: the
mean sample probability where every rater marks the pixel) and at the rim (``mean_prob_rim``: where
fewer than half do), which explains a map that is high over the whole structure.

Example::

    python -m tools.studies.uncertainty_study --crossval_dir runs/brain-growth/ours --json docs/results/uncertainty_study.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scripts import BUNDLE_ROOT
from scripts.atomic import write_text_atomic
from scripts.metrics import compute_uncertainty_rater_correlation
from scripts.networks.uncertainty import binary_entropy_uncertainty, sample_std_uncertainty
from scripts.workflows.inference import load_trained_network
from tools.provenance import git_commit, load_average
from tools.tables import fmt, md_row, md_rule

__all__ = ["CANDIDATES", "candidate_maps", "study_fold", "main"]

CANDIDATES = ("entropy", "sample_std", "hard_entropy", "alpha_variance")


def candidate_maps(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The candidate uncertainty maps (B, 1, H, W) of one ``predict`` output (module docstring)."""
    probs = out["sample_probs"].float()
    alpha = out["alpha"].float()
    return {
        "entropy": out["uncertainty"].float(),
        "sample_std": sample_std_uncertainty(probs),
        "hard_entropy": binary_entropy_uncertainty((probs >= 0.5).float()),
        "alpha_variance": alpha * (1.0 - alpha),
    }


def study_fold(fold_dir: Path, dataset_dir: Path, fold: int) -> dict[str, Any]:
    """Per-candidate mean correlation over the fold's test cases, and the sample confidence."""
    from tools.crossval import fold_config

    network = load_trained_network(fold_dir / "models" / "model.pt").eval()
    dataset = fold_config(dataset_dir, fold).get_parsed_content("dataset")
    values: dict[str, list[float]] = {name: [] for name in (*CANDIDATES, "mean_prob_consensus", "mean_prob_rim")}
    with torch.no_grad():
        for item in dataset:
            out = network.predict(torch.as_tensor(item["image"])[None].float())
            masks = torch.as_tensor(item["masks"])[None].float()
            for name, value in candidate_maps(out).items():
                corr = float(compute_uncertainty_rater_correlation(value, masks)[0])
                if corr == corr:  # not NaN
                    values[name].append(corr)
            fraction = (masks >= 0.5).float().mean(dim=1)[0]
            mean_prob = out["sample_probs"][0].float().mean(dim=0)
            if (fraction == 1).any():
                values["mean_prob_consensus"].append(float(mean_prob[fraction == 1].mean()))
            rim = (fraction > 0) & (fraction < 0.5)
            if rim.any():
                values["mean_prob_rim"].append(float(mean_prob[rim].mean()))
    return {name: (statistics.fmean(v) if v else None) for name, v in values.items()} | {"cases": len(dataset)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m tools.studies.uncertainty_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--crossval_dir", required=True, help="cross-validation folder with fold<k>/models/model.pt")
    parser.add_argument("--dataset_dir", default=str(BUNDLE_ROOT / "data" / "brain-growth"))
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    cv_dir = Path(args.crossval_dir)
    folds = sorted(p for p in cv_dir.glob("fold*") if (p / "models" / "model.pt").is_file())
    if not folds:
        parser.exit(2, f"error: {cv_dir}: no fold<k>/models/model.pt found\n")
    torch.set_num_threads(1)
    per_fold = {p.name: study_fold(p, Path(args.dataset_dir), int(p.name[len("fold"):])) for p in folds}
    names = (*CANDIDATES, "mean_prob_consensus", "mean_prob_rim")
    mean = {n: statistics.fmean(f[n] for f in per_fold.values() if f[n] is not None) for n in names}
    result = {"command": "python -m tools.studies.uncertainty_study " + " ".join(sys.argv[1:] if argv is None else argv),
              "commit": git_commit(), "load_average": load_average(), "crossval_dir": str(cv_dir),
              "folds": per_fold, "mean_over_folds": mean}
    print(md_row(["fold", *names]))
    print(md_rule(len(names) + 1))
    for fold, values in per_fold.items():
        print(md_row([fold, *(fmt(values[n], digits=3) for n in names)]))
    print(md_row(["mean", *(fmt(mean[n], digits=3) for n in names)]))
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
