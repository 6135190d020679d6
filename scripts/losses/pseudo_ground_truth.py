"""Pseudo ground-truth masks for the Prob. U-Net's cross-entropy loss, drawn per sample and step.

Option 1 (:func:`sample_rater_mask`): one rater's mask chosen at random per sample.
Option 2 (:func:`threshold_alpha_at_random`): the alpha matte thresholded at a random level per sample.
Hand-written (a few lines of ``torch`` sampling); both accept an optional ``torch.Generator`` so that a
seeded run draws the same masks.
"""

from __future__ import annotations

import torch

__all__ = ["PSEUDO_GROUND_TRUTH_MODES", "sample_rater_mask", "threshold_alpha_at_random", "pseudo_ground_truth"]

PSEUDO_GROUND_TRUTH_MODES = ("rater", "threshold")


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return torch.device("cpu") if generator is None else generator.device


def sample_rater_mask(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One rater's mask at random per sample (option 1): (B, K, H, W) -> (B, 1, H, W).

    The result is an exact copy of the chosen rater's mask, same dtype and device as ``masks``.

    Args:
        masks: the raters' binary masks (B, K, H, W).
        generator: optional random generator (its device is where the indices are drawn).

    Example::

        >>> masks = torch.randint(0, 2, (4, 7, 16, 16)).float()
        >>> sample_rater_mask(masks, torch.Generator().manual_seed(0)).shape
        torch.Size([4, 1, 16, 16])
    """
    if masks.ndim != 4 or masks.shape[1] < 1:
        raise ValueError(f"masks must have shape (B, K, H, W) with K >= 1 raters, got {tuple(masks.shape)}.")
    b, k = masks.shape[:2]
    index = torch.randint(k, (b,), generator=generator, device=_generator_device(generator)).to(masks.device)
    return masks[torch.arange(b, device=masks.device), index].unsqueeze(1)


def threshold_alpha_at_random(
    alpha: torch.Tensor, generator: torch.Generator | None = None, low: float = 0.1, high: float = 0.9
) -> torch.Tensor:
    """The alpha matte thresholded at a random level per sample (option 2): ``alpha >= t``, t ~ U[low, high).

    Args:
        alpha: alpha mattes (B, 1, H, W) in [0, 1].
        generator: optional random generator (its device is where the levels are drawn).
        low: lowest threshold level.
        high: highest threshold level (exclusive).

    Returns:
        binary masks (B, 1, H, W) with values {0, 1}, in the floating dtype of ``alpha``.

    Example::

        >>> alpha = torch.rand(4, 1, 16, 16)
        >>> threshold_alpha_at_random(alpha, torch.Generator().manual_seed(0)).unique()
        tensor([0., 1.])
    """
    if alpha.ndim != 4 or alpha.shape[1] != 1:
        raise ValueError(f"alpha must have shape (B, 1, H, W), got {tuple(alpha.shape)}.")
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}.")
    levels = torch.rand(alpha.shape[0], generator=generator, device=_generator_device(generator), dtype=torch.float64)
    levels = (low + (high - low) * levels).to(alpha.device)
    dtype = alpha.dtype if alpha.is_floating_point() else torch.float32
    return (alpha.to(torch.float64) >= levels.view(-1, 1, 1, 1)).to(dtype)


def pseudo_ground_truth(
    mode: str,
    masks: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    low: float = 0.1,
    high: float = 0.9,
) -> torch.Tensor:
    """Draw the pseudo ground truth by ``mode``: ``"rater"`` (option 1) or ``"threshold"`` (option 2).

    Args:
        mode: ``"rater"`` uses ``masks`` (B, K, H, W); ``"threshold"`` uses ``alpha`` (B, 1, H, W).
        masks: the raters' masks, needed for ``"rater"``.
        alpha: the alpha mattes, needed for ``"threshold"``.
        generator: optional random generator.
        low: lowest threshold level of ``"threshold"``.
        high: highest threshold level of ``"threshold"``.

    Example::

        >>> pseudo_ground_truth("threshold", alpha=torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 1, 8, 8])
    """
    if mode == "rater":
        if masks is None:
            raise ValueError("pseudo ground truth mode 'rater' needs the raters' masks.")
        return sample_rater_mask(masks, generator)
    if mode == "threshold":
        if alpha is None:
            raise ValueError("pseudo ground truth mode 'threshold' needs the alpha matte.")
        return threshold_alpha_at_random(alpha, generator, low=low, high=high)
    raise ValueError(f"unknown pseudo ground truth mode {mode!r}; expected one of {PSEUDO_GROUND_TRUTH_MODES}.")
