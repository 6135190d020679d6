"""Labels saved through MONAI Label -> a prepared dataset of the bundle (docs/architecture.md).

The datastore gives (image, final label) file pairs. Each pair becomes one case (a NIfTI volume
with D > 1 slices becomes D cases ``<case>_z<k>``) written with the bundle's own writer
(``scripts.data.writer.write_dataset``: atomic, read-back checked) as::

    images/<case>.png    uint8: the study image scaled as at inference (lib.imaging.to_unit_range) * 255
    alpha/<case>.png     uint8 0..255: the label as an alpha matte (see below)
    masks/<case>_r0.png  uint8 {0, 1}: alpha >= 128 (the thresholded label), one "rater"
    trimaps/<case>.png   0 / 128 / 255 (scripts.data.trimaps); for a binary label, whose matte has no
                         fractional pixels, the unknown region is a band of ``band`` pixels around
                         the mask boundary instead

Label values: a label whose maximum is <= 1 is an alpha matte in [0, 1] or a binary mask and is
multiplied by 255; otherwise it is read as an 8-bit alpha matte 0..255 (larger values are refused).
Labels must have the image's format and spatial shape (a PNG label for a PNG image, a NIfTI label
on the image's voxel grid for a NIfTI image).

Example:
    >>> pairs = [{"image": "/studies/a.png", "label": "/studies/labels/final/a.png"}, ...]  # doctest: +SKIP
    >>> prepare_training_dataset(pairs, "/tmp/ds", num_folds=5)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from os import PathLike
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from scripts.image_formats import APP_IMAGE_SUFFIXES, longest_first

from ..errors import NoTrainingLabelsError, UnsupportedStudyImageError
from ..imaging import image_format, image_reader, match_channels, to_unit_range

__all__ = ["case_name", "label_to_alpha", "trimap_for_label", "read_pair", "prepare_training_dataset"]


def case_name(path: str) -> str:
    """A file-name-safe case name from an image path (extension removed, other characters -> ``_``)."""
    name = os.path.basename(str(path))
    for suffix in longest_first(APP_IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "case"
    return name[:120]


def label_to_alpha(label: np.ndarray, name: str = "label") -> np.ndarray:
    """uint8 alpha matte 0..255 from a label (see the module docstring for the rule)."""
    label = np.asarray(label, dtype=np.float64)
    if label.size == 0 or not np.isfinite(label).all():
        raise UnsupportedStudyImageError(f"{name}: empty or not finite")
    if label.min() < 0:
        raise UnsupportedStudyImageError(f"{name}: negative values ({label.min():g}) are not an alpha matte")
    top = float(label.max())
    if top <= 1.0:
        label = label * 255.0
    elif top > 255.0:
        raise UnsupportedStudyImageError(
            f"{name}: values up to {top:g}; expected an alpha matte in [0, 1] or 0..255, or a {{0, 1}} mask")
    return np.clip(np.rint(label), 0, 255).astype(np.uint8)


def trimap_for_label(alpha: np.ndarray, mask: np.ndarray, band: int = 2) -> np.ndarray:
    """Trimap of one labelled case (0 / 128 / 255), see the module docstring."""
    from scripts.data.trimaps import UNKNOWN, trimap_from_annotations

    trimap = trimap_from_annotations(alpha, [mask], dilation=1)
    if (trimap == UNKNOWN).any() or band <= 0:
        return trimap
    fg = mask > 0
    structure = np.ones((3, 3), bool)
    unknown = ndimage.binary_dilation(fg, structure, iterations=band) & ~ndimage.binary_erosion(
        fg, structure, iterations=band, border_value=1)
    trimap = np.where(fg, 255, 0).astype(np.uint8)
    trimap[unknown] = UNKNOWN
    return trimap


def _load(path: str) -> np.ndarray:
    from monai.transforms import LoadImage

    try:
        array = LoadImage(reader=image_reader(path), image_only=True, ensure_channel_first=True, dtype=None)(path)
    except UnsupportedStudyImageError:
        raise
    except Exception as e:
        raise UnsupportedStudyImageError(f"{path}: cannot read ({e})") from e
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[..., None]  # (C, H, W, 1)
    if array.ndim != 4:
        raise UnsupportedStudyImageError(f"{path}: expected a 2-D image or a 3-D volume, got {array.shape[1:]}")
    return array


def read_pair(image_path: str, label_path: str, channels: int = 1,
              intensity_range: Optional[Sequence[float]] = None) -> List[Tuple[str, Dict[str, np.ndarray]]]:
    """Cases ``(name, {"image", "alpha", "masks", "trimap"})`` of one (image, label) pair."""
    if image_format(image_path) != image_format(label_path):
        # a NIfTI label saved by a viewer for a PNG image is on the viewer's (column, row) grid: refuse
        # rather than risk a silently transposed label
        raise UnsupportedStudyImageError(
            f"{label_path}: label format differs from image {image_path}; save PNG labels for PNG images "
            "and NIfTI labels for NIfTI images")
    image = _load(image_path)  # (C, H, W, D)
    label = _load(label_path)
    if label.shape[0] != 1:
        raise UnsupportedStudyImageError(f"{label_path}: a label must have one channel, got {label.shape[0]}")
    if label.shape[1:] != image.shape[1:]:
        raise UnsupportedStudyImageError(
            f"{label_path}: label shape {tuple(label.shape[1:])} differs from image {image_path} "
            f"{tuple(image.shape[1:])} (labels must be on the image's pixel/voxel grid)")
    unit, _ = to_unit_range(image, intensity_range)  # the file's type decides, as at inference
    unit = match_channels(unit, channels, image_path)
    image8 = np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)
    alpha = label_to_alpha(label[0], label_path)  # (H, W, D)

    base = case_name(image_path)
    depth = image8.shape[-1]
    cases = []
    for k in range(depth):
        img = image8[..., k]
        img = img[0] if channels == 1 else np.moveaxis(img, 0, -1)
        a = np.ascontiguousarray(alpha[..., k])
        mask = (a >= 128).astype(np.uint8)
        cases.append((base if depth == 1 else f"{base}_z{k}", {
            "image": np.ascontiguousarray(img), "alpha": a, "masks": [mask],
            "trimap": trimap_for_label(a, mask)}))
    return cases


def prepare_training_dataset(
    pairs: Sequence[Mapping[str, str]],
    out: Union[str, PathLike],
    num_folds: int = 5,
    seed: int = 0,
    channels: int = 1,
    intensity_range: Optional[Sequence[float]] = None,
    name: str = "monailabel",
) -> Path:
    """Write the datastore's (image, label) pairs as a prepared dataset at ``out`` (replaced if present).

    Args:
        pairs: ``[{"image": path, "label": path}, ...]`` as ``Datastore.datalist()`` returns them.
        out: the dataset folder.
        num_folds: folds of ``datalist.json`` (capped at the number of cases).
        seed: seed of the fold assignment.
        channels: image channels of the network (1 grey, 3 RGB).
        intensity_range: as at inference.
        name: ``name`` entry of ``datalist.json``.

    Raises:
        NoTrainingLabelsError: fewer than 2 cases (training holds one fold out).
        UnsupportedStudyImageError: an unreadable pair, a label off the image grid, mixed image sizes.
    """
    from scripts.data.folds import assign_folds
    from scripts.data.validation import validate_case_name
    from scripts.data.writer import write_dataset

    cases: Dict[str, Dict[str, np.ndarray]] = {}
    for pair in pairs:
        for case, arrays in read_pair(pair["image"], pair["label"], channels, intensity_range):
            validate_case_name(case)
            if case in cases:
                raise UnsupportedStudyImageError(f"two datastore images map to the same case name '{case}'")
            cases[case] = arrays
    if len(cases) < 2:
        raise NoTrainingLabelsError(
            f"training needs at least 2 labelled images (final labels in the datastore), found {len(cases)}")
    shapes = {tuple(a["alpha"].shape) for a in cases.values()}
    if len(shapes) != 1:
        raise UnsupportedStudyImageError(
            f"labelled images have different sizes {sorted(shapes)}; the bundle trains on one size")
    folds = assign_folds(sorted(cases), min(int(num_folds), len(cases)), int(seed))
    meta = {"name": name, "num_folds": min(int(num_folds), len(cases)), "seed": int(seed), "raters": 1,
            "spatial_shape": list(shapes.pop()), "channels": int(channels),
            "source": "MONAI Label datastore (final labels)"}
    return write_dataset(cases, folds, out, meta, overwrite=True)
