"""Matting of 3-D NIfTI volumes (and DICOM series) slice by slice, in memory that does not grow with the depth.

CLI inference (``configs/inference.yaml``) and the MONAI Label app send every NIfTI volume
(3-D, or 4-D with one volume) here: the slices along ``axis`` run through the same
:class:`~scripts.workflows.inference.MattingInferer` as 2-D images, a batch of slices at a time
(at most ``slice_batch_pixels`` pixels), and the maps are written as NIfTI with the input's shape,
affine and header while the slices are processed.

Why not MONAI's ``LoadImage`` + ``SliceInferer``: both hold the whole volume and the whole result
in memory as float (a 512 x 512 x 300 volume: 315 MB per map, and ``SliceInferer`` keeps every
output), so memory grows with the depth. Here

- the input is read a slab at a time through nibabel's array proxy (the reader MONAI's
  ``NibabelReader`` wraps), in the file's stored type; along the last axis only the slab is
  decoded (other axes load the volume once in its stored type, a quarter of float32 for uint8);
- the maps are streamed to gzip as they are computed (the last axis is the file's slowest one,
  so slabs are written in file order; other axes hold the maps in memory until written);
- the intensity rule is the bundle's one (``scripts.data.transforms.scale_intensity_to_unit``),
  taken over the whole volume: integer volumes by their type, float volumes outside [0, 1] by the
  whole volume's minimum and maximum (one streaming pass finds them), never per slab.

A DICOM series folder is read whole with MONAI's ``PydicomReader`` (:func:`read_dicom_series`;
the headers are checked first, ``scripts.data.image_limits.read_dicom_series_header``), scaled by
its rescaled values' minimum and maximum, and written as NIfTI with the reader's affine.

Example::

    from scripts.workflows.volumes import infer_volume
    stats = infer_volume("scan.nii.gz", network, MattingInferer(),
                         {"alpha": "out/scan_alpha.nii.gz", "uncertainty": "out/scan_uncertainty.nii.gz"})
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from scripts.image_formats import NIFTI_SUFFIXES

__all__ = [
    "DEFAULT_SLICE_BATCH_PIXELS",
    "MAP_KINDS",
    "is_dicom_series",
    "is_volume",
    "read_dicom_series",
    "volume_shape",
    "VolumeSlices",
    "NiftiStreamWriter",
    "infer_volume",
    "InferenceCancelled",
]

#: most pixels of the slices run through the network at once (one 512 x 512 slice, four 256 x 256)
DEFAULT_SLICE_BATCH_PIXELS = 512 * 512
#: maps a volume inference can write
MAP_KINDS = ("alpha", "uncertainty", "mask")

PathLike = Union[str, os.PathLike]


def _is_nifti(path: PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def volume_shape(path: PathLike) -> Tuple[int, ...]:
    """The spatial shape of a NIfTI volume from its header: (X, Y, Z).

    A 4-D file with one volume (X, Y, Z, 1) is that volume; several volumes (time series,
    multi-channel) are refused, as are files with more dimensions.

    Raises:
        ValueError: not a 3-D volume (one line naming the file and its shape).
    """
    import nibabel as nib

    if is_dicom_series(path):
        from scripts.data.image_limits import read_dicom_series_header

        rows, cols, files = read_dicom_series_header(path).shape
        return int(cols), int(rows), int(files)  # the readers' (X, Y, Z): columns, rows, slices
    shape = tuple(int(s) for s in nib.load(str(path)).shape)
    if len(shape) < 3 or len(shape) > 4 or (len(shape) == 4 and shape[3] != 1):
        raise ValueError(f"{path}: a NIfTI of shape {shape} is not one 3-D volume (X, Y, Z); 4-D series and "
                         "multi-channel volumes are not supported: split them into 3-D files first")
    return shape[:3]


def is_dicom_series(path: PathLike) -> bool:
    """Whether ``path`` is a folder holding ``.dcm`` files (one DICOM series)."""
    from scripts.data.image_limits import dicom_series_files

    return bool(dicom_series_files(path))


def is_volume(path: PathLike) -> bool:
    """Whether ``path`` is a NIfTI file with more than one slice (its header says so; nothing is decoded)
    or a DICOM series folder (any number of slices)."""
    if is_dicom_series(path):
        return True
    if not _is_nifti(path):
        return False
    import nibabel as nib

    shape = tuple(int(s) for s in nib.load(str(path)).shape)
    return len(shape) >= 3 and math.prod(shape[2:]) > 1


def read_dicom_series(path: PathLike) -> Any:
    """A DICOM series folder as a float32 NIfTI image (in memory) with the series' geometry.

    Read whole with MONAI's ``LoadImage(reader=PydicomReader())``: slices sorted by position,
    rescale slope / intercept applied (float32, e.g. CT in HU), array in the reader's (X, Y, Z) =
    (columns, rows, slices) order and its RAS affine, which becomes the NIfTI's sform and qform
    (scanner coordinates, mm). A 512 x 512 x 300 series holds 315 MB as float32.
    """
    import nibabel as nib
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    image = LoadImage(reader=PydicomReader(), image_only=True, dtype=np.float32)(str(path))
    data = np.asarray(image)
    if data.ndim != 3:
        raise ValueError(f"{path}: the DICOM series reads as shape {tuple(data.shape)}, not one 3-D volume")
    affine = np.asarray(image.affine, dtype=np.float64)
    nifti = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    nifti.set_sform(affine, code=1)
    nifti.set_qform(affine, code=1)
    nifti.header.set_xyzt_units("mm")
    return nifti


class VolumeSlices:
    """Slabs of a NIfTI volume (or a DICOM series) along ``axis``, in the file's stored type, as (k, H, W) arrays.

    Args:
        path: the NIfTI file (3-D, or 4-D with one volume), or a DICOM series folder (read whole,
            :func:`read_dicom_series`).
        axis: the slicing axis of the volume's (X, Y, Z) axes; each slice is the 2-D image of the
            two other axes in their file order (the app's and the CLI's 2-D orientation).
    """

    def __init__(self, path: PathLike, axis: int = 2) -> None:
        import nibabel as nib

        self.path = str(path)
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2 (a volume's X, Y, Z), got {axis!r}")
        self.shape = volume_shape(path)
        self.axis = int(axis)
        self.dicom = is_dicom_series(path)
        self.image = read_dicom_series(path) if self.dicom else nib.load(self.path)
        self._proxy = self.image.dataobj
        self._ndim = len(self.image.shape)
        self._loaded: Optional[np.ndarray] = None  # other axes than the last: the volume, stored type

    @property
    def depth(self) -> int:
        return self.shape[self.axis]

    @property
    def slice_shape(self) -> Tuple[int, int]:
        rest = [s for i, s in enumerate(self.shape) if i != self.axis]
        return int(rest[0]), int(rest[1])

    def _read_last_axis(self, start: int, stop: int) -> np.ndarray:
        index = (slice(None), slice(None), slice(start, stop)) + (0,) * (self._ndim - 3)
        return np.asarray(self._proxy[index])

    def slab(self, start: int, stop: int) -> np.ndarray:
        """Slices ``[start, stop)`` as (stop - start, H, W), stored type (float when the file scales)."""
        if self.axis == 2:
            return np.moveaxis(self._read_last_axis(start, stop), 2, 0)
        if self._loaded is None:
            self._loaded = self._read_last_axis(0, self.shape[2])
        index = [slice(None)] * 3
        index[self.axis] = slice(start, stop)
        return np.moveaxis(self._loaded[tuple(index)], self.axis, 0)

    def value_range(self) -> Tuple[float, float]:
        """Minimum and maximum over the whole volume (one streaming pass along the last axis).

        Raises:
            ValueError: NaN or infinite values, naming the file.
        """
        lo, hi = math.inf, -math.inf
        step = max(1, (64 << 20) // max(1, self.shape[0] * self.shape[1] * 8))  # ~64 MB slabs of float64
        for k in range(0, self.shape[2], step):
            part = self._read_last_axis(k, min(self.shape[2], k + step))
            plo, phi = float(np.min(part)), float(np.max(part))
            if not (math.isfinite(plo) and math.isfinite(phi)):
                raise ValueError(f"{self.path}: the volume holds NaN or infinite values")
            lo, hi = min(lo, plo), max(hi, phi)
        return lo, hi

    def intensity_range(self, explicit: Optional[Sequence[float]] = None) -> Tuple[Optional[Sequence[float]], str]:
        """The range every slab is scaled with, so slabs are scaled as the whole volume would be.

        Integer volumes: ``None`` (by their type); float volumes inside [0, 1]: ``None`` (kept);
        other float volumes: their minimum and maximum; DICOM series: always the minimum and
        maximum of their rescaled values (stored bits say nothing about the range a scanner
        uses); an explicit range is used as given.
        """
        if explicit is not None:
            return explicit, f"range [{float(explicit[0]):g}, {float(explicit[1]):g}]"
        if self.dicom:
            lo, hi = self.value_range()
            if hi == lo:
                return [lo, lo + 1.0], f"constant DICOM series {lo:g}"
            return [lo, hi], f"min-max [{lo:g}, {hi:g}] (DICOM series, rescaled values)"
        dtype = self._proxy.dtype if not _scales(self.image) else np.dtype(np.float64)
        if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            info = np.iinfo(dtype) if dtype != np.bool_ else None
            return None, f"{dtype} range [{info.min}, {info.max}]" if info else "binary"
        lo, hi = self.value_range()
        if 0.0 <= lo and hi <= 1.0:
            return None, "float in [0, 1]"
        if hi == lo:
            return [lo, lo + 1.0], f"constant volume {lo:g}"
        return [lo, hi], f"min-max [{lo:g}, {hi:g}] (float volume outside [0, 1])"


def _scales(image: Any) -> bool:
    slope, inter = image.dataobj.slope, image.dataobj.inter
    return not (slope in (None, 1.0) and inter in (None, 0.0))


class NiftiStreamWriter:
    """Write a NIfTI map with a reference volume's shape, affine and header, slab by slab (bounded memory).

    The header is the reference's (data type float32, or uint8 for masks; no scaling), written
    first; the slabs follow in file order (the last axis), gzip-compressed when the name ends in
    ``.gz``. The file appears under its name only when :meth:`close` succeeds (a temporary next to
    it is removed on any error). Hand-written: nibabel writes whole arrays only.

    Args:
        path: the output file (``.nii`` or ``.nii.gz``).
        reference: the input volume (a nibabel image).
        dtype: ``np.float32`` (maps) or ``np.uint8`` (masks).
    """

    def __init__(self, path: PathLike, reference: Any, dtype: Any = np.float32) -> None:
        from scripts.atomic import temporary_name

        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        header = reference.header.copy()
        header.set_data_dtype(self.dtype)
        header.set_slope_inter(1.0, 0.0)
        if getattr(header, "extensions", None):
            del header.extensions[:]  # the data follows the header directly
        if header.endianness != "<":
            header = header.as_byteswapped("<")
        header.set_data_shape(reference.shape)
        offset = len(header.binaryblock) + 4  # the block, then the 4-byte extension flag (none)
        header["magic"] = b"n+1" if header.sizeof_hdr == 348 else header["magic"]
        header["vox_offset"] = offset
        self.shape = tuple(int(s) for s in reference.shape)
        self.slice_bytes = int(np.prod(self.shape[:2])) * self.dtype.itemsize
        self.written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.parent / temporary_name(self.path.name)
        raw = open(self._tmp, "xb")
        self._raw = raw
        self._file = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if self.path.name.lower().endswith(".gz") else raw
        self._file.write(header.binaryblock + b"\x00" * 4)

    def write(self, slab: np.ndarray) -> None:
        """Append slices (k, H, W) along the last axis (the next k slices of the file)."""
        data = np.ascontiguousarray(np.asarray(slab, dtype=self.dtype.newbyteorder("<")).transpose(0, 2, 1))
        self._file.write(data.tobytes())  # Fortran order of (H, W, k): H fastest, then W, then the slice
        self.written += slab.shape[0]

    def close(self) -> Path:
        """Finish the file and move it under its name.

        Raises:
            ValueError: fewer or more slices written than the reference has.
        """
        try:
            if self.written != int(np.prod(self.shape[2:])):
                raise ValueError(f"{self.path}: {self.written} slices written, the volume has {self.shape[2]}")
            if self._file is not self._raw:
                self._file.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            os.replace(self._tmp, self.path)
            return self.path
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the partial file."""
        for f in (self._file, self._raw):
            try:
                f.close()
            except Exception:  # already closed or broken: the file is removed anyway
                pass
        self._tmp.unlink(missing_ok=True)


class InferenceCancelled(RuntimeError):
    """``infer_volume`` stopped between two batches of slices because ``should_stop`` said so;
    ``slices_done`` of ``slices`` were inferred, nothing was written."""

    def __init__(self, message: str, slices_done: int, slices: int) -> None:
        super().__init__(message)
        self.slices_done, self.slices = int(slices_done), int(slices)


def infer_volume(
    path: PathLike,
    network: torch.nn.Module,
    inferer: Callable[[torch.Tensor, torch.nn.Module], Mapping[str, torch.Tensor]],
    outputs: Mapping[str, PathLike],
    axis: int = 2,
    channels: int = 1,
    intensity_range: Optional[Sequence[float]] = None,
    slice_batch_pixels: int = DEFAULT_SLICE_BATCH_PIXELS,
    mask_threshold: float = 0.5,
    device: Union[str, torch.device] = "cpu",
    progress: bool = False,
    should_stop: Optional[Callable[[], bool]] = None,
) -> Dict[str, Any]:
    """Alpha matte / uncertainty map / mask of every slice of a NIfTI volume, written as NIfTI.

    Args:
        path: the volume (3-D NIfTI, or 4-D with one volume), or a DICOM series folder.
        network: the served network (``predict``), used as it is (no state is changed on it).
        inferer: ``MattingInferer`` (the inferer of 2-D images).
        outputs: ``{"alpha" | "uncertainty" | "mask": output file}`` (``.nii.gz`` or ``.nii``).
        axis: slicing axis (0, 1, 2 of the volume's X, Y, Z; 2, the last, streams the input too).
        channels: the network's ``in_channels`` (a grey volume is repeated for RGB networks).
        intensity_range: ``None`` (the bundle's rule over the whole volume) or ``[low, high]``.
        slice_batch_pixels: most pixels run through the network at once (at least one slice).
        mask_threshold: threshold of the ``mask`` map.
        device: where the network runs.
        progress: show a ``tqdm`` bar of the slices.
        should_stop: asked before each batch of slices; ``True`` stops the work there
            (:class:`InferenceCancelled`, the partial maps removed), e.g. when a server's client left.

    Returns:
        ``{"shape", "axis", "slices", "image_scaling", "alpha": {mean, min, max}, "uncertainty": {mean, max}}``.

    Raises:
        ValueError: not a volume, NaN values, values outside ``intensity_range``, an unknown map.
    """
    from scripts.data.transforms import match_channels, scale_intensity_to_unit

    unknown = sorted(set(outputs) - set(MAP_KINDS))
    if unknown or not outputs:
        raise ValueError(f"outputs must name maps among {list(MAP_KINDS)}, got {sorted(outputs)}")
    slices = VolumeSlices(path, axis)
    scaling_range, how = slices.intensity_range(intensity_range)
    height, width = slices.slice_shape
    per_batch = max(1, int(slice_batch_pixels) // max(1, height * width))
    streamed = slices.axis == 2
    writers: Dict[str, NiftiStreamWriter] = {}
    held: Dict[str, np.ndarray] = {}
    stats = {"alpha_sum": 0.0, "alpha_min": math.inf, "alpha_max": -math.inf, "unc_sum": 0.0, "unc_max": -math.inf}
    bar = None
    try:
        for kind, out in outputs.items():
            if streamed:
                writers[kind] = NiftiStreamWriter(out, slices.image, np.uint8 if kind == "mask" else np.float32)
            else:
                held[kind] = np.empty(slices.shape, np.uint8 if kind == "mask" else np.float32)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=slices.depth, desc=f"{Path(path).name} slices", unit="slice")
        with torch.no_grad():
            for start in range(0, slices.depth, per_batch):
                if should_stop is not None and should_stop():
                    raise InferenceCancelled(f"{path}: stopped after {start} of {slices.depth} slices", start,
                                             slices.depth)
                stop = min(slices.depth, start + per_batch)
                slab, _ = scale_intensity_to_unit(slices.slab(start, stop), scaling_range, str(path))
                batch = match_channels(slab[None], channels, str(path))  # (C, k, H, W)
                x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(batch, 0, 1), dtype=np.float32)).to(device)
                out = inferer(x, network)
                alpha = out["alpha"][:, 0].float().cpu().numpy()
                uncertainty = out["uncertainty"][:, 0].float().cpu().numpy()
                stats["alpha_sum"] += float(alpha.sum(dtype=np.float64))
                stats["alpha_min"] = min(stats["alpha_min"], float(alpha.min()))
                stats["alpha_max"] = max(stats["alpha_max"], float(alpha.max()))
                stats["unc_sum"] += float(uncertainty.sum(dtype=np.float64))
                stats["unc_max"] = max(stats["unc_max"], float(uncertainty.max()))
                maps = {"alpha": alpha, "uncertainty": uncertainty,
                        "mask": (alpha >= mask_threshold).astype(np.uint8)}
                for kind in outputs:
                    if streamed:
                        writers[kind].write(maps[kind])
                    else:
                        index = [slice(None)] * 3
                        index[slices.axis] = slice(start, stop)
                        held[kind][tuple(index)] = np.moveaxis(maps[kind], 0, slices.axis)
                if bar is not None:
                    bar.update(stop - start)
        if streamed:
            for writer in writers.values():
                writer.close()
        else:
            for kind, out in outputs.items():
                writer = NiftiStreamWriter(out, slices.image, held[kind].dtype)
                writers[kind] = writer
                for k in range(slices.shape[2]):
                    writer.write(held[kind][:, :, k][None])
                writer.close()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    voxels = float(math.prod(slices.shape))
    return {
        "shape": list(slices.shape),
        "axis": slices.axis,
        "slices": slices.depth,
        "slices_per_batch": per_batch,
        "image_scaling": how,
        "alpha": {"mean": stats["alpha_sum"] / voxels, "min": stats["alpha_min"], "max": stats["alpha_max"]},
        "uncertainty": {"mean": stats["unc_sum"] / voxels, "max": stats["unc_max"]},
    }
