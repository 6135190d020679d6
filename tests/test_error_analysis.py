"""tools.studies.error_analysis: the error breakdown, the recalibration oracle, the seed ensemble, bad prediction files."""

import json

import numpy as np
import pytest
import torch

from scripts.data.prepare import prepare_dataset
from scripts.metrics.matting import compute_sad
from tools.studies.error_analysis import error_breakdown, load_predictions, load_truth, main, recalibration_oracle


def _transition_case(seed: int = 0, size: int = 32):
    """True alpha strictly inside (0.2, 0.8) on the unknown region (the left half), 0 / 1 elsewhere."""
    g = torch.Generator().manual_seed(seed)
    alpha = torch.rand(2, 1, size, size, generator=g) * 0.6 + 0.2
    unknown = torch.zeros_like(alpha, dtype=torch.bool)
    unknown[..., : size // 2] = True
    alpha[..., size // 2:] = (alpha[..., size // 2:] > 0.5).float()
    return alpha, unknown


def test_breakdown_splits_sad_by_the_true_alpha_and_finds_a_constant_bias():
    alpha, unknown = _transition_case()
    pred = alpha + 0.1  # too high by 0.1 everywhere; the unknown region's truth is in (0.2, 0.8): no clipping
    rows = error_breakdown(pred.clamp(0, 1), alpha, unknown)
    assert rows["sad"] == pytest.approx(compute_sad(pred.clamp(0, 1), alpha, unknown).mean().item())
    assert rows["sad_background"] + rows["sad_transition"] + rows["sad_foreground"] == pytest.approx(rows["sad"])
    assert rows["sad_background"] == 0 and rows["sad_foreground"] == 0  # no 0 / 1 truth inside the region
    # outside the region: 0.1 too high over the background half (0 -> 0.1), clipped at 1 over the foreground
    background = ((alpha == 0) & ~unknown).sum(dim=(1, 2, 3)).double()
    assert rows["sad_known"] == pytest.approx((background * round(0.1 * 255) / 255).mean().item() / 1000, rel=1e-6)
    assert rows["signed_error"] == pytest.approx(0.1, abs=2 / 255)
    assert rows["mse"] == pytest.approx(0.01, abs=2e-3)
    # a constant offset is what a recalibration removes: the oracle leaves only the bins' width
    assert rows["sad_recalibrated"] < 0.2 * rows["sad"]
    assert rows["mse_recalibrated"] < 0.05 * rows["mse"]
    low = error_breakdown(alpha - 0.1, alpha, unknown)
    assert low["signed_error"] == pytest.approx(-0.1, abs=2 / 255)


def test_recalibration_oracle_cannot_undo_noise_and_keeps_empty_bins():
    alpha, unknown = _transition_case(1)
    g = torch.Generator().manual_seed(2)
    noisy = (alpha + 0.2 * torch.randn(alpha.shape, generator=g)).clamp(0, 1)
    rows = error_breakdown(noisy, alpha, unknown)
    # zero-mean noise: the best map of the predicted value removes only part of the error
    assert 0.5 * rows["sad"] < rows["sad_recalibrated"] < rows["sad"]
    mapped = recalibration_oracle(torch.full_like(alpha, 0.97), alpha, torch.zeros_like(unknown), "median")
    assert torch.equal(mapped, torch.full_like(alpha, 0.97).double())  # no pixel to fit: unchanged
    with pytest.raises(ValueError, match="statistic"):
        recalibration_oracle(alpha, alpha, unknown, "mode")


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    return prepare_dataset("phantom", tmp_path_factory.mktemp("ea") / "ph", num_cases=6, folds=2, seed=0)


@pytest.fixture(scope="module")
def phantom_truth(phantom_dir):
    return load_truth(phantom_dir)


def _write_predictions(cv_dir, truth, offset):
    for case, (fold, alpha, _) in truth.items():
        folder = cv_dir / f"fold{fold}" / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{case}_alpha.npy", (alpha + offset).clamp(0, 1).numpy().astype(np.float32))


def test_main_reports_each_folder_and_the_ensemble_of_the_folders(phantom_dir, phantom_truth, tmp_path):
    truth = phantom_truth
    assert len(truth) == 6 and {fold for fold, _, _ in truth.values()} == {0, 1}
    assert all(u.any() for _, _, u in truth.values())
    _write_predictions(tmp_path / "high", truth, 0.1)
    _write_predictions(tmp_path / "low", truth, -0.1)
    out = tmp_path / "analysis.json"
    result = main(["--crossval_dirs", str(tmp_path / "high"), str(tmp_path / "low"),
                   "--dataset_dir", str(phantom_dir), "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == result["rows"] and result["cases"] == 6
    high, low = result["rows"][str(tmp_path / "high")], result["rows"][str(tmp_path / "low")]
    assert high["signed_error"] > 0.05 and low["signed_error"] < -0.05
    # errors of opposite sign cancel in the mean of the two folders' predictions (but where one was clipped)
    ensemble = result["rows"]["mean of the folders"]
    assert ensemble["sad"] < 0.5 * result["rows"]["each folder, mean"]["sad"]
    alpha = torch.stack([a for _, a, _ in truth.values()])
    unknown = torch.stack([u for _, _, u in truth.values()])
    mean_pred = ((alpha + 0.1).clamp(0, 1) + (alpha - 0.1).clamp(0, 1)) / 2
    assert ensemble == pytest.approx(error_breakdown(mean_pred, alpha, unknown))


def test_bad_prediction_files_are_named(phantom_dir, phantom_truth, tmp_path):
    truth = phantom_truth
    _write_predictions(tmp_path / "cv", truth, 0.0)
    case, (fold, _, _) = next(iter(truth.items()))
    path = tmp_path / "cv" / f"fold{fold}" / "predictions" / f"{case}_alpha.npy"
    np.save(path, np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match=f"{case}_alpha.npy: expected a float array"):
        load_predictions(tmp_path / "cv", truth)
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # a pickle inside: never loaded
    with pytest.raises(ValueError, match=f"{case}_alpha.npy: not a readable .npy array"):
        load_predictions(tmp_path / "cv", truth)
    path.unlink()
    with pytest.raises(SystemExit):
        main(["--crossval_dirs", str(tmp_path / "cv"), "--dataset_dir", str(phantom_dir)])
    with pytest.raises(ValueError, match=f"{case}_alpha.npy: missing"):
        load_predictions(tmp_path / "cv", truth)
