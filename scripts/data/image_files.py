"""Read the user's image and mask files (NIfTI, PNG / JPEG / TIFF / BMP, DICOM) with MONAI's readers.

Every file is read with MONAI's :class:`monai.transforms.LoadImage` (``dtype=None``, the file's
values unchanged): ``NibabelReader`` for NIfTI, ``PILReader`` (``reverse_indexing=False``, rows
first) for PNG / JPEG / TIFF / BMP, ``PydicomReader`` for one DICOM file or a folder holding one
series. The arrays keep the reader's index order: for NIfTI and DICOM the voxel index (i, j[, k]),
for the 2-D formats (row, column[, colour]); the first index becomes the row of the prepared PNGs.

What is hand-written here, and why: MONAI loads a 16-bit PNG / TIFF as int32, so its real type
(and with it the intensity scaling) is read from the file's PIL mode; and the conversions below are
rules of the bundle's data format, not of a library:

- **image intensities** to uint8 (:func:`image_to_uint8`): uint8 files unchanged; 16-bit PNG /
  TIFF ``round(x * 255 / 65535)``; 1-bit images 0 / 255; every other type (NIfTI and DICOM
  integers or floats, 32-bit images) min-max over the whole file (a volume as one), per channel
  together, ``round(255 * (x - min) / (max - min))``. A constant image is refused (empty image).
- **masks** to {0, 1} (:func:`mask_to_binary`): lossy files (JPEG) are thresholded,
  ``x >= threshold`` (default 128 on the 0..255 scale, :data:`DEFAULT_MASK_THRESHOLD`); lossless
  files must hold at most two values, 0 and one foreground value (0 / 1, 0 / 255, 0.0 / 1.0 ...),
  or ``threshold`` is given explicitly and then applies to every mask.
- **alpha mattes** to uint8 (:func:`alpha_to_uint8`): uint8 unchanged; 16-bit by its range; floats
  in [0, 1] times 255, rounded; anything else is refused.

Example:
    >>> loaded = read_array("case01/image.nii.gz")  # doctest: +SKIP
    >>> loaded.array.shape, loaded.kind  # doctest: +SKIP
    ((128, 128), 'nifti')
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from scripts.data.errors import DatasetSourceError, DatasetValidationError
from scripts.image_formats import IMAGE_FORMATS, IMPORTER_IMAGE_SUFFIXES, longest_first

__all__ = ["LoadedArray", "DEFAULT_MASK_THRESHOLD", "IMPORTER_FILE_KINDS", "file_kind", "read_array", "image_to_uint8",
           "mask_to_binary", "alpha_to_uint8", "same_affine"]

#: threshold of lossy (JPEG) masks on the 0..255 scale: foreground where ``value >= 128``
DEFAULT_MASK_THRESHOLD = 128
#: reader kind of each image format the importer reads
_KIND_OF_FORMAT = {"raster": "pil", "nifti": "nifti", "dicom": "dicom"}
#: file name endings the importer reads (``scripts.image_formats``) -> reader kind
IMPORTER_FILE_KINDS = {suffix: _KIND_OF_FORMAT[IMAGE_FORMATS[suffix][0]] for suffix in IMPORTER_IMAGE_SUFFIXES}
_LOSSY = (".jpg", ".jpeg")
_READERS = {"nifti": "NibabelReader", "pil": "PILReader", "dicom": "PydicomReader"}

logging.getLogger("monai.apps.utils").setLevel(logging.ERROR)


@dataclass
class LoadedArray:
    """One file's values.

    Args:
        path: the file (or DICOM series folder).
        array: the values in the file's own type: (H, W), (H, W, colour) for 2-D formats, (X, Y) or
            (X, Y, Z) (or (X, Y, Z, C)) for NIfTI / DICOM.
        kind: ``nifti``, ``pil`` or ``dicom``.
        lossy: whether the format is lossy (JPEG).
        affine: the 4x4 voxel-to-world matrix of NIfTI / DICOM, None for the 2-D formats.
        value_max: for integer files the largest value of the file's real type (255, 65535), else None.
    """

    path: Path
    array: np.ndarray
    kind: str
    lossy: bool
    affine: np.ndarray | None
    value_max: int | None


def file_kind(path: str | PathLike) -> str | None:
    """``nifti`` / ``pil`` / ``dicom`` for a readable file name (a folder is a DICOM series), else None."""
    path = Path(path)
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    for suffix in longest_first(IMPORTER_FILE_KINDS):
        if name.endswith(suffix):
            return IMPORTER_FILE_KINDS[suffix]
    return None


def _pil_value_max(path: Path) -> tuple[int | None, str]:
    """The file's real integer range (PIL mode) and the mode: MONAI's PILReader returns 16-bit images as int32."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            mode = img.mode
    except Exception as e:  # PIL raises many types for broken files
        raise DatasetSourceError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from e
    if mode.startswith("I;16"):
        return 65535, mode
    if mode in ("1",):
        return 1, mode
    if mode in ("L", "P", "RGB", "RGBA", "LA"):
        return 255, mode
    return None, mode


def read_array(path: str | PathLike) -> LoadedArray:
    """Read one image / mask file or DICOM series folder with MONAI's ``LoadImage``.

    NIfTI and 2-D image files are first checked from their header
    (:func:`scripts.data.image_limits.check_image_header`: at most 64 megapixels per slice and 512^3
    voxels), so a decompression bomb is refused before any reader decodes it.

    Raises:
        DatasetSourceError: a missing file, an unknown file type, an image above the size limits, a file the
            reader cannot decode.
    """
    from monai.transforms import LoadImage  # lazy: monai is slow to import

    path = Path(path)
    if not path.exists():
        raise DatasetSourceError(f"{path}: file not found")
    kind = file_kind(path)
    if kind is None:
        raise DatasetSourceError(f"{path}: unknown file type; expected one of {sorted(IMPORTER_FILE_KINDS)} "
                                 "or a DICOM series folder")
    if kind != "dicom":  # the header first: no reader decodes an image larger than the bundle reads
        from scripts.data.image_limits import check_image_header

        try:
            check_image_header(path)
        except ValueError as e:  # ImageTooLargeError, UnreadableImageError: they name the file
            raise DatasetSourceError(str(e)) from e
    value_max, mode = _pil_value_max(path) if kind == "pil" else (None, "")
    if kind == "pil" and mode in ("P",):
        raise DatasetSourceError(f"{path}: palette image (PIL mode 'P'); save it as grey or RGB")
    kwargs = {"reverse_indexing": False} if kind == "pil" else {}
    try:
        data, meta = LoadImage(reader=_READERS[kind], image_only=False, dtype=None, **kwargs)(str(path))
    except Exception as e:  # the readers raise many types for broken files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetSourceError(f"{path}: cannot read ({type(e).__name__}: {first})") from e
    array = np.array(data.detach().cpu().numpy() if hasattr(data, "detach") else data)
    if kind == "pil":
        if mode in ("RGBA", "LA"):
            if not (array[..., -1] == 255).all():
                raise DatasetSourceError(f"{path}: the image has a transparency channel that is not opaque "
                                         "everywhere; save it without transparency")
            array = array[..., :-1]
            if array.shape[-1] == 1:
                array = array[..., 0]
        if value_max == 65535:
            array = array.astype(np.uint16)  # MONAI returns int32: the file holds uint16
        elif value_max == 255:
            array = array.astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer) and array.dtype.itemsize == 1 and array.dtype.kind == "u":
        value_max = 255
    affine = None
    if kind != "pil":
        affine = meta.get("original_affine", meta.get("affine"))
        affine = None if affine is None else np.asarray(affine, dtype=np.float64)
    lossy = path.name.lower().endswith(_LOSSY)
    return LoadedArray(path, array, kind, lossy, affine, value_max)


def image_to_uint8(loaded: LoadedArray) -> np.ndarray:
    """The image's values as uint8 by the rule of the module docstring (same shape).

    Raises:
        DatasetValidationError: an empty (constant) image, NaN or infinite values.
    """
    array = loaded.array
    if array.size == 0:
        raise DatasetValidationError(f"{loaded.path}: the image is empty (shape {array.shape})")
    if array.dtype == np.bool_ or loaded.value_max == 1:
        out = (array > 0).astype(np.uint8) * 255
    elif array.dtype == np.uint8:
        out = array
    elif loaded.value_max == 65535:
        out = ((array.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    else:
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise DatasetValidationError(f"{loaded.path}: the image holds NaN or infinite values")
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            raise DatasetValidationError(f"{loaded.path}: the image is empty (every value is {lo:g})")
        out = np.floor((values - lo) * (255.0 / (hi - lo)) + 0.5).astype(np.uint8)
    if int(out.min()) == int(out.max()):
        raise DatasetValidationError(f"{loaded.path}: the image is empty (every value is {int(out.min())})")
    return np.ascontiguousarray(out)


def mask_to_binary(loaded: LoadedArray, threshold: float | None = None) -> np.ndarray:
    """The mask as uint8 {0, 1} by the rule of the module docstring (same shape).

    Args:
        loaded: the mask file's values.
        threshold: foreground where ``value >= threshold``; None: :data:`DEFAULT_MASK_THRESHOLD` for JPEG
            masks, and lossless masks must be two-valued.

    Raises:
        DatasetValidationError: a lossless mask with more than two values, or whose second value is negative,
            or an RGB mask whose channels differ.
    """
    array = loaded.array
    if array.ndim == 3 and loaded.kind == "pil":
        if not all(np.array_equal(array[..., 0], array[..., c]) for c in range(1, array.shape[-1])):
            raise DatasetValidationError(f"{loaded.path}: a colour mask; masks must be grey (one value per pixel)")
        array = array[..., 0]
    if threshold is None and loaded.lossy:
        threshold = DEFAULT_MASK_THRESHOLD
    if threshold is not None:
        return (array >= threshold).astype(np.uint8)
    values = np.unique(array)
    if not np.isfinite(values).all():
        raise DatasetValidationError(f"{loaded.path}: the mask holds NaN or infinite values")
    foreground = values[values != 0]
    if len(foreground) > 1 or (len(foreground) == 1 and foreground[0] < 0):
        shown = ", ".join(f"{v:g}" for v in values[:6].tolist())
        raise DatasetValidationError(
            f"{loaded.path}: mask is not binary (values {shown}{', ...' if len(values) > 6 else ''}); a mask holds 0 "
            "and one foreground value, or pass --mask_threshold")
    return (array != 0).astype(np.uint8)


def alpha_to_uint8(loaded: LoadedArray) -> np.ndarray:
    """An alpha-matte file's values as uint8 0..255 by the rule of the module docstring.

    Raises:
        DatasetValidationError: values that are not 8 / 16-bit integers or floats in [0, 1].
    """
    array = loaded.array
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if loaded.value_max == 65535:
        return ((array.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        lo, hi = float(np.min(array)), float(np.max(array))
        if np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo and hi <= 1.0:
            return np.floor(array.astype(np.float64) * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and array.size and 0 <= array.min() and array.max() <= 255:
        return array.astype(np.uint8)
    raise DatasetValidationError(f"{loaded.path}: an alpha matte holds 8- or 16-bit values or floats in [0, 1], "
                                 f"got {array.dtype} values in [{np.min(array):g}, {np.max(array):g}]")


def same_affine(a: LoadedArray, b: LoadedArray, tolerance: float = 1e-3) -> bool:
    """Whether two NIfTI / DICOM files share their voxel-to-world matrix (True when either has none)."""
    if a.affine is None or b.affine is None:
        return True
    return a.affine.shape == b.affine.shape and bool(np.allclose(a.affine, b.affine, atol=tolerance))
