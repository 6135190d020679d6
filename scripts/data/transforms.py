"""MONAI dictionary-transform pipelines of the workflows (training, validation, evaluation).

Every item of a prepared ``datalist.json`` (see ``docs/architecture.md``) is turned into a dict of
float32 tensors:

- ``image``  (C, H, W) in [0, 1] (``image / 255``),
- ``alpha``  (1, H, W) in [0, 1] (``alpha / 255``),
- ``masks``  (K, H, W) the K raters' masks stacked along the channel axis, values {0, 1},
- ``trimap`` (1, H, W) with the raw values {0, 128, 255} (``unknown = trimap == 128``),

plus the untouched ``case`` and ``fold`` entries. Loading uses MONAI's ``LoadImaged`` with the
``PILReader`` and ``reverse_indexing=False`` (arrays keep the source's (row, column) orientation);
a list of file names under one key (``masks``) is read by ``LoadImaged`` as one multi-channel
image, so the raters need no custom stacking transform.

Training adds random flips along both axes and one random resampling that combines a rotation
with an elastic deformation (``Rand2DElasticd``, paper section 3.1), applied with the same random
parameters to every key: bilinear interpolation for ``image`` and ``alpha``, nearest for ``masks``
and ``trimap`` (they stay binary / three-valued). One resampling instead of a rotation followed by
a deformation interpolates the image and the alpha matte only once.

The deterministic part (loading, scaling, checks) comes first in every pipeline so that
``CacheDataset`` caches it; only the random part runs per epoch. Pipelines are cheapest with
``monai.data.set_track_meta(False)`` (the configs do this in ``initialize``): the workflows need
no image metadata (case names travel in ``case``).

Example::

    from monai.data import CacheDataset
    from scripts.data.datalist import load_datalist, split_folds
    train_items, test_items = split_folds(load_datalist("data/phantom"), test_fold=0)
    ds = CacheDataset(train_items, transform=matting_train_transforms(), cache_rate=1.0)
    sample = ds[0]   # sample["masks"].shape == (7, 128, 128)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Rand2DElasticd,
    RandFlipd,
)

__all__ = [
    "MATTING_KEYS",
    "TRIMAP_UNKNOWN",
    "stored_array",
    "match_channels",
    "scale_intensity_to_unit",
    "ScaleIntensityToUnitd",
    "MatchChannelsd",
    "CheckMattingSampled",
    "LoadMattingImaged",
    "matting_load_transforms",
    "matting_augment_transforms",
    "matting_train_transforms",
    "matting_eval_transforms",
]

#: keys of one sample, in the order of the interpolation modes used by the augmentation
MATTING_KEYS = ("image", "alpha", "masks", "trimap")
#: the trimap value of the unknown region
TRIMAP_UNKNOWN = 128


#: Pillow modes of 16-bit pixels -> their type (MONAI's ``PILReader`` returns these pixels as int32)
_PIL_16_BIT_MODES = {"I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16, "I;16N": np.uint16, "I;16S": np.int16}


def stored_array(image: np.ndarray | torch.Tensor, name: str = "image") -> np.ndarray:
    """The image's values as a NumPy array of the type its file stores them in.

    MONAI's ``PILReader`` hands 16-bit PNG / TIFF pixels over as int32 (Pillow's mode ``"I;16"``
    converted to ``"I"``); scaled by the int32 range they would all be ~0.5. The Pillow mode kept
    in the metadata (``meta["mode"]``) gives the stored type back, so the intensity rule scales
    them by the 16-bit range. Other arrays are returned as they are.

    Raises:
        ValueError: values outside the range of the type the metadata names (a corrupt file).
    """
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    meta = getattr(image, "meta", None)
    mode = meta.get("mode") if isinstance(meta, Mapping) else None
    stored = _PIL_16_BIT_MODES.get(mode[0] if isinstance(mode, (list, tuple)) and mode else mode)
    if stored is None or array.dtype == stored or not np.issubdtype(array.dtype, np.integer) or array.size == 0:
        return array
    info = np.iinfo(stored)
    if int(array.min()) < info.min or int(array.max()) > info.max:
        raise ValueError(f"{name}: a {mode} image holds values outside [{info.min}, {info.max}]")
    return array.astype(stored)


def match_channels(image: np.ndarray, channels: int, name: str = "image") -> np.ndarray:
    """A channel-first image (C, ...) in [0, 1] given the network's channel count: the one colour rule.

    Grey -> RGB repeats the channel; RGB or RGBA -> grey is the ITU-R 601 luma of the colour
    channels (``0.299 R + 0.587 G + 0.114 B``, what Pillow's ``convert("L")`` computes; an alpha
    channel is dropped); RGBA -> RGB drops the alpha channel. Used by CLI inference and the MONAI
    Label app alike (docs/inference.md, "Inputs").

    Raises:
        ValueError: any other channel combination, naming the image.
    """
    c = image.shape[0]
    if c == channels:
        return image
    if channels == 1 and c in (3, 4):
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(3, *([1] * (image.ndim - 1)))
        return (np.asarray(image[:3], dtype=np.float32) * weights).sum(0, keepdims=True)
    if channels == 3 and c == 4:
        return image[:3]
    if channels == 3 and c == 1:
        return np.repeat(image, 3, axis=0)
    raise ValueError(f"{name}: the image has {c} channel(s), the network expects {channels} "
                     "(grey, RGB or RGBA images are converted; other channel counts are not)")


def scale_intensity_to_unit(
    image: np.ndarray | torch.Tensor, intensity_range: Sequence[float] | None = None, name: str = "image"
) -> tuple[np.ndarray, str]:
    """The one intensity rule of the bundle: an image's values to float32 in [0, 1].

    Used by training, evaluation, CLI inference and the MONAI Label app alike:

    - ``intensity_range=[low, high]`` (an explicit setting): ``(x - low) / (high - low)``; values
      outside the range are an error naming the image (never clipped silently).
    - ``intensity_range=None``: by the array's type. Integer images are divided by their type's
      range (``uint8``: ``x / 255``, the scaling of every prepared dataset; ``uint16``:
      ``x / 65535``; signed types map ``[min, max]`` of the type to [0, 1]); booleans are 0/1;
      float images already in [0, 1] are kept, other float images (e.g. MRI in a NIfTI file) are
      scaled by their own minimum and maximum, and the returned description says so.

    Args:
        image: the image array (any shape), with its original dtype (load with ``dtype=None``); a
            MONAI ``MetaTensor`` of a 16-bit PNG / TIFF is read as 16-bit (:func:`stored_array`).
        intensity_range: ``None`` or ``[low, high]`` with ``high > low``.
        name: the image's file or case name for the error message.

    Returns:
        the float32 array and a short description of the scaling used (``"uint8 range"``, ...).

    Raises:
        ValueError: empty image, NaN / Inf values, a bad range, values outside ``intensity_range``.

    Example::

        scale_intensity_to_unit(np.array([0, 51, 255], np.uint8))  # ([0.0, 0.2, 1.0], "uint8 range [0, 255]")
    """
    array = stored_array(image, name)
    if array.size == 0:
        raise ValueError(f"{name}: the image is empty (shape {array.shape})")
    if intensity_range is not None:
        if len(intensity_range) != 2 or not float(intensity_range[1]) > float(intensity_range[0]):
            raise ValueError(f"intensity_range must be [low, high] with high > low, got {list(intensity_range)}")
        low, high = float(intensity_range[0]), float(intensity_range[1])
        values = array.astype(np.float32)
        lo, hi = float(values.min()), float(values.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"{name}: the image holds NaN or infinite values")
        if lo < low or hi > high:
            raise ValueError(
                f"{name}: values [{lo:g}, {hi:g}] lie outside intensity_range [{low:g}, {high:g}]; "
                "set intensity_range to the image's range, or null to scale by the image's type"
            )
        return (values - np.float32(low)) / np.float32(high - low), f"range [{low:g}, {high:g}]"
    if array.dtype == np.bool_:
        return array.astype(np.float32), "binary"
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        if info.min == 0:
            return array.astype(np.float32) / np.float32(info.max), f"{array.dtype} range [0, {info.max}]"
        scaled = (array.astype(np.float64) - info.min) / (float(info.max) - info.min)
        return scaled.astype(np.float32), f"{array.dtype} range [{info.min}, {info.max}]"
    values = array.astype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name}: the image holds NaN or infinite values")
    if 0.0 <= lo and hi <= 1.0:
        return values, "float in [0, 1]"
    if hi > lo:
        return (values - np.float32(lo)) / np.float32(hi - lo), f"min-max [{lo:g}, {hi:g}] (float image outside [0, 1])"
    return np.zeros_like(values), f"constant image ({lo:g})"


def _item_name(d: Mapping[Hashable, Any], key: Hashable) -> str:
    """What errors call the item's ``key``: its source file, else its case name, else the key."""
    meta = getattr(d[key], "meta", None) or {}
    return str(meta.get("filename_or_obj") or d.get("case") or key)


def _like_input(value: Any, array: Any) -> Any:
    """``array`` in the container of ``value``: a MetaTensor keeps its metadata, a tensor its device, else as is."""
    if not isinstance(value, torch.Tensor):
        return array
    out = torch.as_tensor(array, device=value.device)
    return type(value)(out, meta=value.meta) if hasattr(value, "meta") else out


class ScaleIntensityToUnitd(MapTransform):
    """:func:`scale_intensity_to_unit` on dictionary keys; errors name the file (``filename_or_obj``).

    Load images with ``LoadImaged(..., dtype=None)`` so that the type of the file decides the
    scaling. The description of the scaling is stored as ``<key>_scaling`` when ``store_scaling``.

    Args:
        keys: image keys.
        intensity_range: ``None`` (by type) or ``[low, high]``; the text ``"null"`` counts as ``None``.
        store_scaling: keep the description in the data dict.
        allow_missing_keys: as in MONAI.

    Example::

        ScaleIntensityToUnitd("image")({"image": np.full((1, 2, 2), 255, np.uint8)})["image"]  # all 1.0
    """

    def __init__(
        self,
        keys: KeysCollection,
        intensity_range: Sequence[float] | str | None = None,
        store_scaling: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(intensity_range, str) and intensity_range.strip().lower() in ("null", "none", ""):
            intensity_range = None
        self.intensity_range = intensity_range
        self.store_scaling = store_scaling

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            scaled, how = scale_intensity_to_unit(value, self.intensity_range, _item_name(d, key))
            d[key] = _like_input(value, scaled)
            if self.store_scaling:
                d[f"{key}_scaling"] = how
        return d


class MatchChannelsd(MapTransform):
    """:func:`match_channels` on dictionary keys (after :class:`ScaleIntensityToUnitd`); errors name the file.

    Args:
        keys: image keys (channel first).
        channels: the network's ``in_channels``.
        allow_missing_keys: as in MONAI.

    Example::

        MatchChannelsd("image", channels=1)({"image": np.ones((3, 2, 2), np.float32)})["image"].shape  # (1, 2, 2)
    """

    def __init__(self, keys: KeysCollection, channels: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = int(channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            matched = np.ascontiguousarray(match_channels(array, self.channels, _item_name(d, key)), dtype=np.float32)
            d[key] = _like_input(value, matched)
        return d


class CheckMattingSampled(MapTransform):
    """Check that a loaded sample is consistent; raise a ``ValueError`` naming the case otherwise.

    Checks: every key present, channel-first 3-D arrays, only finite values (no NaN or Inf: found
    when the case is loaded, with its name, instead of a NaN loss mid-epoch), one spatial shape for
    all keys, one channel for ``alpha`` and ``trimap``, at least one rater in ``masks``, the
    expected number of image channels when ``image_channels`` is given. Runs once per case (it is
    cached with the rest of the deterministic part).

    Args:
        keys: image, alpha, masks and trimap keys (in that order).
        image_channels: expected image channels (1 grey, 3 RGB), ``None`` to accept any.
        case_key: key of the case name used in the error messages.

    Example::

        CheckMattingSampled(MATTING_KEYS, image_channels=1)(sample)
    """

    def __init__(
        self, keys: KeysCollection = MATTING_KEYS, image_channels: int | None = None, case_key: str = "case"
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 4:
            raise ValueError(f"CheckMattingSampled needs 4 keys (image, alpha, masks, trimap), got {self.keys}.")
        self.image_channels = image_channels
        self.case_key = case_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case = d.get(self.case_key, "<unnamed case>")
        image_key, alpha_key, masks_key, trimap_key = self.keys
        shapes = {}
        for key in self.keys:
            if key not in d:
                raise ValueError(f"case {case}: the sample has no {key!r} entry (keys: {sorted(map(str, d))}).")
            value = d[key]
            if not hasattr(value, "shape") or len(value.shape) != 3:
                raise ValueError(
                    f"case {case}: {key!r} must be a channel-first 2-D image (C, H, W), "
                    f"got shape {tuple(getattr(value, 'shape', ()))}."
                )
            shapes[key] = tuple(value.shape)
            values = value if isinstance(value, torch.Tensor) else np.asarray(value)
            finite = torch.isfinite(values).all() if isinstance(values, torch.Tensor) else np.isfinite(values).all()
            if (values.dtype.is_floating_point if isinstance(values, torch.Tensor) else
                    np.issubdtype(values.dtype, np.inexact)) and not bool(finite):
                meta = getattr(value, "meta", None) or {}
                where = f" ({meta['filename_or_obj']})" if meta.get("filename_or_obj") else ""
                raise ValueError(f"case {case}: {key!r}{where} holds NaN or infinite values.")
        spatial = {key: shape[1:] for key, shape in shapes.items()}
        if len(set(spatial.values())) != 1:
            raise ValueError(f"case {case}: image, alpha, masks and trimap differ in size: {spatial}.")
        for key in (alpha_key, trimap_key):
            if shapes[key][0] != 1:
                raise ValueError(f"case {case}: {key!r} must have one channel, got shape {shapes[key]}.")
        if shapes[masks_key][0] < 1:
            raise ValueError(f"case {case}: no rater masks.")
        if self.image_channels is not None and shapes[image_key][0] != self.image_channels:
            raise ValueError(
                f"case {case}: expected {self.image_channels} image channel(s), got shape {shapes[image_key]} "
                "(set in_channels to the dataset's channels)."
            )
        return d


class LoadMattingImaged(LoadImaged):
    """MONAI's ``LoadImaged`` whose errors name the case, the key and the file that cannot be read.

    ``LoadImaged`` reports a truncated or corrupt file as "cannot find a suitable reader ... install
    the reader libraries"; this subclass re-raises a ``ValueError`` such as ``case case07: cannot read
    'alpha' file .../alpha/case07.png: image file is truncated``.

    Args:
        case_key: key of the case name used in the error messages.
        args, kwargs: as ``LoadImaged``.
    """

    def __init__(self, *args: Any, case_key: str = "case", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.case_key = case_key

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        try:
            return super().__call__(data, reader)
        except Exception as e:
            case = dict(data).get(self.case_key, "<unnamed case>")
            for key in self.key_iterator(dict(data)):
                files = data[key] if isinstance(data[key], (list, tuple)) else [data[key]]
                for path in files:
                    reason = _unreadable_reason(path)
                    if reason:
                        raise ValueError(f"case {case}: cannot read {key!r} file {path}: {reason}") from e
            raise


def _unreadable_reason(path: Any) -> str | None:
    """Why the image file ``path`` cannot be read (missing, empty, truncated, corrupt), or None if it can."""
    import os

    from PIL import Image

    if not isinstance(path, (str, os.PathLike)):
        return None
    if not os.path.isfile(path):
        return "no such file"
    if os.path.getsize(path) == 0:
        return "the file is empty"
    try:
        with Image.open(path) as img:
            img.load()
    except Exception as e:  # PIL raises many types for broken files
        lines = str(e).strip().splitlines()
        return f"truncated or corrupt image ({type(e).__name__}: {lines[0] if lines else 'unreadable'})"
    return None


def matting_load_transforms(
    keys: Sequence[str] = MATTING_KEYS, image_channels: int | None = None
) -> list:
    """The deterministic part: load, scale image and alpha to [0, 1] (:func:`scale_intensity_to_unit`,
    ``x / 255`` for the 8-bit files of a prepared dataset), check, make float32 tensors.

    Args:
        keys: image, alpha, masks and trimap keys (in that order).
        image_channels: expected image channels (``None`` accepts any).

    Example::

        sample = Compose(matting_load_transforms())(datalist_item)
    """
    keys = list(keys)
    image_key, alpha_key = keys[0], keys[1]
    return [
        LoadMattingImaged(
            keys=keys,
            reader="PILReader",
            reverse_indexing=False,
            image_only=True,
            ensure_channel_first=True,
            dtype=None,  # keep the file's type: it decides the intensity scaling
        ),
        ScaleIntensityToUnitd(keys=[image_key, alpha_key]),
        CheckMattingSampled(keys=keys, image_channels=image_channels),
        EnsureTyped(keys=keys, data_type="tensor", dtype=torch.float32, track_meta=False),
    ]


def matting_augment_transforms(
    keys: Sequence[str] = MATTING_KEYS,
    flip_prob: float = 0.5,
    deform_prob: float = 0.5,
    rotate_degrees: float = 15.0,
    elastic_spacing: int = 16,
    elastic_magnitude: Sequence[float] = (0.0, 2.0),
    padding_mode: str = "zeros",
) -> list:
    """The random part of the training pipeline (paper section 3.1): flips, rotation, elastic deformation.

    - ``RandFlipd`` along rows and along columns, each with probability ``flip_prob``;
    - ``Rand2DElasticd`` with probability ``deform_prob``: a rotation by an angle drawn from
      ``[-rotate_degrees, rotate_degrees]`` and an elastic deformation whose control points lie
      ``elastic_spacing`` pixels apart and move by ``elastic_magnitude`` (MONAI's magnitude range),
      in one resampling; bilinear for image and alpha, nearest for masks and trimap, the same
      ``padding_mode`` for all (zeros: outside the image is background, alpha 0, trimap 0).

    Args:
        keys: image, alpha, masks and trimap keys (in that order).
        flip_prob: probability of each flip.
        deform_prob: probability of the rotation + elastic resampling (0 disables it).
        rotate_degrees: largest rotation angle in degrees (0: no rotation).
        elastic_spacing: distance of the elastic control points in pixels.
        elastic_magnitude: (low, high) magnitude range of the control point offsets.
        padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"``.

    Example::

        Compose(matting_augment_transforms(deform_prob=0.0))  # flips only
    """
    keys = list(keys)
    if not 0.0 <= flip_prob <= 1.0 or not 0.0 <= deform_prob <= 1.0:
        raise ValueError(f"flip_prob and deform_prob must be in [0, 1], got {flip_prob} and {deform_prob}.")
    modes = ["bilinear", "bilinear", "nearest", "nearest"]
    transforms: list = []
    if flip_prob > 0:
        transforms += [
            RandFlipd(keys=keys, prob=flip_prob, spatial_axis=0),
            RandFlipd(keys=keys, prob=flip_prob, spatial_axis=1),
        ]
    if deform_prob > 0:
        transforms.append(
            Rand2DElasticd(
                keys=keys,
                spacing=(int(elastic_spacing), int(elastic_spacing)),
                magnitude_range=tuple(float(m) for m in elastic_magnitude),
                prob=deform_prob,
                rotate_range=(math.radians(float(rotate_degrees)),) if rotate_degrees else None,
                mode=modes,
                padding_mode=padding_mode,
            )
        )
    return transforms


def matting_train_transforms(
    keys: Sequence[str] = MATTING_KEYS, image_channels: int | None = None, **augment_kwargs: Any
) -> Compose:
    """The training pipeline: :func:`matting_load_transforms` then :func:`matting_augment_transforms`.

    Args:
        keys: image, alpha, masks and trimap keys (in that order).
        image_channels: expected image channels (``None`` accepts any).
        augment_kwargs: arguments of :func:`matting_augment_transforms`.

    Example::

        ds = CacheDataset(train_items, transform=matting_train_transforms(rotate_degrees=10))
    """
    return Compose(
        matting_load_transforms(keys, image_channels) + matting_augment_transforms(keys, **augment_kwargs)
    )


def matting_eval_transforms(keys: Sequence[str] = MATTING_KEYS, image_channels: int | None = None) -> Compose:
    """The deterministic evaluation pipeline (loading, scaling and checks only).

    Example::

        ds = CacheDataset(test_items, transform=matting_eval_transforms())
    """
    return Compose(matting_load_transforms(keys, image_channels))
