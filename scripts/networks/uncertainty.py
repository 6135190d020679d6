"""Uncertainty map of the Probabilistic U-Net samples (paper section 2.1).

``U(x) = -sum_c pbar_c(x) log pbar_c(x)`` over C = 2 classes (foreground / background), where
``pbar`` is the mean of the N sample probabilities; divided by ``log 2`` it lies in [0, 1].
Hand-written: a two-line formula that no library provides in this binary, normalised form.
"""

from __future__ import annotations

import math

import torch

__all__ = ["binary_entropy_uncertainty"]


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
