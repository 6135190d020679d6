"""Study images in and result maps out, with the input's geometry.

Formats served: 2-D raster images (PNG, JPEG, TIFF, BMP; grey or RGB) read with MONAI's
``PILReader(reverse_indexing=False)`` so arrays keep the file's (row, column) order, as the
bundle's data contract requires; and NIfTI (``.nii``, ``.nii.gz``; 2-D, or 3-D handled slice by
slice along the last axis) read with MONAI's ``NibabelReader`` in the file's voxel order.

Results are written in the input's format with the input's geometry:

- raster input -> 8-bit grey PNG of the same (H, W): ``round(value * 255)``;
- NIfTI input -> ``.nii.gz`` of the same shape with the input's affine and header (float32 values
  in [0, 1], or uint8 {0, 1} for the ``mask`` output).

Intensities: values inside the config's ``intensity_range`` ([0, 255] for this bundle, i.e. the
training scaling ``image / 255``) are mapped linearly to [0, 1]; an image with values outside it
(e.g. CT in Hounsfield units) is min-max scaled instead, and the answer says so.

Example:
    >>> import numpy as np
    >>> unit, how = to_unit_range(np.array([0.0, 51.0, 255.0]), (0, 255))
    >>> unit.tolist(), how
    ([0.0, 0.2, 1.0], 'range [0, 255]')
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence, Tuple

import numpy as np

from .errors import UnsupportedStudyImageError

__all__ = [
    "RASTER_SUFFIXES",
    "NIFTI_SUFFIXES",
    "image_format",
    "image_reader",
    "to_unit_range",
    "match_channels",
    "write_result",
]

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def image_format(path: str) -> str:
    """``"raster"`` or ``"nifti"`` from the file name; :class:`UnsupportedStudyImageError` otherwise."""
    name = os.path.basename(str(path)).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    raise UnsupportedStudyImageError(
        f"{path}: unsupported image format; the medical_matting app reads {', '.join(RASTER_SUFFIXES)} "
        f"(2-D) and {', '.join(NIFTI_SUFFIXES)}")


def image_reader(path: str):
    """The MONAI image reader for ``path`` (see the module docstring)."""
    from monai.data import NibabelReader, PILReader

    if image_format(path) == "nifti":
        return NibabelReader()
    return PILReader(reverse_indexing=False)


def to_unit_range(array: np.ndarray, intensity_range: Optional[Sequence[float]] = (0, 255)) -> Tuple[np.ndarray, str]:
    """Scale intensities to [0, 1] (see the module docstring); returns the array and how it was done."""
    array = np.asarray(array, dtype=np.float32)
    if array.size == 0:
        raise UnsupportedStudyImageError("empty image")
    lo, hi = float(array.min()), float(array.max())
    if intensity_range is not None:
        a, b = float(intensity_range[0]), float(intensity_range[1])
        if b <= a:
            raise ValueError(f"intensity_range must be increasing, got {list(intensity_range)}")
        if a <= lo and hi <= b:
            return (array - a) / (b - a), f"range [{a:g}, {b:g}]"
    if hi > lo:
        return (array - lo) / (hi - lo), f"min-max [{lo:g}, {hi:g}]"
    return np.zeros_like(array), f"constant image ({lo:g})"


def match_channels(image: np.ndarray, channels: int, name: str = "image") -> np.ndarray:
    """Give a channel-first image (C, ...) the network's channel count.

    Grey -> RGB repeats the channel; RGB(A) -> grey uses the ITU-R 601 luma weights (as PIL's "L").

    Raises:
        UnsupportedStudyImageError: any other channel combination.
    """
    c = image.shape[0]
    if c == channels:
        return image
    if channels == 1 and c in (3, 4):
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(3, *([1] * (image.ndim - 1)))
        return (image[:3] * weights).sum(0, keepdims=True)
    if channels == 3 and c == 1:
        return np.repeat(image, 3, axis=0)
    raise UnsupportedStudyImageError(f"{name}: has {c} channels, the network expects {channels}")


def write_result(image_path: str, values: np.ndarray, kind: str = "alpha") -> str:
    """Write a result map with the geometry of ``image_path``; returns the new temporary file.

    Args:
        image_path: the study image the map belongs to (its format, shape and NIfTI header are used).
        values: the map, shaped like the image's spatial dimensions; values in [0, 1]
            (``kind="mask"``: {0, 1}).
        kind: ``"alpha"``, ``"uncertainty"`` or ``"mask"``.
    """
    values = np.asarray(values)
    if image_format(image_path) == "nifti":
        import nibabel as nib

        ref = nib.load(image_path)
        if tuple(ref.shape) != tuple(values.shape):
            raise ValueError(f"result shape {values.shape} does not match {image_path} {ref.shape}")
        data = values.astype(np.uint8) if kind == "mask" else values.astype(np.float32)
        header = ref.header.copy()
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(1.0, 0.0)
        out = type(ref)(data, ref.affine, header)
        out.set_qform(ref.get_qform(), code=int(ref.header["qform_code"]))
        out.set_sform(ref.get_sform(), code=int(ref.header["sform_code"]))
        path = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        nib.save(out, path)
        return path

    from PIL import Image

    if values.ndim != 2:
        raise ValueError(f"a raster result must be (H, W), got {values.shape}")
    scale = 1 if kind == "mask" else 255
    data = np.clip(np.rint(values.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    path = tempfile.NamedTemporaryFile(suffix=".png", delete=False).name
    Image.fromarray(data, mode="L").save(path, format="PNG")
    return path
