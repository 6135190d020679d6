"""The QUBIQ challenge's score and the per-case region sizes, as MONAI cumulative metrics.

**QUBIQ score** (:func:`compute_qubiq_score`): the Dice coefficient of the predicted alpha matte
against the raters' mean (the challenge's soft label), each binarised at the same threshold,
averaged over the thresholds 0.1, 0.2, ..., 0.9. A pixel is foreground at threshold t when its
value is strictly above t. A threshold at which both binarised maps are empty scores 1 (the
prediction agrees with the raters that nothing is there). Computed over the whole image (the
challenge has no trimap); higher is better, in [0, 1]. The prediction is first quantised to
8 bits (:func:`scripts.metrics.matting.quantize_alpha`), like every matting metric of the bundle,
so the score of a saved 8-bit matte is the score of the live one. Hand-written: the score is a
rule of the challenge; MONAI's ``DiceMetric`` has no threshold sweep over a soft reference.

**Region sizes** (:class:`RegionSize`): the number of pixels of the case's foreground (raters'
mean > 0: some rater marked the pixel) or of the trimap's unknown region. They are not errors;
they sit beside the errors in the per-case tables because SAD (a sum over the unknown region) and
MSE / Grad of a small region are small numbers whatever the prediction does (``docs/metrics.md``).

Both take the evaluator's output as ``IgniteMetricHandler`` passes it: ``(pred, masks)`` with
``pred`` (B, 1, H, W) alpha in [0, 1] and ``masks`` (B, K, H, W) the raters' {0, 1} masks, or, for
the unknown region's size, ``(pred, label)`` with ``label`` (B, 2, H, W) = [alpha, unknown].

Example::

    >>> pred = torch.zeros(1, 1, 4, 4); masks = torch.zeros(1, 3, 4, 4)
    >>> compute_qubiq_score(pred, masks)  # nothing predicted, nothing marked: 1 at every threshold
    tensor([1.], dtype=torch.float64)
"""

from __future__ import annotations

from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

from .matting import quantize_alpha

__all__ = ["QUBIQ_THRESHOLDS", "REGION_SIZES", "compute_qubiq_score", "compute_region_size", "QubiqScore",
           "RegionSize"]

#: the challenge's thresholds 0.1 .. 0.9
QUBIQ_THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))
#: regions whose pixel count :class:`RegionSize` reports
REGION_SIZES = ("foreground", "unknown")


def _check(y_pred: torch.Tensor, y: torch.Tensor, channels: str) -> None:
    if y_pred.ndim != 4 or y_pred.shape[1] != 1:
        raise ValueError(f"y_pred must have shape (B, 1, H, W), got {tuple(y_pred.shape)}.")
    if y.ndim != 4 or y.shape[0] != y_pred.shape[0] or y.shape[2:] != y_pred.shape[2:]:
        raise ValueError(f"y must have shape (B, {channels}, H, W) matching y_pred {tuple(y_pred.shape)}, "
                         f"got {tuple(y.shape)}.")


def compute_qubiq_score(y_pred: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """QUBIQ score per image, shape (B,), float64 (see the module docstring).

    Args:
        y_pred: predicted alpha (B, 1, H, W) in [0, 1].
        masks: the raters' masks (B, K, H, W), {0, 1}.
    """
    _check(y_pred, masks, "K")
    pred = quantize_alpha(y_pred)
    target = (masks.detach().to(torch.float64) > 0.5).mean(dim=1, keepdim=True, dtype=torch.float64)
    scores = []
    for t in QUBIQ_THRESHOLDS:
        p, g = pred > t, target > t
        inter = (p & g).sum(dim=(1, 2, 3)).to(torch.float64)
        total = (p.sum(dim=(1, 2, 3)) + g.sum(dim=(1, 2, 3))).to(torch.float64)
        scores.append(torch.where(total > 0, 2.0 * inter / total.clamp_min(1.0), torch.ones_like(total)))
    return torch.stack(scores, dim=1).mean(dim=1)


def compute_region_size(y: torch.Tensor, region: str) -> torch.Tensor:
    """Pixels per image, shape (B,), float64: ``foreground`` of masks (B, K, H, W) (any rater), ``unknown`` of a
    label (B, 2, H, W) = [alpha, unknown] (channel 1 > 0.5)."""
    if region == "foreground":
        return (y.detach() > 0.5).any(dim=1).sum(dim=(1, 2)).to(torch.float64)
    if region == "unknown":
        if y.shape[1] != 2:
            raise ValueError(f"the unknown region's size needs y = [alpha, unknown] (B, 2, H, W), got {tuple(y.shape)}.")
        return (y[:, 1].detach() > 0.5).sum(dim=(1, 2)).to(torch.float64)
    raise ValueError(f"unknown region {region!r}; expected one of {REGION_SIZES}.")


class _PerImageMetric(CumulativeIterationMetric):
    """One value per image into the buffer (B, 1); lists of channel-first tensors are stacked first."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False) -> None:
        super().__init__()
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_list(self, y_pred: Any, y: Any = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError(f"{type(self).__name__} needs y.")
        return torch.cat([self._compute_tensor(p.unsqueeze(0), t.unsqueeze(0)) for p, t in zip(y_pred, y)], dim=0)

    def aggregate(self, reduction: MetricReduction | str | None = None):
        """Reduce the per-image values in the buffer (``reduction`` overrides the constructor's)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"{type(self).__name__}: nothing to aggregate, call it on some data first.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class QubiqScore(_PerImageMetric):
    """:func:`compute_qubiq_score` as a MONAI cumulative metric: ``metric(pred, masks)``, one value per image."""

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("QubiqScore needs the raters' masks y.")
        return compute_qubiq_score(y_pred, y).unsqueeze(1)


class RegionSize(_PerImageMetric):
    """:func:`compute_region_size` as a MONAI cumulative metric (``y_pred`` only gives the batch).

    Args:
        region: ``foreground`` (``metric(pred, masks)``) or ``unknown`` (``metric(pred, label)``).
    """

    def __init__(self, region: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if region not in REGION_SIZES:
            raise ValueError(f"unknown region {region!r}; expected one of {REGION_SIZES}.")
        self.region = region

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("RegionSize needs y (the masks or the label).")
        _check(y_pred, y, "K" if self.region == "foreground" else "2")
        return compute_region_size(y, self.region).unsqueeze(1)
