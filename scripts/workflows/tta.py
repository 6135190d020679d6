"""Flip test-time augmentation for ``MedicalMattingNet.predict``.

Hand-written because MONAI's ``TestTimeAugmentation`` draws random transforms and inverts them
per sample through the dictionary pipeline, which is far slower than four exact flips of a batch
and does not know the model's three outputs. Flips are exact in both directions, so the average is
a proper ensemble of four views of the same image:

- ``alpha``: the mean of the four un-flipped alpha mattes;
- ``sample_probs``: the prior samples of all four views (B, 4N, H, W), un-flipped;
- ``uncertainty``: the binary entropy of the mean of all those samples (same definition as the
  model's, now over 4N samples).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from scripts.networks.uncertainty import binary_entropy_uncertainty

__all__ = ["FLIP_SETS", "predict_with_flips"]

#: flip views: the spatial dims (of a (B, C, H, W) tensor) flipped in each view
FLIP_SETS: Dict[str, Tuple[Tuple[int, ...], ...]] = {
    "none": ((),),
    "h": ((), (3,)),
    "hv": ((), (3,), (2,), (2, 3)),
}


def predict_with_flips(
    network: torch.nn.Module,
    image: torch.Tensor,
    flips: str = "hv",
    num_samples: Optional[int] = None,
    output_size: Optional[Sequence[int]] = None,
) -> Dict[str, torch.Tensor]:
    """``network.predict`` averaged over flipped views of ``image``.

    Args:
        network: a model with ``predict(image, output_size=None, num_samples=None)`` (``MedicalMattingNet``).
        image: (B, C, H, W).
        flips: ``"none"`` (plain predict), ``"h"`` (identity + horizontal) or ``"hv"`` (the four flips).
        num_samples: prior samples per view (``None``: the network's default).
        output_size: grid of ``alpha`` and ``uncertainty`` (default: the input's).

    Returns:
        the same keys as ``predict``: ``alpha``, ``uncertainty`` (B, 1, H', W') and ``sample_probs``
        (B, V*N, H, W) for V views.

    Example::

        out = predict_with_flips(net.eval(), image, flips="hv")
    """
    if flips not in FLIP_SETS:
        raise ValueError(f"flips must be one of {sorted(FLIP_SETS)}, got {flips!r}")
    views = FLIP_SETS[flips]
    if len(views) == 1:
        return network.predict(image, output_size=output_size, num_samples=num_samples)
    alphas, samples, uncertainties = [], [], []
    for dims in views:
        out = network.predict(image.flip(dims) if dims else image, output_size=output_size, num_samples=num_samples)
        unflip = (lambda t: t.flip(dims)) if dims else (lambda t: t)
        alphas.append(unflip(out["alpha"]))
        samples.append(unflip(out["sample_probs"]))
        uncertainties.append(unflip(out["uncertainty"]))
    sample_probs = torch.cat(samples, dim=1)
    alpha = torch.stack(alphas).mean(0)
    if output_size is None or tuple(output_size) == tuple(image.shape[-2:]):
        uncertainty = binary_entropy_uncertainty(sample_probs)
    else:  # samples live on the input grid: average the views' uncertainty maps at the output grid
        uncertainty = torch.stack(uncertainties).mean(0)
    return {"alpha": alpha, "uncertainty": uncertainty, "sample_probs": sample_probs}
