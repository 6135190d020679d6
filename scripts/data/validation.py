"""Per-case validation of a matting dataset against its :class:`~scripts.data.specs.DatasetSpec`.

Every check raises :class:`~scripts.data.errors.DatasetValidationError` with the case name and the
problem. Arrays are never converted in a way that could change a value: masks of another integer or
bool dtype are accepted only when every value is 0 or 1, and then stored as uint8.

Example:
    >>> import numpy as np
    >>> from scripts.data.specs import DatasetSpec
    >>> spec = DatasetSpec("toy", (4, 4), 1, 2)
    >>> z = np.zeros((4, 4), np.uint8)
    >>> case = validate_case("c1", {"image": z, "alpha": z, "masks": [z, z]}, spec, trimap=z)
    >>> sorted(case)
    ['alpha', 'image', 'masks', 'trimap']
"""

from __future__ import annotations

import re

import numpy as np

from scripts.data.errors import DatasetValidationError
from scripts.data.specs import DatasetSpec

__all__ = ["CASE_NAME_PATTERN", "validate_case_name", "validate_case"]

#: case names become file names: letters, digits, ``.``, ``_``, ``-``; no leading dot
CASE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")


def validate_case_name(case: object) -> str:
    """Return ``case`` if it is a safe file-name stem, else raise :class:`DatasetValidationError`."""
    if not isinstance(case, str) or not CASE_NAME_PATTERN.match(case):
        raise DatasetValidationError(
            f"case {case!r}: name must be a string of letters, digits, '.', '_' or '-' (not starting with '.')"
        )
    return case


def _array(case: str, what: str, value: object) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise DatasetValidationError(f"case '{case}': {what} must be a numpy array, got {type(value).__name__}")
    return value


def _uint8(case: str, what: str, value: object, shape: tuple[int, ...]) -> np.ndarray:
    arr = _array(case, what, value)
    if arr.dtype != np.uint8:
        raise DatasetValidationError(f"case '{case}': {what} must be uint8, got {arr.dtype}")
    if arr.shape != shape:
        raise DatasetValidationError(f"case '{case}': {what} must have shape {shape}, got {arr.shape}")
    return np.ascontiguousarray(arr)


def validate_case(case: str, record: object, spec: DatasetSpec, trimap: np.ndarray | None = None) -> dict:
    """Check one case and return ``{"image", "alpha", "masks", "trimap"}`` ready to write.

    Args:
        case: the case name (used in error messages and as the file-name stem).
        record: the source value: a dict with ``image``, ``alpha`` and ``masks``.
        spec: expected spatial shape, channels and rater count.
        trimap: the case's trimap, uint8 (H, W); None is an error when ``spec.trimaps_required``.

    Returns:
        dict with uint8 arrays ``image`` ((H, W) or (H, W, 3)), ``alpha`` (H, W), ``masks`` (list of (H, W)
        with values {0, 1}) and ``trimap`` ((H, W) or None).

    Raises:
        DatasetValidationError: naming the case and the problem.
    """
    validate_case_name(case)
    if not isinstance(record, dict):
        raise DatasetValidationError(f"case '{case}': expected a dict with image/alpha/masks, got {type(record).__name__}")
    missing = [k for k in ("image", "alpha", "masks") if k not in record]
    if missing:
        raise DatasetValidationError(f"case '{case}': missing key(s) {missing}")
    hw = tuple(spec.spatial_shape)
    image_shape = hw if spec.channels == 1 else (*hw, spec.channels)
    image = _uint8(case, "image", record["image"], image_shape)
    alpha = _uint8(case, "alpha", record["alpha"], hw)

    masks_in = record["masks"]
    if not isinstance(masks_in, (list, tuple)):
        raise DatasetValidationError(f"case '{case}': masks must be a list of arrays, got {type(masks_in).__name__}")
    if len(masks_in) != spec.raters:
        raise DatasetValidationError(f"case '{case}': expected {spec.raters} raters' masks, got {len(masks_in)}")
    masks = []
    for k, m in enumerate(masks_in):
        m = _array(case, f"mask {k}", m)
        if m.dtype != np.bool_ and not np.issubdtype(m.dtype, np.integer):
            raise DatasetValidationError(f"case '{case}': mask {k} must be an integer or bool array, got {m.dtype}")
        if m.shape != hw:
            raise DatasetValidationError(f"case '{case}': mask {k} must have shape {hw}, got {m.shape}")
        if not np.isin(m, (0, 1)).all():
            bad = np.unique(m[~np.isin(m, (0, 1))])[:5].tolist()
            raise DatasetValidationError(f"case '{case}': mask {k} must be binary {{0, 1}}, found values {bad}")
        masks.append(np.ascontiguousarray(m, dtype=np.uint8))

    if trimap is None:
        if spec.trimaps_required:
            raise DatasetValidationError(f"case '{case}': trimap missing (the {spec.name} trimaps are required)")
    else:
        trimap = _uint8(case, "trimap", trimap, hw)
    return {"image": image, "alpha": alpha, "masks": masks, "trimap": trimap}
