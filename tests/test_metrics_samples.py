"""Tests of the Prob. U-Net sample metrics: generalised energy distance and Dice at 0.5."""

from __future__ import annotations

import pytest
import torch

from scripts.metrics import (
    GeneralizedEnergyDistance,
    SampleDiceMetric,
    UncertaintyRaterCorrelation,
    compute_generalized_energy_distance,
    compute_sample_dice,
    compute_uncertainty_rater_correlation,
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


def test_uncertainty_rater_correlation_hand_examples():
    # 3 raters on 4 pixels: fractions [1, 2/3, 1/3, 0] -> variances [0, 2/9, 2/9, 0]; the last pixel
    # is outside every rater's mask and is not part of the region
    raters = masks([1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0])
    follows = torch.tensor([0.1, 0.8, 0.8, 0.9]).view(1, 1, 1, 4)   # high where raters disagree
    saturated = torch.tensor([0.9, 0.8, 0.8, 0.0]).view(1, 1, 1, 4)  # high over the whole structure
    assert compute_uncertainty_rater_correlation(follows, raters).item() == pytest.approx(1.0)
    assert compute_uncertainty_rater_correlation(saturated, raters).item() == pytest.approx(-1.0)
    # a constant map, or no rater foreground at all, has no correlation: NaN, left out of the mean
    assert torch.isnan(compute_uncertainty_rater_correlation(torch.full((1, 1, 1, 4), 0.5), raters)).all()
    assert torch.isnan(compute_uncertainty_rater_correlation(follows, masks([0, 0, 0, 0]))).all()
    metric = UncertaintyRaterCorrelation()
    metric(torch.cat([follows, torch.full((1, 1, 1, 4), 0.5)]), torch.cat([raters, raters]))
    assert metric.aggregate().item() == pytest.approx(1.0)  # the NaN image does not count
    with pytest.raises(ValueError, match="uncertainty map"):
        compute_uncertainty_rater_correlation(torch.rand(1, 2, 1, 4), raters)
