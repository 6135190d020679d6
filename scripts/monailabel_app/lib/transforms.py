"""MONAI dictionary transform turning a loaded study image into the network's input.

Written here because the served images are more varied than the bundle's prepared PNGs (RGB or
grey, 8-bit or not, 2-D or a NIfTI volume): no MONAI transform both matches channels and picks the
intensity scaling this way.

Example:
    >>> import numpy as np
    >>> t = PrepareMattingInputd(keys="image", channels=1)
    >>> d = t({"image": np.full((3, 4, 5), 255, np.uint8)})
    >>> d["image"].shape, float(d["image"].max()), d["image_scaling"]
    ((1, 4, 5), 1.0, 'range [0, 255]')
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, Mapping, Optional, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from scripts.data.transforms import stored_array

from .errors import UnsupportedStudyImageError
from .imaging import match_channels, to_unit_range

__all__ = ["PrepareMattingInputd"]


class PrepareMattingInputd(MapTransform):
    """Channel-first image (C, H, W) or (C, H, W, D) -> float32 in [0, 1] with ``channels`` channels.

    Also stores ``<key>_scaling`` (how intensities were scaled) and ``<key>_spatial_shape``.

    Args:
        keys: image key(s).
        channels: channels the network expects (``in_channels`` of ``network_def``).
        intensity_range: ``None`` (scale by the image's type) or an explicit ``[low, high]``.
        allow_missing_keys: as in MONAI.
    """

    def __init__(
        self,
        keys: KeysCollection,
        channels: int = 1,
        intensity_range: Optional[Sequence[float]] = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = int(channels)
        self.intensity_range = intensity_range

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = stored_array(d[key], str(d.get("image_path", key)))  # 16-bit PNG / TIFF: uint16, not int32
            if image.ndim not in (3, 4):
                raise UnsupportedStudyImageError(
                    f"{d.get('image_path', key)}: expected a 2-D image or a 3-D volume, got array {image.shape} "
                    "(channel first)")
            image, how = to_unit_range(image, self.intensity_range)  # by the file's type: before any cast
            image = match_channels(image, self.channels, str(d.get("image_path", key)))
            d[key] = np.ascontiguousarray(image, dtype=np.float32)
            d[f"{key}_scaling"] = how
            d[f"{key}_spatial_shape"] = list(image.shape[1:])
        return d
