"""Trimaps derived from the annotations, for datasets published without trimaps (LIDC, ISIC) and phantoms.

Rule: the unknown region (value 128) is every pixel where the raters disagree or the alpha matte is
strictly between 0 and 255, grown by ``dilation`` pixels (3x3 square structuring element); outside
it the trimap is 255 where alpha is 255 and 0 where alpha is 0.

Example:
    >>> import numpy as np
    >>> alpha = np.zeros((5, 5), np.uint8); alpha[2, 2] = 100
    >>> t = trimap_from_annotations(alpha, [alpha > 0, alpha > 0], dilation=0)
    >>> int(t[2, 2]), int(t[0, 0])
    (128, 0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["UNKNOWN", "trimap_from_annotations"]

#: trimap value of the unknown region (the only value that counts as unknown)
UNKNOWN = 128


def trimap_from_annotations(alpha: np.ndarray, masks: Sequence[np.ndarray], dilation: int = 1) -> np.ndarray:
    """Derive a uint8 trimap (0 / 128 / 255) from an alpha matte and the raters' masks.

    Args:
        alpha: uint8 (H, W) alpha matte, 0..255.
        masks: raters' binary masks, each (H, W).
        dilation: pixels by which the unknown region is grown (0 for none).

    Returns:
        uint8 (H, W) trimap.
    """
    alpha = np.asarray(alpha)
    unknown = (alpha > 0) & (alpha < 255)
    if len(masks):
        stack = np.stack([np.asarray(m) > 0 for m in masks])
        unknown |= stack.any(0) & ~stack.all(0)
    if dilation > 0 and unknown.any():
        unknown = ndimage.binary_dilation(unknown, structure=np.ones((3, 3), bool), iterations=dilation)
    trimap = np.where(alpha == 255, 255, 0).astype(np.uint8)
    trimap[unknown] = UNKNOWN
    return trimap
