"""Training targets from the raters alone, for datasets without an alpha matte or a trimap.

Rules (``docs/data.md``, "Targets from raters"):

- **alpha**: the raters' mean, the soft label of the QUBIQ challenge:
  ``alpha = round(255 * (number of raters marking the pixel) / K)`` (uint8, half rounded up), so a
  pixel marked by 3 of 7 raters gets ``round(109.29) = 109``;
- **trimap** (the evaluation's unknown region): :func:`scripts.data.trimaps.trimap_from_annotations`
  on that alpha, i.e. unknown (128) where the raters disagree, grown by ``dilation`` pixels (3x3
  square); 255 where every rater marked the pixel, 0 where none did.

Example:
    >>> import numpy as np
    >>> masks = [np.array([[0, 1, 1]]), np.array([[0, 0, 1]])]
    >>> alpha_from_raters(masks).tolist()
    [[0, 128, 255]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scripts.data.trimaps import trimap_from_annotations

__all__ = ["alpha_from_raters", "trimap_from_raters"]


def alpha_from_raters(masks: Sequence[np.ndarray]) -> np.ndarray:
    """The raters' mean as a uint8 alpha matte (H, W): ``floor(255 * votes / K + 0.5)``.

    Args:
        masks: K >= 1 binary masks (H, W), values {0, 1} (anything > 0 counts as marked).
    """
    if not len(masks):
        raise ValueError("alpha_from_raters: no masks")
    votes = np.sum([np.asarray(m) > 0 for m in masks], axis=0, dtype=np.int64)
    # integer arithmetic: exact, and independent of float rounding
    return ((510 * votes + len(masks)) // (2 * len(masks))).astype(np.uint8)


def trimap_from_raters(alpha: np.ndarray, masks: Sequence[np.ndarray], dilation: int = 1) -> np.ndarray:
    """The trimap (H, W) uint8 {0, 128, 255} derived from the raters' disagreement (and a soft ``alpha``)."""
    return trimap_from_annotations(alpha, masks, dilation=dilation)
