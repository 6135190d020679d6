"""The QUBIQ score (Dice against the raters' mean over the thresholds 0.1 .. 0.9) and the per-case region sizes:
values against a numpy reference written from the challenge's rule, edge cases, the handlers, and what SAD does not
show on a small lesion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.metrics import (
    METRIC_NAMES,
    QubiqScore,
    RegionSize,
    compute_qubiq_score,
    compute_region_size,
    compute_sad,
    metric_handlers,
)


def _reference(pred: np.ndarray, masks: np.ndarray) -> float:
    """pred (H, W) in [0, 1], masks (K, H, W): the rule spelt out threshold by threshold."""
    pred = np.floor(np.clip(pred, 0, 1) * 255 + 0.5) / 255
    mean = masks.mean(0)
    scores = []
    for t in np.arange(1, 10) / 10:
        p, g = pred > t, mean > t
        if p.sum() + g.sum() == 0:
            scores.append(1.0)
        else:
            scores.append(2 * (p & g).sum() / (p.sum() + g.sum()))
    return float(np.mean(scores))


def test_qubiq_score_matches_the_rule_on_random_cases():
    rng = np.random.default_rng(0)
    masks = (rng.random((3, 5, 16, 16)) < np.linspace(0.1, 0.9, 16)[None, None, None]).astype(np.float32)
    pred = rng.random((3, 1, 16, 16)).astype(np.float32)
    got = compute_qubiq_score(torch.from_numpy(pred), torch.from_numpy(masks))
    want = [_reference(pred[b, 0], masks[b]) for b in range(3)]
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    assert 0.0 < got.min() and got.max() < 1.0


def test_qubiq_score_edge_cases():
    masks = torch.zeros(1, 4, 8, 8)
    masks[:, :3, 2:6, 2:6] = 1  # 3 of 4 raters: mean 0.75
    exact = masks.mean(1, keepdim=True)
    assert compute_qubiq_score(exact, masks).item() == 1.0
    # nothing predicted: Dice 0 at 0.1 .. 0.7 (the raters' mean is above), 1 at 0.8 and 0.9 (both empty)
    assert compute_qubiq_score(torch.zeros(1, 1, 8, 8), masks).item() == pytest.approx(2 / 9)
    # nothing marked and nothing predicted: 1
    assert compute_qubiq_score(torch.zeros(1, 1, 8, 8), torch.zeros(1, 4, 8, 8)).item() == 1.0
    with pytest.raises(ValueError, match=r"y must have shape \(B, K, H, W\)"):
        compute_qubiq_score(torch.zeros(1, 1, 8, 8), torch.zeros(1, 4, 8, 7))


def test_region_sizes_and_metric_classes():
    masks = torch.zeros(2, 3, 8, 8)
    masks[0, 0, 0:2, 0:3] = 1
    masks[0, 2, 1:3, 0:3] = 1  # union 3 x 3 = 9 pixels
    label = torch.zeros(2, 2, 8, 8)
    label[1, 1, :4] = 1
    assert compute_region_size(masks, "foreground").tolist() == [9.0, 0.0]
    assert compute_region_size(label, "unknown").tolist() == [0.0, 32.0]
    pred = torch.zeros(2, 1, 8, 8)
    size = RegionSize("foreground")
    size(pred, masks)
    assert size.get_buffer().reshape(-1).tolist() == [9.0, 0.0] and size.aggregate().item() == 4.5
    score = QubiqScore()
    score(list(pred), list(masks))  # decollated lists, as the handlers pass them
    assert score.get_buffer().shape == (2, 1)
    handlers = metric_handlers(["qubiq", "foreground_pixels", "unknown_pixels"])
    assert set(handlers) == {"qubiq", "foreground_pixels", "unknown_pixels"}
    assert {"qubiq", "foreground_pixels", "unknown_pixels"} <= set(METRIC_NAMES)


def test_a_missed_small_lesion_scores_a_small_sad_but_a_qubiq_score_of_zero():
    """The example of docs/metrics.md: a 1.5 % lesion, 3 raters, targets from the raters, nothing predicted."""
    from scripts.data.targets import alpha_from_raters, trimap_from_raters
    from scripts.metrics import compute_grad, compute_mse

    yy, xx = np.mgrid[:128, :128]
    masks = [((yy - 64) ** 2 + (xx - 64 - s) ** 2 <= (8 + d) ** 2).astype(np.uint8) for s, d in ((0, 0), (1, 0), (0, 1))]
    alpha = alpha_from_raters(masks)
    trimap = trimap_from_raters(alpha, masks, dilation=1)
    true = torch.from_numpy(alpha / 255.0)[None, None].float()
    unknown = torch.from_numpy(trimap == 128)[None, None]
    raters = torch.from_numpy(np.stack(masks))[None].float()
    missed = torch.zeros_like(true)
    assert 100 * np.any(masks, 0).mean() == pytest.approx(1.54, abs=0.01) and int(unknown.sum()) == 209
    # the lesion's core (every rater agrees) lies outside the unknown region: missing it costs SAD nothing
    assert compute_sad(missed, true, unknown).item() == pytest.approx(0.0917, abs=1e-4)  # Brain-growth: ~0.34
    assert compute_mse(missed, true, unknown).item() == pytest.approx(0.3610, abs=1e-4)  # a mean: not fooled
    assert compute_grad(missed, true, unknown).item() == pytest.approx(0.8296, abs=1e-4)
    assert compute_qubiq_score(missed, raters).item() == 0.0
    assert compute_qubiq_score(true, raters).item() == 1.0
