"""Turn one case's files (:class:`~scripts.data.case_files.CaseFiles`) into validated 2-D matting cases.

Steps, per case (rules in ``docs/data.md``):

1. read the image file(s) and the raters' masks with :func:`scripts.data.image_files.read_array`;
   several image files are the channels (each scaled to uint8 on its own), an RGB file gives 3;
2. check: at least :data:`MIN_RATERS` masks, every mask (and the optional alpha / trimap) of the
   image's shape, NIfTI / DICOM masks on the image's voxel-to-world matrix, masks binary;
3. a 3-D volume is cut into 2-D slices along ``slice_axis`` (an index of the array as read);
   only slices where some rater marked foreground are kept, plus ``slice_margin`` slices on each
   side; a slice is named ``<case>_s<index>`` and its group is the volume's case (or its
   ``group``), so the slices of one volume never straddle folds;
4. each slice (or 2-D image) is brought to ``spatial_size`` when one is given, by ``size_rule``:
   ``resize`` (MONAI ``Resize``: image and a given alpha bilinear with anti-aliasing, masks and a
   given trimap nearest) or ``pad_crop`` (MONAI ``ResizeWithPadOrCrop``: centred, padded with 0);
5. without an alpha matte the target is the raters' mean, without a trimap the unknown region is
   the raters' disagreement grown by ``trimap_dilation`` pixels (:mod:`scripts.data.targets`),
   both computed after step 4 so they hold exactly for the stored masks;
6. :func:`scripts.data.validation.validate_case` checks the result as it checks every dataset.

Example:
    >>> from scripts.data.case_files import folder_cases
    >>> cases = import_case(folder_cases("qubiq")[0], ImportOptions())  # doctest: +SKIP
    >>> cases[0].name, cases[0].arrays["image"].shape  # doctest: +SKIP
    ('case01', (128, 128))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scripts.data.case_files import CaseFiles
from scripts.data.errors import DatasetValidationError
from scripts.data.image_files import LoadedArray, alpha_to_uint8, image_to_uint8, mask_to_binary, read_array, same_affine
from scripts.data.specs import DatasetSpec
from scripts.data.targets import alpha_from_raters, trimap_from_raters
from scripts.data.validation import validate_case, validate_case_name

__all__ = ["MIN_RATERS", "SIZE_RULES", "ImportOptions", "ImportedCase", "import_case"]

#: a matte from raters needs their disagreement: at least two masks per case
MIN_RATERS = 2
#: how cases of other sizes reach ``spatial_size``
SIZE_RULES = ("resize", "pad_crop")


@dataclass(frozen=True)
class ImportOptions:
    """How cases are read (see the module docstring).

    Args:
        slice_axis: array axis along which 3-D volumes are cut (0, 1 or 2).
        slice_margin: slices kept on each side of the slices with foreground.
        mask_threshold: foreground where ``mask >= mask_threshold``; None: JPEG masks at 128, lossless
            masks must be two-valued.
        spatial_size: (H, W) every case is brought to; None: every case must already share one size.
        size_rule: ``resize`` or ``pad_crop``.
        trimap_dilation: pixels by which a derived unknown region is grown.
    """

    slice_axis: int = 2
    slice_margin: int = 0
    mask_threshold: float | None = None
    spatial_size: tuple[int, int] | None = None
    size_rule: str = "resize"
    trimap_dilation: int = 1

    def __post_init__(self) -> None:
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"--slice_axis must be 0, 1 or 2, got {self.slice_axis}")
        if self.slice_margin < 0:
            raise ValueError(f"--slice_margin must be >= 0, got {self.slice_margin}")
        if self.size_rule not in SIZE_RULES:
            raise ValueError(f"--size_rule must be one of {list(SIZE_RULES)}, got {self.size_rule!r}")
        if self.spatial_size is not None and (len(self.spatial_size) != 2 or min(self.spatial_size) < 1):
            raise ValueError(f"--spatial_size must be two positive sizes H W, got {self.spatial_size}")
        if self.trimap_dilation < 0:
            raise ValueError(f"--trimap_dilation must be >= 0, got {self.trimap_dilation}")


@dataclass
class ImportedCase:
    """One 2-D matting case ready to write.

    Args:
        name: the case name (``<case>`` or ``<case>_s<index>`` for a slice).
        arrays: ``{"image", "alpha", "masks", "trimap"}`` validated uint8 arrays.
        group: the fold group (the volume's case for slices, the manifest's group, or None).
        fold: a fixed fold, or None.
        split: a fixed split, or None.
        source_shape: (H, W) before step 4.
        source_case: the case (folder / manifest row) it comes from.
        raters: number of raters' masks.
        channels: image channels.
        spatial: (H, W) as stored.
    """

    name: str
    arrays: dict | None
    group: str | None
    fold: int | None
    split: str | None
    source_shape: tuple[int, int]
    source_case: str
    raters: int
    channels: int
    spatial: tuple[int, int]


def _error(files: CaseFiles, problem: str) -> DatasetValidationError:
    return DatasetValidationError(f"{files.where or files.case}: {problem}")


def _image_channels(files: CaseFiles, loaded: list[LoadedArray]) -> tuple[np.ndarray, LoadedArray, int]:
    """uint8 image (spatial..., C), the file whose shape / affine the masks must match, and its spatial rank."""
    arrays = []
    for item in loaded:
        values = image_to_uint8(item)
        if item.kind == "pil":
            rank = 2
        elif values.ndim in (2, 3):
            rank = values.ndim
        elif values.ndim == 4:
            rank = 3  # NIfTI (X, Y, Z, C): channels last
        else:
            raise _error(files, f"{item.path.name}: expected a 2-D image or a 3-D volume, got shape {values.shape}")
        arrays.append((values if values.ndim > rank else values[..., None], rank))
    ranks = {r for _, r in arrays}
    shapes = {a.shape[:r] for a, r in arrays}
    if len(ranks) != 1 or len(shapes) != 1:
        sizes = ", ".join(f"{it.path.name} {a.shape[:r]}" for (a, r), it in zip(arrays, loaded))
        raise _error(files, f"the image files differ in shape ({sizes})")
    image = np.concatenate([a for a, _ in arrays], axis=-1)
    return image, loaded[0], ranks.pop()


def _read_same_shape(files: CaseFiles, path, reference: LoadedArray, spatial: tuple, what: str) -> LoadedArray:
    loaded = read_array(path)
    shape = loaded.array.shape
    if loaded.kind == "pil" and len(shape) == 3 and len(spatial) == 2:
        shape = shape[:2]
    if tuple(shape) != tuple(spatial):
        raise _error(files, f"{what} {path.name} has shape {tuple(shape)}, the image {tuple(spatial)}")
    if not same_affine(loaded, reference):
        raise _error(files, f"{what} {path.name} lies on another voxel grid than the image (affines differ)")
    return loaded


def _slices_to_keep(masks: list[np.ndarray], axis: int, margin: int) -> list[int]:
    other = tuple(a for a in range(3) if a != axis)
    marked = np.zeros(masks[0].shape[axis], dtype=bool)
    for m in masks:
        marked |= m.any(axis=other)
    keep = marked.copy()
    for index in np.flatnonzero(marked):
        keep[max(0, index - margin): index + margin + 1] = True
    return np.flatnonzero(keep).tolist()


def _to_size(image: np.ndarray, masks: list[np.ndarray], alpha: np.ndarray | None, trimap: np.ndarray | None,
             size: tuple[int, int], rule: str) -> tuple:
    """Bring one 2-D case to ``size`` with MONAI's transforms (channel-first inside)."""
    from monai.transforms import Resize, ResizeWithPadOrCrop

    def apply(array: np.ndarray, smooth: bool) -> np.ndarray:
        chw = np.moveaxis(array, -1, 0) if array.ndim == 3 else array[None]
        if rule == "resize":
            op = Resize(size, mode="bilinear", anti_aliasing=True) if smooth else Resize(size, mode="nearest")
            out = np.asarray(op(chw.astype(np.float32)))
            out = np.floor(np.clip(out, 0, 255) + 0.5)
        else:
            out = np.asarray(ResizeWithPadOrCrop(size, mode="constant")(chw))
        out = out.astype(array.dtype)
        return np.moveaxis(out, 0, -1) if array.ndim == 3 else out[0]

    return (apply(image, True), [apply(m, False) for m in masks],
            None if alpha is None else apply(alpha, True), None if trimap is None else apply(trimap, False))


def import_case(files: CaseFiles, options: ImportOptions) -> list[ImportedCase]:
    """Read, check and convert one case's files into one (2-D) or several (3-D slices) matting cases.

    Raises:
        DatasetValidationError / DatasetSourceError: one line naming the case (its folder or manifest row)
            or the file, and the problem.
    """
    validate_case_name(files.case)
    if not files.images:
        raise _error(files, "no image file (check --image_pattern or the manifest's image column)")
    if len(files.masks) < MIN_RATERS:
        raise _error(files, f"{len(files.masks)} rater mask(s) found, at least {MIN_RATERS} are needed "
                            "(check --mask_pattern or the manifest's mask columns)")
    image, reference, rank = _image_channels(files, [read_array(p) for p in files.images])
    spatial = image.shape[:rank]
    masks = [mask_to_binary(_read_same_shape(files, p, reference, spatial, "mask"), options.mask_threshold)
             for p in files.masks]
    alpha = trimap = None
    if files.alpha is not None:
        alpha = alpha_to_uint8(_read_same_shape(files, files.alpha, reference, spatial, "alpha"))
    if files.trimap is not None:
        loaded = _read_same_shape(files, files.trimap, reference, spatial, "trimap")
        if loaded.array.dtype != np.uint8:
            raise _error(files, f"trimap {files.trimap.name} must be 8-bit grey (0 / 128 = unknown / 255), "
                                f"got {loaded.array.dtype}")
        trimap = loaded.array
    if rank == 3:
        indices = _slices_to_keep(masks, options.slice_axis, options.slice_margin)
        if not indices:
            raise _error(files, "no rater marked foreground in any slice of the volume")
        width = max(3, len(str(spatial[options.slice_axis] - 1)))
        take = lambda a, i: np.ascontiguousarray(np.take(a, i, axis=options.slice_axis))  # noqa: E731
        parts = [(f"{files.case}_s{i:0{width}d}", take(image, i), [take(m, i) for m in masks],
                  None if alpha is None else take(alpha, i), None if trimap is None else take(trimap, i))
                 for i in indices]
        group = files.group or files.case
    else:
        parts = [(files.case, image, masks, alpha, trimap)]
        group = files.group
    out = []
    for name, img, ms, a, t in parts:
        source_shape = tuple(int(s) for s in img.shape[:2])
        if options.spatial_size is not None and source_shape != tuple(options.spatial_size):
            img, ms, a, t = _to_size(img, ms, a, t, tuple(options.spatial_size), options.size_rule)
        if a is None:
            a = alpha_from_raters(ms)
        if t is None:
            t = trimap_from_raters(a, ms, dilation=options.trimap_dilation)
        channels = img.shape[-1]
        if channels == 1:
            img = img[..., 0]
        spec = DatasetSpec("import", tuple(img.shape[:2]), channels, len(ms))
        arrays = validate_case(name, {"image": np.ascontiguousarray(img), "alpha": a, "masks": ms}, spec, trimap=t)
        out.append(ImportedCase(name, arrays, group, files.fold, files.split, source_shape, files.case, len(ms),
                                channels, tuple(img.shape[:2])))
    return out
