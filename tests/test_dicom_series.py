"""DICOM series folders as volumes, slice by slice, written as NIfTI with the series' geometry
(docs/inference.md, "Volumes")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dicom_writer import write_ct_series

nib = pytest.importorskip("nibabel")
pytest.importorskip("pydicom")

#: an oblique series: rows along -x, columns along +y (patient LPS), 0.5 x 0.8 mm pixels, 2.5 mm slices
ROW_DIR, COL_DIR = np.array([0.0, 1.0, 0.0]), np.array([-1.0, 0.0, 0.0])
SPACING, SLICE_STEP, ORIGIN = (0.5, 0.8), 2.5, np.array([10.0, 20.0, 30.0])


def _write_series(folder: Path, volume: np.ndarray, **kwargs) -> None:
    """The oblique series of this module (ROW_DIR, COL_DIR, SPACING, SLICE_STEP, ORIGIN)."""
    write_ct_series(folder, volume, ROW_DIR, COL_DIR, SPACING, SLICE_STEP, ORIGIN, **kwargs)


def _world_ras(row: int, col: int, z: int) -> np.ndarray:
    """Where the DICOM standard puts pixel (row, col) of slice z, in RAS (NIfTI's) millimetres."""
    lps = ORIGIN + col * SPACING[1] * ROW_DIR + row * SPACING[0] * COL_DIR + z * SLICE_STEP * np.cross(ROW_DIR, COL_DIR)
    return lps * np.array([-1.0, -1.0, 1.0])


def _predict_slices(net, slices01: np.ndarray) -> np.ndarray:
    """The 2-D inference of each (rows, columns) slice, in the reader's (columns, rows, slices) order."""
    alphas = []
    with torch.no_grad():
        for image in slices01:
            x = torch.from_numpy(np.ascontiguousarray(image.T, np.float32))[None, None]
            alphas.append(net.predict(x)["alpha"][0, 0].numpy())
    return np.stack(alphas, axis=2)


def _ct(shape=(4, 20, 24), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, shape[2])[None, None, :]
    return np.clip(300 + 900 * ramp + rng.normal(0, 80, shape), 0, 4000).astype(np.uint16)


@pytest.mark.timeout(180)
def test_cli_writes_a_dicom_series_as_nifti_with_its_geometry_and_each_slice_inferred_in_2d(tmp_path, make_tiny_net):
    """A folder of series folders: uint16 with rescale slope / intercept, scaled by the series' min-max."""
    from monai.bundle import run

    from conftest import BUNDLE_ROOT

    net = make_tiny_net().eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    stored = _ct()
    _write_series(tmp_path / "in" / "ct1", stored, slope=2.0, intercept=-1024.0)
    (tmp_path / "in" / "notes").mkdir()  # a folder without .dcm files is no series
    run("inference", config_file=str(BUNDLE_ROOT / "configs" / "inference.yaml"),
        meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"), bundle_root=str(BUNDLE_ROOT),
        input_path=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), ckpt_path=str(tmp_path / "model.pt"),
        slice_batch_pixels=20 * 24 * 3, progress=False)
    alpha = nib.load(str(tmp_path / "out" / "ct1_alpha.nii.gz"))
    assert alpha.shape == (24, 20, 4)  # (columns, rows, slices)
    for row, col, z in [(0, 0, 0), (19, 0, 0), (0, 23, 3), (7, 11, 2)]:
        np.testing.assert_allclose(alpha.affine @ [col, row, z, 1], [*_world_ras(row, col, z), 1], atol=1e-4)
    values = stored.astype(np.float64) * 2.0 - 1024.0
    scaled = (values - values.min()) / (values.max() - values.min())
    np.testing.assert_allclose(alpha.get_fdata(), _predict_slices(net, scaled), atol=1e-5)
    assert nib.load(str(tmp_path / "out" / "ct1_uncertainty.nii.gz")).shape == (24, 20, 4)


def test_int16_series_is_scaled_by_its_own_range_and_headers_are_checked_before_reading(tmp_path, tiny_net):
    from scripts.data.image_limits import ImageTooLargeError, UnreadableImageError, check_image_header
    from scripts.workflows.inference import MattingInferer
    from scripts.workflows.volumes import infer_volume

    stored = (_ct(seed=1).astype(np.int32) - 1200).astype(np.int16)  # negative stored values, no rescale
    _write_series(tmp_path / "s", stored)
    stats = infer_volume(tmp_path / "s", tiny_net, MattingInferer(), {"alpha": tmp_path / "a.nii.gz"},
                         slice_batch_pixels=1)
    lo, hi = float(stored.min()), float(stored.max())
    assert stats["image_scaling"] == f"min-max [{lo:g}, {hi:g}] (DICOM series, rescaled values)"
    np.testing.assert_allclose(nib.load(str(tmp_path / "a.nii.gz")).get_fdata(),
                               _predict_slices(tiny_net, (stored - lo) / (hi - lo)), atol=1e-5)
    # the pixel budget counts every slice, from the headers alone
    assert check_image_header(tmp_path / "s").shape == (20, 24, 4)
    with pytest.raises(ImageTooLargeError, match=r"/s: volume 20 x 24 x 4 \(0.0 M voxels\) is above the maximum"):
        check_image_header(tmp_path / "s", max_voxels=20 * 24 * 3)
    _write_series(tmp_path / "two", stored[:2])
    _write_series(tmp_path / "two", stored[:1], series="1.2.3.999", prefix="other")  # another series beside it
    with pytest.raises(UnreadableImageError, match=r"/two: holds 2 DICOM series; put each series in its own folder"):
        check_image_header(tmp_path / "two")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.dcm").write_bytes(b"not dicom")
    with pytest.raises(UnreadableImageError, match=r"/bad: x.dcm is not a readable DICOM image"):
        check_image_header(tmp_path / "bad")
