"""The largest image the bundle reads, checked from the file's header before any reader decodes it.

Readers allocate what a header says: a 30000 x 30000 PNG of under 1 MB decodes to 900 MB (more as
float), and when Pillow refuses it as a decompression bomb MONAI's ``LoadImage`` silently tries its
other readers (ITK), which do decode it. So every entry point (CLI inference, the MONAI Label app,
its uploads) calls :func:`check_image_header` first; it reads only the header:

- PNG / JPEG / TIFF / BMP: ``PIL.Image.open`` without ``load()``, under Pillow's own
  decompression-bomb guard (a file Pillow refuses is refused here, never handed to another reader);
- NIfTI: the nibabel header (``nib.load`` maps no data);
- NRRD / MHA / MHD: SimpleITK's ``ReadImageInformation`` (header only).

Limits (documented in docs/reliability.md, "Memory and time bounds"):

- :data:`MAX_IMAGE_PIXELS`: 64 megapixels (8192 x 8192) per 2-D image or volume slice. With the
  bounded internal grid of the inferer the peak memory of one inference is about
  0.4 GB + 40 bytes per output pixel, so the largest image needs about 3 GB;
- :data:`MAX_IMAGE_VOXELS`: 512 x 512 x 512 values in a volume, every dimension counted (a 4-D
  NIfTI's 4th too); volumes are processed slice by slice (``scripts.workflows.volumes``).

Example:
    >>> check_image_header("scan.png").shape  # doctest: +SKIP
    (512, 512)
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Hashable, Mapping, Optional, Tuple, Union

from monai.config import KeysCollection
from monai.transforms import MapTransform

from scripts.image_formats import ITK_SUFFIXES, NIFTI_SUFFIXES, RASTER_SUFFIXES

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_VOXELS",
    "ImageTooLargeError",
    "UnreadableImageError",
    "ImageHeader",
    "dicom_series_files",
    "read_dicom_series_header",
    "read_image_header",
    "check_image_header",
    "CheckImageHeaderd",
]

#: most pixels of a 2-D image (or of one slice of a volume): 64 megapixels, e.g. 8192 x 8192
MAX_IMAGE_PIXELS = 8192 * 8192
#: most voxels of a volume: 512 x 512 x 512
MAX_IMAGE_VOXELS = 512 * 512 * 512


class ImageTooLargeError(ValueError):
    """The header says the image is larger than the bundle reads (HTTP 413 in the app)."""


class UnreadableImageError(ValueError):
    """The file's header cannot be read as the format its name says (HTTP 415 in the app)."""


@dataclass(frozen=True)
class ImageHeader:
    """What a header says: ``shape`` as (rows, columns[, slices...]), ``channels`` and ``format``."""

    shape: Tuple[int, ...]
    channels: int
    format: str

    @property
    def slice_pixels(self) -> int:
        """Pixels of the image, or of one slice (the first two axes) of a volume."""
        return int(self.shape[0]) * int(self.shape[1]) if len(self.shape) >= 2 else int(math.prod(self.shape))

    @property
    def voxels(self) -> int:
        """Every value of the image: all dimensions (a 4-D NIfTI's 4th included), times the channels."""
        return int(math.prod(self.shape)) * int(self.channels)

    @property
    def slices(self) -> int:
        """2-D slices of the image: 1 for an image, the product of the dimensions after the first two for a volume."""
        return int(math.prod(self.shape[2:])) if len(self.shape) > 2 else 1


def _suffix(path: str) -> str:
    name = os.path.basename(path).lower()
    for suffix in (*NIFTI_SUFFIXES[::-1], *RASTER_SUFFIXES, *ITK_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return os.path.splitext(name)[1]


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def read_image_header(path: Union[str, os.PathLike]) -> ImageHeader:
    """The shape of an image file from its header alone (no pixel data is decoded).

    Raises:
        ImageTooLargeError: Pillow refuses the file as a decompression bomb.
        UnreadableImageError: no file, an unknown format, or a header that cannot be read.
    """
    path = str(path)
    if os.path.isdir(path) and dicom_series_files(path):
        return read_dicom_series_header(path)
    if not os.path.isfile(path):
        raise UnreadableImageError(f"{path}: no such file")
    suffix = _suffix(path)
    try:
        if suffix in RASTER_SUFFIXES:
            from PIL import Image

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
                try:
                    with Image.open(path) as img:
                        width, height = img.size
                        channels = len(img.getbands())
                        fmt = img.format or suffix
                except Image.DecompressionBombError as e:
                    raise ImageTooLargeError(f"{path}: refused as a decompression bomb ({_first_line(e)})") from None
            return ImageHeader((int(height), int(width)), channels, fmt)
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib

            img = nib.load(path)  # header only: the data stays on disk
            shape = tuple(int(s) for s in img.shape)  # every dimension: a 4-D series counts all its volumes
            return ImageHeader(shape, 1, "NIfTI")
        if suffix in ITK_SUFFIXES:
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(path)
            reader.ReadImageInformation()
            size = tuple(int(s) for s in reader.GetSize())  # ITK order (x, y[, z])
            shape = (size[1], size[0], *size[2:]) if len(size) >= 2 else size
            return ImageHeader(shape, int(reader.GetNumberOfComponents()), suffix.lstrip(".").upper())
    except (ImageTooLargeError, UnreadableImageError):
        raise
    except Exception as e:  # any header decoder error: not a readable file of that format
        raise UnreadableImageError(f"{path}: not a readable {suffix or 'image'} file ({_first_line(e)})") from None
    raise UnreadableImageError(f"{path}: unsupported image format {suffix or '(no suffix)'!r}")


def dicom_series_files(folder: Union[str, os.PathLike]) -> list:
    """The ``.dcm`` files of a folder (one DICOM series), sorted by name; ``[]`` when it holds none."""
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(str(folder), n) for n in os.listdir(folder)
                  if n.lower().endswith(".dcm") and not n.startswith(".") and os.path.isfile(os.path.join(str(folder), n)))


def read_dicom_series_header(folder: Union[str, os.PathLike]) -> ImageHeader:
    """The shape of a DICOM series folder from its files' headers (no pixel data is decoded).

    Shape (rows, columns, files); every file must belong to one series, hold one grey frame and
    have the same rows and columns. Hand-written because MONAI's readers decode the pixel data to
    know the shape; this check runs before any decoding.

    Raises:
        UnreadableImageError: a file that is not DICOM, several series, colour or multi-frame
            files, or slices of different sizes (one line naming the folder).
    """
    import pydicom

    files = dicom_series_files(folder)
    if not files:
        raise UnreadableImageError(f"{folder}: no .dcm file in the folder")
    sizes, series = set(), set()
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            rows, cols = int(ds.Rows), int(ds.Columns)
        except Exception as e:  # any decoder error: not a DICOM image file
            raise UnreadableImageError(
                f"{folder}: {os.path.basename(f)} is not a readable DICOM image ({_first_line(e)})") from None
        if int(getattr(ds, "SamplesPerPixel", 1)) != 1 or int(getattr(ds, "NumberOfFrames", 1) or 1) != 1:
            raise UnreadableImageError(f"{folder}: {os.path.basename(f)} is not one grey frame (colour or multi-frame "
                                       "DICOM is not supported)")
        sizes.add((rows, cols))
        series.add(str(getattr(ds, "SeriesInstanceUID", "")))
    if len(series) > 1:
        raise UnreadableImageError(f"{folder}: holds {len(series)} DICOM series; put each series in its own folder")
    if len(sizes) > 1:
        raise UnreadableImageError(f"{folder}: DICOM slices of different sizes {sorted(sizes)}")
    rows, cols = sizes.pop()
    return ImageHeader((rows, cols, len(files)), 1, "DICOM")


def check_image_header(
    path: Union[str, os.PathLike], max_pixels: int = MAX_IMAGE_PIXELS, max_voxels: int = MAX_IMAGE_VOXELS
) -> ImageHeader:
    """Refuse an image larger than the bundle reads, from its header; its :class:`ImageHeader` otherwise.

    Args:
        path: the image file.
        max_pixels: most pixels of a 2-D image or volume slice (default :data:`MAX_IMAGE_PIXELS`).
        max_voxels: most voxels of a volume (default :data:`MAX_IMAGE_VOXELS`).

    Raises:
        ImageTooLargeError: above a limit, or refused by Pillow as a decompression bomb.
        UnreadableImageError: the header cannot be read, or the image is empty.
    """
    header = read_image_header(path)
    if header.voxels == 0:
        raise UnreadableImageError(f"{path}: empty image (shape {header.shape})")
    if header.slice_pixels > max_pixels:
        rows, cols = header.shape[:2]
        raise ImageTooLargeError(
            f"{path}: {rows} x {cols} pixels ({header.slice_pixels / 1e6:.1f} megapixels) is above the maximum of "
            f"{max_pixels / 1e6:.1f} megapixels; shrink the image first")
    if len(header.shape) > 2 and header.voxels > max_voxels:
        raise ImageTooLargeError(
            f"{path}: volume {' x '.join(map(str, header.shape))} ({header.voxels / 1e6:.1f} M voxels) is above the "
            f"maximum of {max_voxels / 1e6:.1f} M voxels; crop or resample it first")
    return header


class CheckImageHeaderd(MapTransform):
    """Check image files from their header (:func:`check_image_header`) before ``LoadImaged`` decodes them.

    Args:
        keys: keys holding image paths.
        max_pixels: see :func:`check_image_header` (``None``: :data:`MAX_IMAGE_PIXELS`).
        max_voxels: see :func:`check_image_header` (``None``: :data:`MAX_IMAGE_VOXELS`).
        allow_missing_keys: as in MONAI.

    Example::

        Compose([CheckImageHeaderd("image"), LoadImaged("image")])
    """

    def __init__(
        self,
        keys: KeysCollection,
        max_pixels: Optional[int] = None,
        max_voxels: Optional[int] = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.max_pixels = int(max_pixels or MAX_IMAGE_PIXELS)
        self.max_voxels = int(max_voxels or MAX_IMAGE_VOXELS)

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            check_image_header(d[key], self.max_pixels, self.max_voxels)
        return d
