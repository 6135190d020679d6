"""Transforms for the bundle as MONAI Label's generic bundle task serves it (``configs/inference.yaml``'s
``pre_transforms`` / ``post_transforms``).

MONAI Label's ``BundleInferTask`` (what its ``monaibundle`` sample app uses for model-zoo bundles)
runs its own loop: it instantiates ``network_def``, loads ``models/model.pt`` into it, applies the
config's pre-transforms to one image, calls ``inferer(image, network)``, applies the post-transforms
and writes ``pred`` to a file itself. ``configs/inference.yaml`` gives it the bundle in that form
(its image pipeline as a list, its inferer, no dataset, evaluator or file writer); this module holds
the two transforms that form needs and no library provides:

- :class:`LabelGeometryd`: records the array order and size MONAI Label writes ``pred`` with
  (its writer and its ``Restored`` step work in MONAI's (x, y) order; the bundle reads raster images
  as (row, column), as in training);
- :class:`MattingLabeld`: turns the inferer's dict (``alpha``, ``uncertainty``) into the one map
  MONAI Label writes (``pred``), 8-bit, chosen by the request's ``map_type``.

The request's options are read from the data dict (``BasicInferTask`` copies the request into it),
never through the config's ``displayable_configs``: ``BundleInferTask`` writes those request values
into the bundle config and parses it again, so a value such as ``"$..."`` or ``"%file#key"`` would be
read as config syntax.

The module does not import ``monailabel`` (whose task module needs scikit-image, shapely and
torchvision): the batch workflow imports it too.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import MapTransform

__all__ = ["MAP_TYPES", "ROWS_FIRST_KEY", "LabelGeometryd", "MattingLabeld"]

#: what the returned label holds: the alpha matte or the uncertainty map as ``round(map * 255)``,
#: or the matte thresholded at ``mask_threshold`` (label 1 = foreground)
MAP_TYPES = ("alpha", "uncertainty", "mask")


#: ``meta`` key set by :class:`LabelGeometryd`: the image array is (row, column), not MONAI's (x, y)
ROWS_FIRST_KEY = "rows_first"


class LabelGeometryd(MapTransform):
    """Record, in the meta data of each (C, H, W) image, the geometry MONAI Label writes ``pred`` with.

    MONAI Label works in MONAI's (x, y) array order: its writer transposes ``pred`` before ITK
    writes it, and its ``Restored`` step resizes ``pred`` to the last dimensions of the input's
    ``spatial_shape``. The bundle reads raster images in (row, column) order
    (``PILReader(reverse_indexing=False)``, as in training), and ``EnsureImage2Dd`` drops the trailing
    1 of a 2-D NIfTI, so the reader's values do not fit. This step sets ``meta["spatial_shape"]`` to
    the (x, y) size of the map that will be written and ``meta[ROWS_FIRST_KEY]`` to whether the array
    is (row, column), i.e. was read by ``PILReader`` (decided by ``PILReader.verify_suffix``, the check
    ``LoadImaged`` applies to the config's reader list); :class:`MattingLabeld` transposes such maps.

    Raises:
        ValueError: the value under a key is not a (C, H, W) ``MetaTensor`` (one line naming the key).
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if not hasattr(image, "meta") or image.ndim != 3:
                raise ValueError(f"{key!r}: expected a (C, H, W) MetaTensor after loading, got {type(image).__name__} "
                                 f"of shape {tuple(getattr(image, 'shape', ()))}")
            source = str(image.meta.get("filename_or_obj", ""))
            rows_first = bool(source) and PILReader().verify_suffix(source)
            shape = tuple(int(s) for s in image.shape[1:])
            image.meta[ROWS_FIRST_KEY] = rows_first
            image.meta["spatial_shape"] = np.asarray(shape[::-1] if rows_first else shape)
        return d


class MattingLabeld(MapTransform):
    """Replace the inferer's dict under ``keys`` by one (H, W) ``uint8`` map, ready for MONAI Label's writer.

    ``BundleInferTask`` stores the de-collated output of ``MattingInferer`` (``{"alpha": (1, H, W),
    "uncertainty": (1, H, W), ...}``) under ``pred``; its writer saves ``pred`` in the input's file
    format, which for PNG/JPEG holds integers only, so every map type is 8-bit. The map has no
    channel dimension: ``Restored`` removes the channel of 4-D predictions only, and a (1, H, W)
    array would be written as a 3-D image (with (H, W), ``Restored`` compares the last dimension with
    the input's and leaves the map as it is). The mean uncertainty goes into the result JSON
    (``result_key``) whatever the map type, so a client always learns how sure the model is.

    Args:
        keys: the prediction key (``pred``).
        map_type: one of :data:`MAP_TYPES` when the request gives none; text is accepted (``"Alpha"``).
        mask_threshold: alpha at or above it is foreground for ``map_type="mask"``, in (0, 1), when
            the request gives none.
        ref_image: the image key; a map of an image marked (row, column) by :class:`LabelGeometryd` is
            transposed to MONAI's (x, y) order, which MONAI Label's writer expects.
        result_key: the key of MONAI Label's result JSON (``BasicInferTask.output_json_key``).
        options: data keys holding the request's ``map_type`` and ``mask_threshold``, in that order.

    Raises:
        ValueError: when called, for an unknown ``map_type``, a threshold outside (0, 1), or an output
            that is not the inferer's dict (one line naming what was found).
    """

    def __init__(
        self,
        keys: KeysCollection,
        map_type: str = "alpha",
        mask_threshold: float = 0.5,
        ref_image: str = "image",
        result_key: str = "result",
        options: Sequence[str] = ("map_type", "mask_threshold"),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.map_type = map_type
        self.mask_threshold = mask_threshold
        self.ref_image = ref_image
        self.result_key = result_key
        self.map_type_key, self.threshold_key = options

    def _checked_options(self, data: Mapping[Hashable, Any]) -> tuple:
        """``(map_type, mask_threshold)`` of the request (or the defaults), normalised, or a ``ValueError``."""
        map_type_given = data.get(self.map_type_key, self.map_type)
        threshold_given = data.get(self.threshold_key, self.mask_threshold)
        map_type = str(map_type_given).strip().lower()
        if map_type not in MAP_TYPES:
            raise ValueError(f"map_type {map_type_given!r} is not one of {list(MAP_TYPES)}")
        try:
            threshold = float(threshold_given)
        except (TypeError, ValueError):
            raise ValueError(f"mask_threshold {threshold_given!r} is not a number in (0, 1)") from None
        if not 0.0 < threshold < 1.0:  # also refuses NaN
            raise ValueError(f"mask_threshold {threshold_given!r} is not in (0, 1)")
        return map_type, threshold

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        map_type, threshold = self._checked_options(data)
        d = dict(data)
        for key in self.key_iterator(d):
            out = d[key]
            if not isinstance(out, Mapping) or "alpha" not in out or "uncertainty" not in out:
                raise ValueError(
                    f"{key!r} holds {type(out).__name__}, not the inferer's dict with 'alpha' and 'uncertainty' "
                    "(configs/inference.yaml's inferer must be MattingInferer)")
            alpha, uncertainty = _as_tensor(out["alpha"]), _as_tensor(out["uncertainty"])
            if map_type == "mask":
                label = (alpha >= threshold).to(torch.uint8)
            else:
                chosen = alpha if map_type == "alpha" else uncertainty
                label = torch.round(chosen.float().clamp(0.0, 1.0) * 255.0).to(torch.uint8)
            meta = getattr(d.get(self.ref_image), "meta", {})
            d[key] = label[0].T if meta.get(ROWS_FIRST_KEY, False) else label[0]
            result = dict(d.get(self.result_key) or {})
            result.update({"map_type": map_type, "mean_uncertainty": float(uncertainty.float().mean())})
            if map_type == "mask":
                result["mask_threshold"] = threshold
            d[self.result_key] = result
        return d


def _as_tensor(x: Any) -> torch.Tensor:
    """A plain tensor (MetaTensor metadata dropped: ``Restored`` takes the geometry from the input image)."""
    x = torch.as_tensor(x)
    return x.as_tensor() if hasattr(x, "as_tensor") else x
