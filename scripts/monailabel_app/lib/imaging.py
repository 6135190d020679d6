"""Study images in and result maps out, with the input's geometry.

Formats served: 2-D raster images (PNG, JPEG, TIFF, BMP; grey or RGB) read with MONAI's
``PILReader(reverse_indexing=False)`` so arrays keep the file's (row, column) order, as the
bundle's data contract requires; and NIfTI (``.nii``, ``.nii.gz``; 2-D, or 3-D handled slice by
slice along the last axis) read with MONAI's ``NibabelReader`` in the file's voxel order.

Results are written in the input's format with the input's geometry:

- raster input -> 8-bit grey PNG of the same (H, W): ``round(value * 255)``;
- NIfTI input -> ``.nii.gz`` of the same shape with the input's affine and header (float32 values
  in [0, 1], or uint8 {0, 1} for the ``mask`` output).

Intensities follow the bundle's one rule (``scripts.data.transforms.scale_intensity_to_unit``):
by the file's stored type (8-bit: ``x / 255`` as in training; 16-bit PNG / TIFF: ``x / 65535``, though
MONAI's reader returns them as int32; float images outside
[0, 1] by their minimum and maximum) or the inference config's explicit ``intensity_range``; the
answer says which.

Example:
    >>> import numpy as np
    >>> unit, how = to_unit_range(np.array([0, 51, 255], np.uint8))
    >>> how
    'uint8 range [0, 255]'
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence, Tuple

import numpy as np

from scripts.image_formats import NIFTI_SUFFIXES, RASTER_SUFFIXES

from .errors import UnsupportedStudyImageError

__all__ = [
    "image_format",
    "image_reader",
    "to_unit_range",
    "match_channels",
    "write_result",
]



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


def to_unit_range(array: np.ndarray, intensity_range: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, str]:
    """The bundle's one intensity rule (``scripts.data.transforms.scale_intensity_to_unit``), with
    refusals as :class:`UnsupportedStudyImageError`; returns the array and how it was scaled."""
    from scripts.data.transforms import scale_intensity_to_unit

    try:
        return scale_intensity_to_unit(array, intensity_range)
    except ValueError as e:
        raise UnsupportedStudyImageError(str(e)) from e


def match_channels(image: np.ndarray, channels: int, name: str = "image") -> np.ndarray:
    """The bundle's one colour rule (``scripts.data.transforms.match_channels``: RGB(A) -> grey luma,
    grey -> RGB), with refusals as :class:`UnsupportedStudyImageError`."""
    from scripts.data.transforms import match_channels as bundle_match_channels

    try:
        return bundle_match_channels(image, channels, name)
    except ValueError as e:
        raise UnsupportedStudyImageError(str(e)) from e


def write_result(image_path: str, values: np.ndarray, kind: str = "alpha") -> str:
    """Write a result map with the geometry of ``image_path`` into a new temporary file (its path).

    The writer of evaluation and CLI inference (``scripts.handlers.prediction_writer.save_map``):
    NIfTI with the input's shape, affine and header, or an 8-bit PNG.
    """
    from scripts.handlers.prediction_writer import save_map

    suffix = ".nii.gz" if image_format(image_path) == "nifti" else ".png"
    fd, path = tempfile.mkstemp(prefix="medical_matting_result_", suffix=suffix)
    os.close(fd)
    save_map(values, path, kind=kind, reference=image_path if suffix == ".nii.gz" else None)
    return path
