"""Every input type read as documented (docs/inference.md, "Inputs"): the same content stored as
8-bit or 16-bit PNG / TIFF, grey, RGB or RGBA, or NIfTI gives the same matte through CLI inference.
(The MONAI Label app's answers are compared the same way in tests/test_monailabel_serving.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BUNDLE_ROOT, TINY_NET_ARGS

#: alpha matte differences allowed between storage types of the same content (float rounding only)
ATOL = 2e-5


def content(h: int = 40, w: int = 48) -> np.ndarray:
    """uint8 grey phantom: an off-centre blurred disc on a gradient (every 8-bit value is exact in 16 bits)."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - 0.4 * h) / (0.3 * h), (xx - 0.6 * w) / (0.3 * w))
    return np.clip(30 + 180 * np.clip(1.4 - r, 0, 1) + 40 * xx / w, 0, 255).astype(np.uint8)


def write_same_content(folder, grey: np.ndarray) -> dict:
    """The same image in every stored type the bundle reads: case name -> what it is."""
    import nibabel as nib

    grey16 = grey.astype(np.uint16) * 257  # x / 255 == 257 x / 65535
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgba = np.concatenate([rgb, np.full_like(grey[..., None], 200)], axis=-1)
    Image.fromarray(grey).save(folder / "grey8.png")
    Image.fromarray(grey16).save(folder / "grey16.png")
    Image.fromarray(grey16).save(folder / "grey16tif.tif")
    Image.fromarray(grey).save(folder / "grey8tif.tif")
    Image.fromarray(rgb).save(folder / "rgb8.png")
    Image.fromarray(rgba).save(folder / "rgba8.png")
    nib.save(nib.Nifti1Image(grey, np.eye(4)), str(folder / "grey8nii.nii.gz"))
    nib.save(nib.Nifti1Image(grey.astype(np.float32) / 255.0, np.eye(4)), str(folder / "unitfloat.nii.gz"))
    return {"grey16": "16-bit PNG", "grey16tif": "16-bit TIFF", "grey8tif": "8-bit TIFF", "rgb8": "RGB PNG",
            "rgba8": "RGBA PNG", "grey8nii": "uint8 NIfTI", "unitfloat": "float NIfTI in [0, 1]"}


def test_stored_array_gives_16_bit_pixels_back_their_type(tmp_path):
    from monai.data import PILReader
    from monai.transforms import LoadImage

    from scripts.data.transforms import scale_intensity_to_unit, stored_array

    values = np.array([[0, 1000, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "a.png")
    loaded = LoadImage(reader=PILReader(reverse_indexing=False), image_only=True, dtype=None)(str(tmp_path / "a.png"))
    assert loaded.dtype == torch.int32  # what MONAI's reader hands over
    assert stored_array(loaded).dtype == np.uint16
    scaled, how = scale_intensity_to_unit(loaded)
    np.testing.assert_allclose(scaled, values / 65535.0, atol=1e-7)
    assert how == "uint16 range [0, 65535]"


@pytest.mark.timeout(180)
def test_cli_gives_the_same_matte_for_the_same_content_in_every_stored_type(tmp_path):
    from monai.bundle import run

    from scripts.networks import MedicalMattingNet

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    grey = content()
    kinds = write_same_content(inp, grey)
    torch.manual_seed(5)
    net = MedicalMattingNet(**TINY_NET_ARGS).eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    run("inference", config_file=str(BUNDLE_ROOT / "configs" / "inference.yaml"),
        meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"), bundle_root=str(BUNDLE_ROOT),
        input_path=str(inp), output_dir=str(out), ckpt_path=str(tmp_path / "model.pt"))
    reference = np.load(out / "grey8_alpha.npy")
    with torch.no_grad():
        expected = net.predict(torch.from_numpy(grey.astype(np.float32) / 255.0)[None, None])["alpha"][0, 0].numpy()
    np.testing.assert_allclose(reference, expected, atol=1e-6)
    assert float(reference.max() - reference.min()) > 1e-3  # a matte that depends on the image
    for case, kind in kinds.items():
        alpha = np.load(out / f"{case}_alpha.npy")
        assert np.abs(alpha - reference).max() <= ATOL, f"{kind}: max difference {np.abs(alpha - reference).max():.4g}"
