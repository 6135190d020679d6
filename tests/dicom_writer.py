"""For the DICOM tests: write a synthetic CT series with pydicom, one file per slice.

``write_ct_series(folder, volume, ...)``: ``volume`` (Z, rows, columns) of uint16 or int16 (signed pixel
representation for int16), slice z at ``origin + z * slice_step * (row_dir x col_dir)`` (patient LPS, mm),
files numbered in reverse slice order so that a reader has to sort by position, not by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def write_ct_series(
    folder: Path,
    volume: np.ndarray,
    row_dir: Sequence[float] = (1.0, 0.0, 0.0),
    col_dir: Sequence[float] = (0.0, 1.0, 0.0),
    spacing: Sequence[float] = (0.7, 0.7),
    slice_step: float = 2.0,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    slope: float = 1.0,
    intercept: float = 0.0,
    series: str | None = None,
    prefix: str = "im",
) -> None:
    """One CT file per slice of ``volume`` in ``folder`` (created), ``series`` (default: a new UID)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series = series or generate_uid()
    row_dir, col_dir, origin = np.asarray(row_dir, float), np.asarray(col_dir, float), np.asarray(origin, float)
    normal = np.cross(row_dir, col_dir)
    for z in range(volume.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = series, "1.2.3", "1.2.3.4"
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "anon", z + 1
        ds.ImagePositionPatient = [float(v) for v in origin + slice_step * z * normal]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing, ds.SliceThickness = [float(v) for v in spacing], slice_step
        ds.Rows, ds.Columns = volume.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        signed = volume.dtype == np.int16
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(volume[z]).tobytes()
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(folder / f"{prefix}{volume.shape[0] - z:03d}.dcm", write_like_original=False)
