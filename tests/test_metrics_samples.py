"""Tests of the Prob. U-Net sample metrics: generalised energy distance and Dice at 0.5."""

from __future__ import annotations

import pytest
import torch

from scripts.metrics import (
    GeneralizedEnergyDistance,
    SampleDiceMetric,
    compute_generalized_energy_distance,
    compute_sample_dice,
)


def masks(*rows):
    """Masks given as flat 0/1 lists -> (1, len(rows), 1, W) tensor."""
    return torch.tensor(rows, dtype=torch.float32)[None, :, None, :]


def test_ged_identical_sets_is_zero():
    a, b = [1, 1, 0, 0], [0, 1, 1, 0]
    assert compute_generalized_energy_distance(masks(a, a, a), masks(a, a)).item() == 0.0
    assert compute_generalized_energy_distance(masks(a, b), masks(b, a)).item() == pytest.approx(0.0, abs=1e-15)


def test_ged_disjoint_masks_positive():
    value = compute_generalized_energy_distance(masks([1, 1, 0, 0]), masks([0, 0, 1, 1])).item()
    assert value == pytest.approx(2.0)  # 2 * 1 - 0 - 0


def test_ged_hand_example():
    a, b = [1, 1, 0, 0], [0, 1, 1, 0]  # IoU 1/3 -> d = 2/3
    # E[d(S, Y)] = (0 + 2/3) / 2, E[d(S, S')] = 0, E[d(Y, Y')] = mean([[0, 2/3], [2/3, 0]]) = 1/3
    assert compute_generalized_energy_distance(masks(a), masks(a, b)).item() == pytest.approx(1 / 3)


def test_ged_thresholds_probabilities_and_empty_masks():
    probs = masks([0.9, 0.6, 0.2, 0.0])  # -> [1, 1, 0, 0]
    assert compute_generalized_energy_distance(probs, masks([1, 1, 0, 0])).item() == 0.0
    empty = [0, 0, 0, 0]
    assert compute_generalized_energy_distance(masks(empty), masks(empty)).item() == 0.0  # IoU(empty, empty) = 1
    assert compute_generalized_energy_distance(masks(empty), masks([1, 0, 0, 0])).item() == pytest.approx(2.0)


def test_dice_hand_examples():
    # mean sample [0.6, 0.3, 0.6] -> [1, 0, 1]; raters' vote [2/3, 2/3, 1/3] -> [1, 1, 0]; Dice 2*1/(2+2)
    samples = masks([0.9, 0.2, 0.6], [0.3, 0.4, 0.6])
    raters = masks([1, 0, 0], [1, 1, 0], [0, 1, 1])
    assert compute_sample_dice(samples, raters).item() == pytest.approx(0.5)
    assert compute_sample_dice(masks([0.1, 0.2]), masks([0, 0], [0, 1], [0, 0])).item() == 1.0  # empty vs empty
    # a rater tie (1 of 2) counts as foreground: reference [0, 1], prediction [0, 1]
    assert compute_sample_dice(masks([0.1, 0.7]), masks([0, 0], [0, 1])).item() == 1.0
    assert compute_sample_dice(masks([0.1, 0.2]), masks([1, 1])).item() == 0.0


def test_metric_classes_buffer_and_aggregate():
    gen = torch.Generator().manual_seed(0)
    samples = torch.rand(3, 5, 8, 8, generator=gen)
    raters = (torch.rand(3, 4, 8, 8, generator=gen) > 0.5).float()
    for cls, fn in ((GeneralizedEnergyDistance, compute_generalized_energy_distance),
                    (SampleDiceMetric, compute_sample_dice)):
        metric = cls()
        metric(samples[:2], raters[:2])
        metric(samples[2:], raters[2:])
        expected = fn(samples, raters)
        torch.testing.assert_close(metric.get_buffer()[:, 0], expected)
        assert metric.aggregate().item() == pytest.approx(expected.mean().item(), rel=1e-6)
    assert torch.all(compute_generalized_energy_distance(samples, raters) >= 0)
    with pytest.raises(ValueError, match="differ"):
        compute_sample_dice(samples, raters[:, :, :4])
