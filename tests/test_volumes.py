"""NIfTI volumes slice by slice in bounded memory (docs/inference.md, "Volumes")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")

AFFINE = np.array([[0.0, -0.8, 0.0, 12.5], [1.2, 0.0, 0.0, -30.0], [0.0, 0.0, 2.5, 4.0], [0, 0, 0, 1]])


def _volume(shape=(24, 20, 5), seed=0, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xx = np.linspace(0, 1, shape[1])[None, :, None]
    base = 60 + 120 * xx + rng.normal(0, 20, shape)
    return np.clip(base, 0, 255).astype(dtype)


def _per_slice(net, volume01: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: each slice through ``predict`` on its own, stacked back along ``axis``."""
    alphas, uncs = [], []
    with torch.no_grad():
        for k in range(volume01.shape[axis]):
            image = np.take(volume01, k, axis=axis).astype(np.float32)
            out = net.predict(torch.from_numpy(image)[None, None])
            alphas.append(out["alpha"][0, 0].numpy())
            uncs.append(out["uncertainty"][0, 0].numpy())
    return np.stack(alphas, axis=axis), np.stack(uncs, axis=axis)


@pytest.mark.parametrize("axis", [2, 0])
def test_volume_maps_equal_the_slices_predicted_one_by_one_with_the_inputs_geometry(tmp_path, tiny_net, axis):
    from scripts.workflows.inference import MattingInferer
    from scripts.workflows.volumes import infer_volume

    volume = _volume()
    nib.save(nib.Nifti1Image(volume, AFFINE), str(tmp_path / "v.nii.gz"))
    outputs = {"alpha": tmp_path / "a.nii.gz", "uncertainty": tmp_path / "u.nii", "mask": tmp_path / "m.nii.gz"}
    stats = infer_volume(tmp_path / "v.nii.gz", tiny_net, MattingInferer(), outputs, axis=axis,
                         slice_batch_pixels=2 * 24 * 20)
    alpha, unc = _per_slice(tiny_net, volume / 255.0, axis)
    written = {k: nib.load(str(p)) for k, p in outputs.items()}
    for image in written.values():
        assert image.shape == volume.shape and np.allclose(image.affine, AFFINE)
    np.testing.assert_allclose(written["alpha"].get_fdata(), alpha, atol=1e-6)
    np.testing.assert_allclose(written["uncertainty"].get_fdata(), unc, atol=1e-6)
    assert written["mask"].get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written["mask"].dataobj), (alpha >= 0.5).astype(np.uint8))
    assert stats["slices"] == volume.shape[axis] and stats["image_scaling"] == "uint8 range [0, 255]"
    assert abs(stats["alpha"]["mean"] - alpha.mean()) < 1e-5


def test_float_volumes_are_scaled_by_the_whole_volume_and_4d_series_are_refused(tmp_path, tiny_net):
    from scripts.workflows.inference import MattingInferer
    from scripts.workflows.volumes import infer_volume, is_volume

    volume = _volume().astype(np.float32) * 8.0 - 1000.0  # CT-like, slices with different ranges
    volume[:, :, 0] += 500.0
    nib.save(nib.Nifti1Image(volume, AFFINE), str(tmp_path / "ct.nii.gz"))
    stats = infer_volume(tmp_path / "ct.nii.gz", tiny_net, MattingInferer(), {"alpha": tmp_path / "a.nii.gz"},
                         slice_batch_pixels=1)
    scaled = (volume - volume.min()) / (volume.max() - volume.min())
    np.testing.assert_allclose(nib.load(str(tmp_path / "a.nii.gz")).get_fdata(), _per_slice(tiny_net, scaled, 2)[0],
                               atol=1e-5)
    assert stats["image_scaling"].startswith("min-max")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.uint8), AFFINE), str(tmp_path / "series.nii.gz"))
    assert is_volume(tmp_path / "series.nii.gz")
    with pytest.raises(ValueError, match=r"series.nii.gz: a NIfTI of shape \(8, 8, 4, 3\) is not one 3-D volume"):
        infer_volume(tmp_path / "series.nii.gz", tiny_net, MattingInferer(), {"alpha": tmp_path / "s.nii.gz"})
    assert not (tmp_path / "s.nii.gz").exists() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.timeout(180)
def test_cli_infers_a_volume_slice_by_slice_and_reads_only_the_pattern(tmp_path, make_tiny_net, capfd):
    """A folder with a volume and its mask: ``--pattern`` keeps the mask out; the maps have the input's geometry."""
    from monai.bundle import run

    from conftest import BUNDLE_ROOT

    net = make_tiny_net().eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    volume = _volume((24, 20, 6), seed=3)
    nib.save(nib.Nifti1Image(volume, AFFINE), str(inp / "case1_image.nii.gz"))
    nib.save(nib.Nifti1Image((volume > 128).astype(np.uint8), AFFINE), str(inp / "case1_mask.nii.gz"))
    run("inference", config_file=str(BUNDLE_ROOT / "configs" / "inference.yaml"),
        meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"), bundle_root=str(BUNDLE_ROOT),
        input_path=str(inp), output_dir=str(out), ckpt_path=str(tmp_path / "model.pt"), pattern="*_image.nii.gz",
        slice_batch_pixels=24 * 20 * 4)
    alpha = nib.load(str(out / "case1_image_alpha.nii.gz"))
    assert alpha.shape == volume.shape and np.allclose(alpha.affine, AFFINE)
    np.testing.assert_allclose(alpha.get_fdata(), _per_slice(net, volume / 255.0, 2)[0], atol=1e-6)
    assert nib.load(str(out / "case1_image_uncertainty.nii.gz")).shape == volume.shape
    assert not list(out.glob("case1_mask*"))
    assert "slices" in capfd.readouterr().err  # the slices' progress bar
