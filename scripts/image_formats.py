"""The image file formats the bundle reads: one table from file name ending to format and readers.

:data:`IMAGE_FORMATS` is the single source of truth; every list of suffixes in the bundle is derived
from it with :func:`suffixes`:

- :data:`CLI_IMAGE_SUFFIXES`: what CLI inference (``configs/inference.yaml``) reads from a folder;
- :data:`APP_IMAGE_SUFFIXES`: what the MONAI Label app accepts as a study image or an upload;
- :data:`IMPORTER_IMAGE_SUFFIXES`: what the dataset importer (``scripts.data``) reads;
- :data:`RASTER_SUFFIXES`, :data:`NIFTI_SUFFIXES`, :data:`ITK_SUFFIXES`: the files of each format,
  which decides the reader and how a header is checked (``scripts.data.image_limits``).

Example::

    suffixes(read_by=APP)          # ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.nii', '.nii.gz')
    IMAGE_FORMATS[".nii.gz"][0]    # 'nifti'
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

__all__ = [
    "CLI",
    "APP",
    "IMPORTER",
    "IMAGE_FORMATS",
    "suffixes",
    "longest_first",
    "RASTER_SUFFIXES",
    "NIFTI_SUFFIXES",
    "ITK_SUFFIXES",
    "CLI_IMAGE_SUFFIXES",
    "APP_IMAGE_SUFFIXES",
    "IMPORTER_IMAGE_SUFFIXES",
]

#: the entry points that read image files: CLI inference, the MONAI Label app, the dataset importer
CLI, APP, IMPORTER = "cli", "app", "importer"

#: lower-case file name ending -> (format, entry points that read it). Formats: ``raster`` (Pillow:
#: PNG, JPEG, BMP, TIFF), ``nifti`` (nibabel), ``itk`` (NRRD and MetaImage, SimpleITK), ``dicom``
#: (pydicom). ``.nhdr`` is known to the header check only: no entry point lists it.
IMAGE_FORMATS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    ".png": ("raster", (CLI, APP, IMPORTER)),
    ".jpg": ("raster", (CLI, APP, IMPORTER)),
    ".jpeg": ("raster", (CLI, APP, IMPORTER)),
    ".bmp": ("raster", (CLI, APP, IMPORTER)),
    ".tif": ("raster", (CLI, APP, IMPORTER)),
    ".tiff": ("raster", (CLI, APP, IMPORTER)),
    ".nii": ("nifti", (CLI, APP, IMPORTER)),
    ".nii.gz": ("nifti", (CLI, APP, IMPORTER)),
    ".nrrd": ("itk", (CLI,)),
    ".nhdr": ("itk", ()),
    ".mha": ("itk", (CLI,)),
    ".mhd": ("itk", (CLI,)),
    ".dcm": ("dicom", (IMPORTER,)),
}


def suffixes(file_format: Optional[str] = None, read_by: Optional[str] = None) -> Tuple[str, ...]:
    """The suffixes of :data:`IMAGE_FORMATS` of one ``file_format`` and/or read by one entry point, in table order.

    Raises:
        ValueError: an unknown format or entry point.
    """
    formats = {f for f, _ in IMAGE_FORMATS.values()}
    if file_format is not None and file_format not in formats:
        raise ValueError(f"unknown image format {file_format!r}; known: {sorted(formats)}")
    if read_by is not None and read_by not in (CLI, APP, IMPORTER):
        raise ValueError(f"unknown entry point {read_by!r}; known: {[CLI, APP, IMPORTER]}")
    return tuple(s for s, (f, readers) in IMAGE_FORMATS.items()
                 if (file_format is None or f == file_format) and (read_by is None or read_by in readers))


def longest_first(names: Iterable[str]) -> Tuple[str, ...]:
    """``names`` longest first, so that matching a file name's end finds ``.nii.gz`` before ``.nii``."""
    return tuple(sorted(names, key=len, reverse=True))


RASTER_SUFFIXES = suffixes(file_format="raster")
NIFTI_SUFFIXES = suffixes(file_format="nifti")
ITK_SUFFIXES = suffixes(file_format="itk")
CLI_IMAGE_SUFFIXES = suffixes(read_by=CLI)
APP_IMAGE_SUFFIXES = suffixes(read_by=APP)
IMPORTER_IMAGE_SUFFIXES = suffixes(read_by=IMPORTER)
