"""Metrics of the Probabilistic U-Net samples against the raters' masks: GED and Dice at 0.5.

Hand-written (MONAI has no generalised energy distance; its ``DiceMetric`` has no empty/empty = 1
convention for a single foreground channel without extra arguments, and the majority-vote
construction is ours). Both are MONAI ``CumulativeIterationMetric`` subclasses with one value per
image in the buffer. See ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

__all__ = [
    "binarize",
    "pairwise_iou_distance",
    "compute_generalized_energy_distance",
    "compute_sample_dice",
    "GeneralizedEnergyDistance",
    "SampleDiceMetric",
    "compute_uncertainty_rater_correlation",
    "UncertaintyRaterCorrelation",
]


def binarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Binary masks as bool: bool input as is, anything else ``x >= threshold``.

    Args:
        x: masks or probabilities, any shape.
        threshold: level at or above which a value counts as foreground.

    Example::

        >>> binarize(torch.tensor([0.2, 0.5, 0.9]))
        tensor([False,  True,  True])
    """
    if x.dtype == torch.bool:
        return x
    return x >= threshold


def _check_sets(y_pred: torch.Tensor, y: torch.Tensor) -> None:
    if y_pred.ndim != 4 or y.ndim != 4:
        raise ValueError(
            f"expected samples (B, N, H, W) and rater masks (B, K, H, W), got {tuple(y_pred.shape)} and {tuple(y.shape)}."
        )
    if y_pred.shape[0] != y.shape[0] or y_pred.shape[2:] != y.shape[2:]:
        raise ValueError(
            f"samples {tuple(y_pred.shape)} and rater masks {tuple(y.shape)} differ in batch size or spatial size."
        )


def pairwise_iou_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``d = 1 - IoU`` between every mask of ``a`` (B, N, H, W) and of ``b`` (B, M, H, W): (B, N, M).

    The IoU of two empty masks is defined as 1 (distance 0).

    Example::

        >>> a = torch.tensor([[[[1, 0]], [[0, 0]]]], dtype=torch.bool)  # (1, 2, 1, 2)
        >>> pairwise_iou_distance(a, a)
        tensor([[[0., 1.],
                 [1., 0.]]], dtype=torch.float64)
    """
    fa = a.flatten(2).to(torch.float64)
    fb = b.flatten(2).to(torch.float64)
    inter = fa @ fb.transpose(1, 2)
    union = fa.sum(-1)[:, :, None] + fb.sum(-1)[:, None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(inter))
    return 1.0 - iou


def compute_generalized_energy_distance(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared generalised energy distance of Kohl et al. (NeurIPS 2018), one value per image (B,).

    ``D^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`` with ``d = 1 - IoU``; each expectation is the
    mean over all ordered pairs, the pairs of a mask with itself included (d = 0), as in the
    authors' evaluation code. Identical sets give 0.

    Args:
        y_pred: N samples per image (B, N, H, W), binary or probabilities (thresholded at 0.5).
        y: K rater masks per image (B, K, H, W), binary (thresholded at 0.5).

    Example::

        >>> s = torch.tensor([[[[1, 0]]]])  # one sample, two pixels
        >>> r = torch.tensor([[[[0, 1]]]])  # one rater, disjoint from it
        >>> compute_generalized_energy_distance(s, r)  # 2 * 1 - 0 - 0
        tensor([2.], dtype=torch.float64)
    """
    _check_sets(y_pred, y)
    s, r = binarize(y_pred), binarize(y)
    d_sy = pairwise_iou_distance(s, r).mean(dim=(1, 2))
    d_ss = pairwise_iou_distance(s, s).mean(dim=(1, 2))
    d_yy = pairwise_iou_distance(r, r).mean(dim=(1, 2))
    return 2.0 * d_sy - d_ss - d_yy


def compute_sample_dice(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dice at 0.5 between the mean sample and the raters' majority vote, one value per image (B,).

    Prediction: ``mean over N of y_pred >= 0.5``; reference: ``mean over K of y >= 0.5`` (a tie
    counts as foreground). Dice = ``2 |A & B| / (|A| + |B|)``, 1 when both are empty.

    Args:
        y_pred: sample probabilities or binary samples (B, N, H, W).
        y: rater masks (B, K, H, W), values {0, 1}.

    Example::

        >>> compute_sample_dice(torch.tensor([[[[0.9, 0.8, 0.1]]]]), torch.tensor([[[[1, 0, 0]]]]))
        tensor([0.6667], dtype=torch.float64)
    """
    _check_sets(y_pred, y)
    pred = y_pred.to(torch.float64).mean(dim=1) >= 0.5
    ref = y.to(torch.float64).mean(dim=1) >= 0.5
    inter = (pred & ref).flatten(1).sum(-1).to(torch.float64)
    total = (pred.flatten(1).sum(-1) + ref.flatten(1).sum(-1)).to(torch.float64)
    return torch.where(total > 0, 2.0 * inter / total.clamp_min(1.0), torch.ones_like(total))


def compute_uncertainty_rater_correlation(uncertainty: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the uncertainty map with the raters' disagreement, one value per image (B,).

    Disagreement is the per-pixel variance of the K binary rater masks, ``p (1 - p)`` with ``p`` the
    fraction of raters marking the pixel. The correlation is taken inside the structure: the pixels
    that at least one rater marks (outside, every rater agrees on background and the variance is
    0, so those pixels would reward any map that is merely dark outside the structure). An image
    whose region is empty or where either map is constant gives NaN (left out of the mean).

    Args:
        uncertainty: (B, 1, H, W) uncertainty map.
        y: (B, K, H, W) rater masks, values {0, 1}.

    Example::

        >>> r = torch.tensor([[[[1., 1., 1.]], [[1., 1., 0.]], [[1., 0., 0.]]]])  # (1, 3, 1, 3)
        >>> compute_uncertainty_rater_correlation(torch.tensor([[[[0.0, 0.9, 0.9]]]]), r)
        tensor([1.0000], dtype=torch.float64)
    """
    if uncertainty.ndim != 4 or uncertainty.shape[1] != 1 or y.ndim != 4:
        raise ValueError(
            f"expected an uncertainty map (B, 1, H, W) and rater masks (B, K, H, W), "
            f"got {tuple(uncertainty.shape)} and {tuple(y.shape)}."
        )
    if uncertainty.shape[0] != y.shape[0] or uncertainty.shape[2:] != y.shape[2:]:
        raise ValueError(
            f"uncertainty {tuple(uncertainty.shape)} and rater masks {tuple(y.shape)} differ in batch or spatial size."
        )
    p = binarize(y).to(torch.float64).mean(dim=1).flatten(1)  # (B, HW)
    u = uncertainty.to(torch.float64).flatten(1)
    region = (p > 0).to(torch.float64)
    count = region.sum(-1)
    var = p * (1.0 - p)

    def centred(x: torch.Tensor) -> torch.Tensor:
        return (x - (x * region).sum(-1, keepdim=True) / count.clamp_min(1.0)[:, None]) * region

    cu, cv = centred(u), centred(var)
    den = torch.sqrt((cu * cu).sum(-1) * (cv * cv).sum(-1))
    nan = torch.full_like(den, float("nan"))
    return torch.where((count > 1) & (den > 0), (cu * cv).sum(-1) / den.clamp_min(1e-300), nan)


class _PerImageMetric(CumulativeIterationMetric):
    """Shared buffer/aggregate logic: one value per image, reduced by MONAI's ``do_metric_reduction``."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False) -> None:
        super().__init__()
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _value(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError(f"{type(self).__name__} needs the raters' masks y (B, K, H, W).")
        return self._value(y_pred, y).unsqueeze(1)

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the per-image values in the buffer (``reduction`` overrides the constructor's)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"{type(self).__name__}: nothing to aggregate, call it on some data first.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class GeneralizedEnergyDistance(_PerImageMetric):
    """Squared generalised energy distance (d = 1 - IoU) between samples and raters, per image.

    ``metric(y_pred, y)`` with ``y_pred`` (B, N, H, W) samples (binary, or probabilities thresholded
    at 0.5) and ``y`` (B, K, H, W) rater masks; :meth:`aggregate` gives the mean over images.

    Args:
        reduction: MONAI reduction of the per-image values (default ``"mean"``).
        get_not_nans: whether :meth:`aggregate` also returns the count of non-NaN values.

    Example::

        >>> ged = GeneralizedEnergyDistance()
        >>> _ = ged(torch.rand(2, 4, 8, 8), (torch.rand(2, 3, 8, 8) > 0.5).float())
        >>> ged.aggregate()
    """

    def _value(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return compute_generalized_energy_distance(y_pred, y)


class SampleDiceMetric(_PerImageMetric):
    """Dice at 0.5 between the thresholded mean of the samples and the raters' majority vote, per image.

    ``metric(y_pred, y)`` with ``y_pred`` (B, N, H, W) sample probabilities and ``y`` (B, K, H, W)
    rater masks; empty/empty counts as 1.

    Args:
        reduction: MONAI reduction of the per-image values (default ``"mean"``).
        get_not_nans: whether :meth:`aggregate` also returns the count of non-NaN values.

    Example::

        >>> dice = SampleDiceMetric()
        >>> _ = dice(torch.rand(2, 4, 8, 8), (torch.rand(2, 3, 8, 8) > 0.5).float())
        >>> dice.aggregate()
    """

    def _value(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return compute_sample_dice(y_pred, y)


class UncertaintyRaterCorrelation(_PerImageMetric):
    """Pearson correlation of the uncertainty map with the raters' per-pixel variance, per image.

    ``metric(y_pred, y)`` with ``y_pred`` (B, 1, H, W) the uncertainty map and ``y`` (B, K, H, W)
    the rater masks (:func:`compute_uncertainty_rater_correlation`); higher is better, 1 when the
    map is an affine function of the disagreement inside the structure.

    Example::

        >>> corr = UncertaintyRaterCorrelation()
        >>> _ = corr(torch.rand(2, 1, 8, 8), (torch.rand(2, 3, 8, 8) > 0.5).float())
        >>> corr.aggregate()
    """

    def _value(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return compute_uncertainty_rater_correlation(y_pred, y)
