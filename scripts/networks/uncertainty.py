"""Uncertainty maps of the Probabilistic U-Net samples.

- ``"entropy"`` (paper section 2.1): ``U(x) = -sum_c pbar_c(x) log pbar_c(x)`` over C = 2 classes
  (foreground / background), where ``pbar`` is the mean of the N sample probabilities; divided by
  ``log 2`` it lies in [0, 1]. High wherever the mean probability is near 0.5, also where the samples
  agree with each other on an uncertain 0.5.
- ``"sample_std"``: twice the standard deviation of the N sample probabilities at each pixel (in
  [0, 1]; 1 when half the samples say 0 and half say 1): high only where the samples *disagree*,
  which is how the Prob. U-Net represents rater disagreement. On Brain-growth it follows the raters'
  per-pixel variance far better than the entropy (docs/results/uncertainty.md).

Hand-written: two-line formulas that no library provides in this normalised form.
"""

from __future__ import annotations

import math

import torch

__all__ = ["UNCERTAINTY_MAPS", "binary_entropy_uncertainty", "sample_std_uncertainty", "uncertainty_map"]

#: the uncertainty maps a network can be built with (``MedicalMattingNet(uncertainty=...)``)
UNCERTAINTY_MAPS = ("entropy", "sample_std")


def _tiny(dtype: torch.dtype) -> float:
    """``torch.finfo(dtype).tiny`` (the smallest normal number) in a form TorchScript compiles."""
    if dtype == torch.float16:
        return 2.0**-14
    if dtype == torch.float64:
        return 2.0**-1022
    return 2.0**-126  # float32 and bfloat16


def _xlogx(p: torch.Tensor) -> torch.Tensor:
    """``p * log(p)`` with the limit value 0 at ``p = 0`` and finite gradients everywhere."""
    tiny = _tiny(p.dtype)
    return torch.where(p > 0, p * torch.log(p.clamp_min(tiny)), torch.zeros_like(p))


def binary_entropy_uncertainty(sample_probs: torch.Tensor, dim: int = 1, keepdim: bool = True) -> torch.Tensor:
    """Normalised binary entropy of the mean foreground probability of N samples.

    Args:
        sample_probs: foreground probabilities in [0, 1] of N samples, e.g. (B, N, H, W).
        dim: the sample dimension to average over.
        keepdim: keep the averaged dimension with size 1 (gives (B, 1, H, W) for (B, N, H, W)).

    Returns:
        Entropy / log 2 in [0, 1]: exactly 0 where every sample says 0 or every sample says 1,
        1 where the mean probability is 0.5 (e.g. samples split evenly between 0 and 1).

    Example::

        probs = torch.sigmoid(sample_logits)            # (B, N, H, W)
        u = binary_entropy_uncertainty(probs)           # (B, 1, H, W)
    """
    p = sample_probs.mean(dim=dim, keepdim=keepdim).clamp(0.0, 1.0)
    entropy = -(_xlogx(p) + _xlogx(1.0 - p)) / math.log(2.0)
    return entropy.clamp(0.0, 1.0)


def sample_std_uncertainty(sample_probs: torch.Tensor, dim: int = 1, keepdim: bool = True) -> torch.Tensor:
    """Twice the (population) standard deviation of N sample probabilities, in [0, 1].

    Args:
        sample_probs: foreground probabilities in [0, 1] of N samples, e.g. (B, N, H, W).
        dim: the sample dimension.
        keepdim: keep the reduced dimension with size 1.

    Returns:
        0 where all samples give the same probability (whatever it is), 1 where half the samples
        say 0 and half say 1.

    Example::

        >>> sample_std_uncertainty(torch.tensor([[[[0.0]], [[1.0]]]])).item()
        1.0
    """
    std = sample_probs.std(dim=dim, keepdim=keepdim, unbiased=False)
    return (2.0 * std).clamp(0.0, 1.0)


def uncertainty_map(sample_probs: torch.Tensor, kind: str = "entropy") -> torch.Tensor:
    """The uncertainty map ``kind`` (:data:`UNCERTAINTY_MAPS`) of samples (B, N, H, W) -> (B, 1, H, W)."""
    if kind == "entropy":
        return binary_entropy_uncertainty(sample_probs)
    if kind == "sample_std":
        return sample_std_uncertainty(sample_probs)
    raise ValueError(f"uncertainty must be one of ['entropy', 'sample_std'], got '{kind}'")
