"""Write predicted alpha mattes and uncertainty maps to disk, one set of files per case.

For a case ``<case>`` four files are written into ``output_dir``:

- ``<case>_alpha.png``        8-bit grey, ``round(alpha * 255)`` (for viewing)
- ``<case>_alpha.npy``        float32, the exact predicted values
- ``<case>_uncertainty.png``  8-bit grey, ``round(uncertainty * 255)``
- ``<case>_uncertainty.npy``  float32, the exact values

A case whose input image is a NIfTI file gets ``<case>_alpha.nii.gz`` / ``<case>_uncertainty.nii.gz``
instead of the PNG files: float32 maps with the input's shape, affine and header
(:func:`save_map`, which the MONAI Label app uses for its answers too).

Arrays are written as (H, W) in the same row-major (row, column) order they have in memory:
no transpose, so a PNG read back with PIL / ``np.asarray(Image.open(...))`` or with MONAI's
``PILReader(reverse_indexing=False)`` has the orientation of the input image when the input was
loaded that way too. Every file is written to a temporary file in ``output_dir`` first and then
moved into place with ``os.replace``, so a reader never sees a half-written file.

Why not MONAI's ``SaveImage(d)`` / ``PILWriter``: checked with MONAI 1.6.1, ``PILWriter`` converts
``[0, 1]`` floats to 8 bits by truncation (``(255 * x).astype(uint8)``: 0.5 -> 127, 0.999 -> 254)
instead of rounding, transposes (H, W) arrays by default (``reverse_indexing=True``), writes in
place (not atomically), has no ``.npy`` output and names files after the source image's metadata.
The PNG and NumPy files are therefore written here with Pillow and NumPy directly.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from monai.transforms import MapTransform
from PIL import Image

from scripts.atomic import atomic_write
from scripts.image_formats import NIFTI_SUFFIXES

__all__ = [
    "MattingPredictionWriter",
    "SaveMattingPredictiond",
    "save_map",
    "write_matting_prediction",
    "to_uint8",
    "case_name_from_path",
    "matting_items_from_output",
]

ArrayLike = Union[np.ndarray, torch.Tensor]

# file name suffixes understood as part of a file's extension (longest first)
_MULTI_SUFFIXES = (".nii.gz", ".nrrd.gz", ".mha.gz")
_SAFE_CASE = re.compile(r"^[A-Za-z0-9._+\-=@ ()\[\]]+$")


def case_name_from_path(path: Union[str, os.PathLike]) -> str:
    """The case name of an image file: its base name without the extension (``a/b/x.nii.gz`` -> ``x``)."""
    name = Path(str(path)).name
    for suffix in _MULTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _check_case(case: str) -> str:
    case = str(case)
    if not case or case in (".", "..") or not _SAFE_CASE.match(case):
        raise ValueError(
            f"case name {case!r} cannot be used as a file name (allowed: letters, digits, spaces and ._+-=@()[])"
        )
    return case


def _as_2d(array: ArrayLike, case: str, what: str) -> np.ndarray:
    """(H, W), (1, H, W) or (1, 1, H, W) array/tensor -> float32 (H, W) numpy array, checked."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{case}: {what} must be (H, W) or (1, H, W), got shape {tuple(np.shape(array))}")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{case}: {what} contains NaN or infinite values")
    return array


def to_uint8(values: np.ndarray) -> np.ndarray:
    """``round(values * 255)`` clipped to 0..255 as uint8 (values expected in [0, 1])."""
    return np.clip(np.rint(np.asarray(values, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def _is_nifti(path: Optional[Union[str, os.PathLike]]) -> bool:
    return path is not None and str(path).lower().endswith(NIFTI_SUFFIXES)


def save_map(
    values: ArrayLike, path: Union[str, os.PathLike], kind: str = "alpha", reference: Optional[Union[str, os.PathLike]] = None
) -> Path:
    """Write one result map atomically: NIfTI with the geometry of a NIfTI ``reference``, else 8-bit PNG.

    Args:
        values: the map with the reference image's spatial shape (or (H, W) for PNG), values in
            [0, 1] (``kind="mask"``: {0, 1}).
        path: the file to write; its ending must be ``.nii.gz`` for NIfTI, ``.png`` for PNG.
        kind: ``"alpha"``, ``"uncertainty"`` or ``"mask"`` (PNG: mask values are written as 0/1,
            maps as ``round(value * 255)``; NIfTI: mask as uint8, maps as float32).
        reference: the input image the map belongs to; a NIfTI file lends its shape, affine and header.

    Raises:
        ValueError: the map's size does not match the reference, or a PNG map that is not 2-D.
    """
    path = Path(path)
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if _is_nifti(reference):
        import nibabel as nib

        ref = nib.load(str(reference))
        resampling = np.eye(4)
        if array.size != int(np.prod(ref.shape)):
            # a 2-D map decoded at another size (output_size): same field of view, other voxel size
            grid = np.squeeze(array).shape
            if len(grid) != 2 or int(np.prod(ref.shape[2:])) != 1:
                raise ValueError(f"result of shape {array.shape} does not fit {reference} of shape {ref.shape}")
            for axis in range(2):
                step = ref.shape[axis] / grid[axis]
                resampling[axis, axis], resampling[axis, 3] = step, (step - 1.0) / 2.0  # pixel centres
            shape = grid + tuple(ref.shape[2:])
        else:
            shape = ref.shape
        data = array.reshape(shape).astype(np.uint8 if kind == "mask" else np.float32)
        header = ref.header.copy()
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(1.0, 0.0)
        image = type(ref)(data, ref.affine @ resampling, header)
        image.set_qform(ref.get_qform() @ resampling, code=int(ref.header["qform_code"]))
        image.set_sform(ref.get_sform() @ resampling, code=int(ref.header["sform_code"]))
        content = image.to_bytes()
        if path.name.lower().endswith(".gz"):
            content = gzip.compress(content, mtime=0)
        atomic_write(path, lambda f: f.write(content))
        return path
    array = np.squeeze(array)
    if array.ndim != 2:
        raise ValueError(f"a PNG result must be 2-D (H, W), got shape {array.shape}")
    data = np.clip(np.rint(array), 0, 1).astype(np.uint8) if kind == "mask" else to_uint8(array)
    png = Image.fromarray(data)  # (H, W) uint8 -> mode "L", rows stay rows
    atomic_write(path, lambda f: png.save(f, format="PNG"))
    return path


def write_matting_prediction(
    output_dir: Union[str, os.PathLike],
    case: str,
    alpha: ArrayLike,
    uncertainty: Optional[ArrayLike] = None,
    reference: Optional[Union[str, os.PathLike]] = None,
) -> Dict[str, Path]:
    """Write one case's alpha matte (and uncertainty map) as 8-bit PNG and exact float32 ``.npy``.

    Args:
        output_dir: folder for the files (created when missing).
        case: case name, used as the file name prefix (no path separators).
        alpha: predicted alpha matte in [0, 1], (H, W) or (1, H, W), numpy array or tensor.
        uncertainty: uncertainty map in [0, 1] of the same kind, or ``None`` to write the alpha only.
        reference: the input image; a NIfTI input gets NIfTI maps with its geometry instead of PNG.

    Returns:
        the written paths, keys ``alpha_png`` (or ``alpha_nii``), ``alpha_npy`` and, with an
        uncertainty map, ``uncertainty_png`` (or ``uncertainty_nii``), ``uncertainty_npy``.

    Raises:
        ValueError: a bad case name, an array that is not 2-D or that holds NaN / inf values.

    Example::

        paths = write_matting_prediction("out", "case01", alpha=np.zeros((128, 128)), uncertainty=u)
        np.load(paths["alpha_npy"])  # float32 (128, 128)
    """
    case = _check_case(case)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    maps = {"alpha": _as_2d(alpha, case, "alpha")}
    if uncertainty is not None:
        maps["uncertainty"] = _as_2d(uncertainty, case, "uncertainty")
    written: Dict[str, Path] = {}
    for kind, values in maps.items():
        if _is_nifti(reference):
            written[f"{kind}_nii"] = save_map(values, out / f"{case}_{kind}.nii.gz", kind, reference)
        else:
            written[f"{kind}_png"] = save_map(values, out / f"{case}_{kind}.png", kind)
        npy_path = out / f"{case}_{kind}.npy"
        atomic_write(npy_path, lambda f, values=values: np.save(f, values, allow_pickle=False))
        written[f"{kind}_npy"] = npy_path
    return written


def _meta_filename(value: Any) -> Optional[str]:
    meta = getattr(value, "meta", None)
    if isinstance(meta, Mapping):
        name = meta.get("filename_or_obj")
        if isinstance(name, (list, tuple)):  # collated metadata
            name = name[0] if len(name) == 1 else None
        if isinstance(name, (str, os.PathLike)) and str(name):
            return str(name)
    return None


def _split_batch(value: Any, n: int) -> List[Any]:
    """Split a collated value (tensor, array, list) into ``n`` per-case values."""
    if value is None:
        return [None] * n
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.ndim == 4:
            return [value[i] for i in range(value.shape[0])]
        if n == 1:
            return [value]
        raise ValueError(f"cannot split a value of shape {tuple(value.shape)} into {n} cases")
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"expected {n} values in the batch, got {len(value)}")
        return list(value)
    if n == 1:
        return [value]
    raise ValueError(f"cannot split a {type(value).__name__} into {n} cases")


def matting_items_from_output(
    output: Any,
    batch: Any = None,
    pred_key: str = "pred",
    uncertainty_key: Optional[str] = "uncertainty",
    case_key: str = "case",
    image_key: str = "image",
) -> List[Dict[str, Any]]:
    """Per-case ``{"case", "alpha", "uncertainty"}`` dicts from an engine's output (and batch).

    ``output`` is what MONAI engines leave in ``engine.state.output``: a list of per-case dicts
    (``decollate=True``, the default) or one batched dict whose ``pred_key`` is (B, 1, H, W).
    The case name comes from, in this order: ``output[case_key]``, ``batch[case_key]``, the
    ``filename_or_obj`` metadata of ``output[image_key]`` or ``batch[image_key]`` (a MetaTensor),
    reduced to the file's base name without extension.

    Args:
        output: ``engine.state.output``.
        batch: ``engine.state.batch`` (same layout), used for the case name when the output lacks it.
        pred_key: key of the alpha matte.
        uncertainty_key: key of the uncertainty map (``None``: alpha only; a missing key is allowed).
        case_key: key of the case name.
        image_key: key of the input image (for its file name metadata).
    """
    if isinstance(output, Mapping):
        if pred_key not in output:
            raise KeyError(f"engine output has no {pred_key!r} key (keys: {sorted(map(str, output))})")
        preds = output[pred_key]
        n = preds.shape[0] if isinstance(preds, (torch.Tensor, np.ndarray)) and preds.ndim == 4 else 1
        keys = [k for k in (pred_key, uncertainty_key, case_key, image_key) if k is not None and k in output]
        per_key = {k: _split_batch(output[k], n) for k in keys}
        outputs = [{k: per_key[k][i] for k in keys} for i in range(n)]
        batches: List[Any] = [None] * n
        if isinstance(batch, Mapping):
            bkeys = [k for k in (case_key, image_key) if k in batch]
            per_bkey = {k: _split_batch(batch[k], n) for k in bkeys}
            batches = [{k: per_bkey[k][i] for k in bkeys} for i in range(n)]
    elif isinstance(output, Sequence) and not isinstance(output, (str, bytes)):
        outputs = list(output)
        batches = list(batch) if isinstance(batch, Sequence) and len(batch) == len(outputs) else [None] * len(outputs)
    else:
        raise TypeError(f"engine output must be a dict or a list of dicts, got {type(output).__name__}")

    items = []
    for i, (out, bat) in enumerate(zip(outputs, batches)):
        if not isinstance(out, Mapping) or pred_key not in out:
            raise KeyError(f"engine output item {i} has no {pred_key!r} key")
        case = None
        for source in (out, bat):
            if isinstance(source, Mapping) and source.get(case_key) is not None:
                case = source[case_key]
                break
        if isinstance(case, (list, tuple)) and len(case) == 1:
            case = case[0]
        if case is None:
            for source in (out, bat):
                if isinstance(source, Mapping) and image_key in source:
                    filename = _meta_filename(source[image_key])
                    if filename:
                        case = case_name_from_path(filename)
                        break
        if case is None:
            raise ValueError(
                f"engine output item {i}: no case name (no {case_key!r} key and no image file name metadata)"
            )
        unc = out.get(uncertainty_key) if uncertainty_key is not None else None
        reference = None
        for source in (out, bat):
            if isinstance(source, Mapping) and image_key in source:
                reference = reference or _meta_filename(source[image_key])
        items.append({"case": str(case), "alpha": out[pred_key], "uncertainty": unc, "reference": reference})
    return items


class MattingPredictionWriter:
    """Ignite handler writing every case's predicted alpha matte and uncertainty map after each iteration.

    Files per case (see :func:`write_matting_prediction`): ``<case>_alpha.png``, ``<case>_alpha.npy``,
    ``<case>_uncertainty.png``, ``<case>_uncertainty.npy`` in ``output_dir``.

    Args:
        output_dir: folder for the files (created when missing).
        output_transform: maps ``engine.state.output`` to what :func:`matting_items_from_output`
            reads (default: the output unchanged: a dict or a list of dicts with ``pred_key`` and
            ``uncertainty_key``).
        batch_transform: maps ``engine.state.batch`` likewise (default unchanged); used only for
            the case names.
        pred_key: key of the alpha matte ((1, H, W) per case or (B, 1, H, W) batched).
        uncertainty_key: key of the uncertainty map; ``None`` writes the alpha matte only.
        case_key: key of the case name (else the image's ``filename_or_obj`` metadata is used).
        image_key: key of the input image.
        name: logger name (default: the engine's logger).

    Example::

        writer = MattingPredictionWriter(output_dir="eval/predictions")
        writer.attach(evaluator)          # a SupervisedEvaluator whose output has "pred", "uncertainty"

    In a bundle config::

        {"_target_": "scripts.handlers.prediction_writer.MattingPredictionWriter",
         "output_dir": "@output_dir"}
    """

    def __init__(
        self,
        output_dir: Union[str, os.PathLike],
        output_transform: Callable[[Any], Any] = lambda x: x,
        batch_transform: Callable[[Any], Any] = lambda x: x,
        pred_key: str = "pred",
        uncertainty_key: Optional[str] = "uncertainty",
        case_key: str = "case",
        image_key: str = "image",
        name: Optional[str] = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.output_transform = output_transform
        self.batch_transform = batch_transform
        self.pred_key = pred_key
        self.uncertainty_key = uncertainty_key
        self.case_key = case_key
        self.image_key = image_key
        self._name = name
        self.logger = logging.getLogger(name)
        self.written: List[str] = []

    def attach(self, engine) -> None:
        """Register the writer on ``engine``'s ``ITERATION_COMPLETED`` event."""
        from ignite.engine import Events

        if self._name is None:
            self.logger = engine.logger
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        items = matting_items_from_output(
            self.output_transform(engine.state.output),
            self.batch_transform(engine.state.batch),
            pred_key=self.pred_key,
            uncertainty_key=self.uncertainty_key,
            case_key=self.case_key,
            image_key=self.image_key,
        )
        for item in items:
            write_matting_prediction(
                self.output_dir, item["case"], item["alpha"], item["uncertainty"], item["reference"]
            )
            self.written.append(item["case"])
            self.logger.debug(f"wrote the prediction of {item['case']} to {self.output_dir}")


def save_inference_figure(
    image: ArrayLike, alpha: ArrayLike, uncertainty: ArrayLike, path: Union[str, os.PathLike], title: str = "", dpi: int = 100
) -> Path:
    """One row image | alpha matte | uncertainty map, side by side, written atomically (``--figure true``).

    Args:
        image: (H, W), (1, H, W) grey or (3, H, W) / (H, W, 3) RGB in [0, 1] (or uint8).
        alpha, uncertainty: (H', W') maps in [0, 1] (any size: each panel shows its own grid).
        path: the figure file (``.png``).
        title: text above the row (the case name).
    """
    from matplotlib.figure import Figure  # imported when drawing: configs import this module

    from scripts.handlers.fold_figure import MAP_COLORMAPS, as_map, as_image, save_figure

    panels = [("image", as_image(image, f"{title}: image"), None),
              ("alpha", as_map(alpha, f"{title}: alpha"), MAP_COLORMAPS["alpha"]),
              ("uncertainty", as_map(uncertainty, f"{title}: uncertainty"), MAP_COLORMAPS["uncertainty"])]
    fig = Figure(figsize=(7.5, 2.9), layout="constrained")
    for ax, (name, data, cmap) in zip(fig.subplots(1, 3), panels):
        style = dict(cmap=cmap, vmin=0.0, vmax=1.0) if cmap else (dict(cmap="gray", vmin=0.0, vmax=1.0) if data.ndim == 2 else {})
        handle = ax.imshow(data, interpolation="nearest", **style)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if cmap:
            fig.colorbar(handle, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi)


class SaveMattingPredictiond(MapTransform):
    """Post-processing transform writing one decollated prediction, like MONAI's ``SaveImaged``.

    The files are those of :func:`write_matting_prediction` (PNG or NIfTI with the input's geometry,
    plus ``.npy``); the data dict is returned unchanged, so ``pred`` stays the last output for
    whatever consumes it next. The case name is ``data["case"]`` or the input's file name.

    Args:
        output_dir: folder for the files.
        pred_key, uncertainty_key, image_key, case_key: keys of the decollated item.
        figure: also write ``<case>_figure.png``, image | alpha | uncertainty side by side
            (:func:`save_inference_figure`; the strings ``"true"`` / ``"false"`` are accepted).

    Example (``postprocessing`` of configs/inference.yaml)::

        {"_target_": "scripts.handlers.prediction_writer.SaveMattingPredictiond", "output_dir": "@output_dir"}
    """

    def __init__(
        self,
        output_dir: Union[str, os.PathLike],
        pred_key: str = "pred",
        uncertainty_key: Optional[str] = "uncertainty",
        image_key: str = "image",
        case_key: str = "case",
        figure: Union[bool, str] = False,
    ) -> None:
        super().__init__(keys=[pred_key], allow_missing_keys=False)
        self.output_dir = Path(output_dir)
        self.pred_key, self.uncertainty_key = pred_key, uncertainty_key
        self.image_key, self.case_key = image_key, case_key
        self.figure = str(figure).strip().lower() in ("true", "1", "yes", "on")

    def __call__(self, data: Mapping[Any, Any]) -> Dict[Any, Any]:
        (item,) = matting_items_from_output(
            [data], pred_key=self.pred_key, uncertainty_key=self.uncertainty_key,
            case_key=self.case_key, image_key=self.image_key,
        )
        write_matting_prediction(self.output_dir, item["case"], item["alpha"], item["uncertainty"], item["reference"])
        if self.figure:
            image = data.get(self.image_key)
            image = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
            save_inference_figure(image, item["alpha"], item["uncertainty"],
                                  self.output_dir / f"{item['case']}_figure.png", title=str(item["case"]))
        return dict(data)
