"""Flip test-time augmentation inside ``MedicalMattingNet.predict`` (constructor argument ``test_time_flips``).

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

from typing import Callable, Dict, Optional, Sequence, Tuple

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
    predict_view: Callable[..., Dict[str, torch.Tensor]],
    image: torch.Tensor,
    flips: str = "hv",
    output_size: Optional[Sequence[int]] = None,
    num_samples: Optional[int] = None,
) -> Dict[str, torch.Tensor]:
    """A single-view prediction averaged over flipped views of ``image``.

    Args:
        predict_view: ``predict_view(image, output_size, num_samples)`` returning ``alpha``,
            ``uncertainty`` and ``sample_probs`` of one view (``MedicalMattingNet._predict_view``).
        image: (B, C, H, W).
        flips: ``"none"`` (one view), ``"h"`` (identity + horizontal) or ``"hv"`` (the four flips).
        output_size: grid of ``alpha`` and ``uncertainty`` (default: the input's).
        num_samples: prior samples per view (``None``: the network's default).

    Returns:
        the same keys as one view: ``alpha``, ``uncertainty`` (B, 1, H', W') and ``sample_probs``
        (B, V*N, H, W) for V views.

    Example::

        out = net.eval().predict(image, flips="hv")   # MedicalMattingNet.predict calls this
    """
    if flips not in FLIP_SETS:
        raise ValueError(f"flips must be one of {sorted(FLIP_SETS)}, got {flips!r}")
    views = FLIP_SETS[flips]
    if len(views) == 1:
        return predict_view(image, output_size, num_samples)
    alphas, samples, uncertainties = [], [], []
    for dims in views:
        out = predict_view(image.flip(dims) if dims else image, output_size, num_samples)
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
