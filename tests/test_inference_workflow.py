"""Inference workflow: ``python -m monai.bundle run inference --config_file configs/inference.yaml``."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_NET_ARGS
import torch
from PIL import Image

from scripts.data.transforms import scale_intensity_to_unit
from scripts.networks import MedicalMattingNet
from scripts.workflows.inference import EnsureImage2Dd, MattingInferer, list_input_images, load_trained_network

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
NIFTI_AFFINE = np.array([[0.0, -0.8, 0.0, 12.5], [1.2, 0.0, 0.0, -30.0], [0.0, 0.0, 2.5, 4.0], [0, 0, 0, 1]])


def _phantom(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 grey image: a blurred off-centre ellipse on a noisy background (not symmetric)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt(((yy - 0.4 * h) / (0.25 * h)) ** 2 + ((xx - 0.6 * w) / (0.3 * w)) ** 2)
    img = 40 + 160 * np.clip(1.5 - r, 0, 1) + rng.normal(0, 10, (h, w)) + 30 * (xx / w)
    return np.clip(img, 0, 255).astype(np.uint8)


def _tiny_net(seed: int) -> MedicalMattingNet:
    torch.manual_seed(seed)
    net = MedicalMattingNet(**TINY_NET_ARGS)
    with torch.no_grad():  # move the weights away from any fresh initialisation
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _expected(net: MedicalMattingNet, img_u8: np.ndarray, output_size=None):
    x = torch.from_numpy(img_u8.astype(np.float32) / 255.0)[None, None]
    with torch.no_grad():
        out = net.predict(x, output_size=output_size)
    return out["alpha"][0, 0].numpy(), out["uncertainty"][0, 0].numpy()


def _run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(BUNDLE_ROOT))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml"]
    return subprocess.run(cmd + list(args), cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(180)
def test_folder_of_png_and_nifti_with_output_size_matches_the_checkpointed_network(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    images = {f"p{i}": _phantom(32, 32, seed=i) for i in range(3)}
    for case, img in images.items():
        Image.fromarray(img).save(inp / f"{case}.png")
    (inp / "README.txt").write_text("not an image")
    import nibabel as nib

    images["n0"] = _phantom(32, 32, seed=9)  # a 2-D 8-bit NIfTI: read by nibabel in its array order
    nib.save(nib.Nifti1Image(images["n0"], NIFTI_AFFINE), str(inp / "n0.nii.gz"))
    net = _tiny_net(seed=7)
    ckpt = tmp_path / "model.pt"
    torch.save({"network": net.state_dict(), "epoch": torch.tensor(3)}, ckpt)  # training-checkpoint form

    res = _run("--input_path", str(inp), "--output_dir", str(out), "--ckpt_path", str(ckpt))
    assert res.returncode == 0, res.stderr[-8000:]
    assert "README.txt" in res.stderr  # skipped with a warning naming it
    names = sorted(p.name for p in out.iterdir())
    expected = [f"{c}_{k}.{e}" for c in images for k in ("alpha", "uncertainty")
                for e in (("nii.gz",) if c == "n0" else ("png",)) + ("npy",)]
    assert names == sorted(expected + ["inference_summary.json"])
    # NIfTI in, NIfTI out: the input's shape, affine and header
    alpha_nii = nib.load(str(out / "n0_alpha.nii.gz"))
    assert alpha_nii.shape == (32, 32) and np.allclose(alpha_nii.affine, NIFTI_AFFINE)
    np.testing.assert_allclose(alpha_nii.get_fdata(), _expected(net, images["n0"])[0], atol=1e-5)

    out = tmp_path / "out48"
    res = _run("--input_path", str(inp), "--output_dir", str(out), "--output_size", "[48,48]", "--ckpt_path", str(ckpt))
    assert res.returncode == 0, res.stderr[-8000:]
    for case, img in images.items():
        alpha = np.load(out / f"{case}_alpha.npy")
        unc = np.load(out / f"{case}_uncertainty.npy")
        assert alpha.shape == unc.shape == (48, 48) and alpha.dtype == np.float32
        assert 0.0 <= alpha.min() and alpha.max() <= 1.0 and 0.0 <= unc.min() and unc.max() <= 1.0
        # same values as the saved network on img / 255, in the same orientation
        exp_alpha, exp_unc = _expected(net, img, output_size=(48, 48))
        np.testing.assert_allclose(alpha, exp_alpha, atol=1e-5)
        np.testing.assert_allclose(unc, exp_unc, atol=1e-5)
        if case != "n0":
            with Image.open(out / f"{case}_alpha.png") as im:
                np.testing.assert_array_equal(np.asarray(im), np.rint(alpha.astype(np.float64) * 255).astype(np.uint8))


@pytest.mark.timeout(180)
def test_single_file_at_input_size_with_mlflow_tracking(tmp_path):
    img = _phantom(24, 40, seed=3)  # non-square: a transpose would change the shape
    src = tmp_path / "scan.png"
    Image.fromarray(img).save(src)
    net = _tiny_net(seed=11)
    ckpt = tmp_path / "weights.pt"
    torch.save(net.state_dict(), ckpt)  # plain state_dict form
    out = tmp_path / "out"

    res = _run("--input_path", str(src), "--output_dir", str(out), "--ckpt_path", str(ckpt), "--tracking", "mlflow")
    assert res.returncode == 0, res.stderr[-8000:]
    alpha = np.load(out / "scan_alpha.npy")
    assert alpha.shape == (24, 40)
    np.testing.assert_allclose(alpha, _expected(net, img)[0], atol=1e-5)
    with Image.open(out / "scan_uncertainty.png") as im:
        assert im.size == (40, 24)  # PIL size is (width, height)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


@pytest.mark.timeout(120)
def test_missing_checkpoint_is_a_clear_error(tmp_path):
    Image.fromarray(_phantom(16, 16, 0)).save(tmp_path / "a.png")
    missing = tmp_path / "no_such_model.pt"
    res = _run("--input_path", str(tmp_path / "a.png"), "--output_dir", str(tmp_path / "out"), "--ckpt_path", str(missing))
    assert res.returncode != 0
    assert "FileNotFoundError: checkpoint not found" in res.stderr and str(missing) in res.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.timeout(120)
def test_allow_untrained_runs_in_process(tmp_path):
    from monai.bundle import run

    Image.fromarray(_phantom(16, 20, 1)).save(tmp_path / "b.png")
    out = tmp_path / "out"
    overrides = {"num_samples": 2, "test_time_flips": "none"}  # the network is train.yaml's, untrained
    with pytest.warns(UserWarning, match="UNTRAINED"):
        run(
            "inference",
            config_file=str(BUNDLE_ROOT / "configs" / "inference.yaml"),
            meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"),
            bundle_root=str(BUNDLE_ROOT),
            input_path=str(tmp_path / "b.png"),
            output_dir=str(out),
            ckpt_path=str(tmp_path / "absent.pt"),
            allow_untrained=True,
            input_size=[32, 32],
            **overrides,
        )
    # resized to 32 x 32 for the network, written back at the input size
    assert np.load(out / "b_alpha.npy").shape == (16, 20)
    assert np.load(out / "b_uncertainty.npy").shape == (16, 20)


def test_list_input_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_input_images(tmp_path / "nope")
    with pytest.raises(ValueError, match="--input_path"):
        list_input_images(None)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a supported image"):
        list_input_images(tmp_path / "notes.txt")
    with pytest.warns(UserWarning, match="notes.txt"), pytest.raises(FileNotFoundError, match="no image found"):
        list_input_images(tmp_path)
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "a.nii.gz").write_bytes(b"")
    with pytest.warns(UserWarning):
        data = list_input_images(tmp_path)
    assert data == [
        {"image": str(tmp_path / "a.nii.gz"), "case": "a"},
        {"image": str(tmp_path / "b.png"), "case": "b"},
    ]
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="same case name 'a'"):
        list_input_images(tmp_path)


def test_load_trained_network_builds_the_checkpoints_network(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "m.pt")):
        load_trained_network(tmp_path / "m.pt")
    (tmp_path / "m.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="m.pt cannot be read"):
        load_trained_network(tmp_path / "m.pt")
    net = MedicalMattingNet(**dict(TINY_NET_ARGS, norm="BATCH", latent_dim=3, test_time_flips="h"))
    torch.save({"network": net.state_dict(), "epoch": 2}, tmp_path / "m.pt")
    served = load_trained_network(tmp_path / "m.pt")
    assert served.config == net.config
    assert load_trained_network(tmp_path / "m.pt", {"test_time_flips": "none", "num_samples": None}).test_time_flips == "none"
    with pytest.raises(ValueError, match="latent_dim"):
        load_trained_network(tmp_path / "m.pt", {"latent_dim": 6})  # not a prediction setting


def test_ensure_image_2d_and_the_intensity_rule():
    from monai.data import MetaTensor

    img = MetaTensor(torch.arange(12.0).reshape(1, 3, 4, 1), meta={"filename_or_obj": "x.nii"})
    out = EnsureImage2Dd("image", channels=1)({"image": img})["image"]
    assert tuple(out.shape) == (1, 3, 4)
    rgb = MetaTensor(torch.zeros(3, 4, 4), meta={"filename_or_obj": "photo.png"})
    with pytest.raises(ValueError, match="photo.png: the image has 3 channel"):
        EnsureImage2Dd("image", channels=1)({"image": rgb})
    with pytest.raises(ValueError, match="2-D"):
        EnsureImage2Dd("image")({"image": torch.zeros(1, 4, 4, 4)})

    u8 = np.array([0, 51, 255], np.uint8)
    np.testing.assert_allclose(scale_intensity_to_unit(u8)[0], [0.0, 0.2, 1.0], atol=1e-7)
    u16 = np.array([0, 65535], np.uint16)  # a 16-bit PNG: never clipped to 1.0
    assert scale_intensity_to_unit(u16)[0].tolist() == [0.0, 1.0]
    kept, how = scale_intensity_to_unit(np.array([0.25, 0.5], np.float32))
    assert kept.tolist() == [0.25, 0.5] and how == "float in [0, 1]"
    values, how = scale_intensity_to_unit(np.array([10.0, 20.0, 30.0]))
    np.testing.assert_allclose(values, [0.0, 0.5, 1.0])
    assert "min-max" in how
    np.testing.assert_allclose(scale_intensity_to_unit(np.array([0, 50, 100]), [0, 100])[0], [0, 0.5, 1])
    with pytest.raises(ValueError, match=r"scan.png: values \[0, 300\] lie outside intensity_range"):
        scale_intensity_to_unit(np.array([0, 300]), [0, 255], name="scan.png")
    with pytest.raises(ValueError, match="scan.nii: the image holds NaN"):
        scale_intensity_to_unit(np.array([0.0, np.nan]), name="scan.nii")
    with pytest.raises(ValueError, match="intensity_range"):
        scale_intensity_to_unit(u8, [255, 0])


def test_matting_inferer_sizes():
    seen = {}

    class Recorder(torch.nn.Module):
        def predict(self, x, output_size=None, num_samples=None, flips=None):
            seen["input"], seen["output_size"] = tuple(x.shape), output_size
            return {"alpha": torch.zeros(1), "uncertainty": torch.zeros(1)}

    MattingInferer()(torch.zeros(2, 1, 10, 14), Recorder())
    assert seen == {"input": (2, 1, 10, 14), "output_size": (10, 14)}
    MattingInferer(output_size=[20, 28], input_size=[8, 8])(torch.zeros(1, 1, 10, 14), Recorder())
    assert seen == {"input": (1, 1, 8, 8), "output_size": (20, 28)}
    MattingInferer(input_size=[8, 8])(torch.zeros(1, 1, 10, 14), Recorder())
    assert seen == {"input": (1, 1, 8, 8), "output_size": (10, 14)}
    for bad in ([0, 5], [4.5, 4], "48", [48], "null"):  # command-line text is the config's to convert
        with pytest.raises(ValueError, match="output_size"):
            MattingInferer(output_size=bad)
    for bad in ({"num_samples": 0}, {"num_samples": "4"}, {"flips": "v"}, {"flips": "null"}, {"max_internal_size": "512"}):
        with pytest.raises(ValueError, match=rf"^{next(iter(bad))} must be null or .*, got {next(iter(bad.values()))!r}$"):
            MattingInferer(**bad)


def test_the_inference_config_turns_command_line_text_into_the_inferers_typed_values():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "inference.yaml"))
    # what fire passes for --output_size null --input_size none --max_internal_size null / "256"
    parser.update({"output_size": "null", "input_size": "None", "max_internal_size": "null"})
    inferer = parser.get_parsed_content("inferer", instantiate=True)
    assert (inferer.output_size, inferer.input_size, inferer.max_internal_size) == (None, None, None)
    parser.update({"output_size": [48, 40], "max_internal_size": "256"})
    inferer = parser.get_parsed_content("inferer", instantiate=True, lazy=False)
    assert (inferer.output_size, inferer.max_internal_size) == ((48, 40), 256)
    parser.update({"max_internal_size": "8"})
    with pytest.raises(RuntimeError) as refused:
        parser.get_parsed_content("inferer", instantiate=True, lazy=False)
    assert "max_internal_size must be null or an integer >= 16 (pixels), got 8" in str(refused.value.__cause__)
