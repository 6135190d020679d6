"""Flip test-time augmentation inside ``MedicalMattingNet.predict`` (constructor argument ``test_time_flips``).

Hand-written because MONAI's ``TestTimeAugmentation`` draws random transforms and inverts them
per sample through the dictionary pipeline, which is far slower than four exact flips of a batch
and does not know the model's three outputs. Flips are exact in both directions, so the average is
a proper ensemble of four views of the same image:

- ``alpha``: the mean of the four un-flipped alpha mattes;
- ``sample_probs``: the prior samples of all four views (B, 4N, H, W), un-flipped;
- ``uncertainty``: the model's uncertainty map (``scripts.networks.uncertainty``) of all those
  samples, now over 4N samples.

:func:`flip_views`, :func:`unflip_view` and :func:`merge_views` are TorchScript functions: the
scripted / exported model (``torch.jit.script(MedicalMattingNet)``) applies the same flips.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from scripts.networks.uncertainty import uncertainty_map

__all__ = ["FLIP_SETS", "flip_views", "merge_uncertainty", "merge_views", "unflip_view"]


def flip_views(flips: str) -> List[List[int]]:
    """The spatial dims (of a (B, C, H, W) tensor) flipped in each view of the option ``flips``."""
    none: List[int] = []
    if flips == "none":
        return [none]
    if flips == "h":
        return [none, [3]]
    if flips == "hv":
        return [none, [3], [2], [2, 3]]
    raise ValueError(f"flips must be one of ['h', 'hv', 'none'], got '{flips}'")


#: flip views by option name: the spatial dims flipped in each view (the table of :func:`flip_views`)
FLIP_SETS: Dict[str, Tuple[Tuple[int, ...], ...]] = {
    name: tuple(tuple(dims) for dims in flip_views(name)) for name in ("none", "h", "hv")
}


def unflip_view(out: Dict[str, torch.Tensor], dims: List[int]) -> Dict[str, torch.Tensor]:
    """One view's ``alpha``, ``uncertainty`` and ``sample_probs`` flipped back along ``dims``."""
    if len(dims) == 0:
        return out
    return {key: out[key].flip(dims) for key in ("alpha", "uncertainty", "sample_probs")}


def merge_views(
    views: List[Dict[str, torch.Tensor]],
    image: torch.Tensor,
    output_size: Optional[List[int]] = None,
    uncertainty_kind: str = "entropy",
) -> Dict[str, torch.Tensor]:
    """Average un-flipped views (:func:`unflip_view`) of ``image`` into one prediction (the module doc);
    the uncertainty is the map ``uncertainty_kind`` (``scripts.networks.uncertainty``) of all samples."""
    sample_probs = torch.cat([v["sample_probs"] for v in views], dim=1)
    alpha = torch.stack([v["alpha"] for v in views]).mean(0)
    uncertainty = merge_uncertainty([v["uncertainty"] for v in views], sample_probs, image, output_size, uncertainty_kind)
    return {"alpha": alpha, "uncertainty": uncertainty, "sample_probs": sample_probs}


def merge_uncertainty(
    uncertainties: List[torch.Tensor],
    sample_probs: torch.Tensor,
    image: torch.Tensor,
    output_size: Optional[List[int]] = None,
    uncertainty_kind: str = "entropy",
) -> torch.Tensor:
    """The uncertainty of merged views: the map ``uncertainty_kind`` of all samples (B, V*N, H, W)
    when one view or the output is on the input grid, else the mean of the views' maps (B, 1, H', W')
    (the samples live on the input grid)."""
    same_grid = output_size is None
    if output_size is not None:
        same_grid = [int(output_size[0]), int(output_size[1])] == [image.shape[-2], image.shape[-1]]
    if same_grid or len(uncertainties) == 1:
        return uncertainty_map(sample_probs, uncertainty_kind)
    return torch.stack(uncertainties).mean(0)
