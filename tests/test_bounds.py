"""Memory and time bounds for any input (docs/reliability.md, "Memory and time bounds").

- the networks run on a bounded internal grid and the maps are decoded at full size in bands of
  rows (``MedicalMattingNet.predict_in_rows``), equal to the whole decode; images within the
  internal grid are predicted exactly as before;
- a 4000 x 4000 image goes through CLI inference under 1.5 GB peak RSS (subprocess, tiny network);
- image sizes are checked from the header before any reader decodes (a 30000 x 30000 PNG bomb is
  refused in milliseconds);
- inference over a folder processes every good file, reports each bad one and exits non-zero;
  an output folder inside the input folder is refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BUNDLE_ROOT, TINY_NET_ARGS, bundle_env, smooth_image, write_png_bomb

BAND_CONFIGS = [
    {},
    {"norm": "INSTANCE"},
    {"norm": "INSTANCE", "scales": 1},
    {"norm": "INSTANCE", "upsampling": "bilinear", "test_time_flips": "h"},
    {"scales": 2, "kernel_size": 3, "upsampling": "local_ensemble"},
    {"test_time_flips": "hv", "norm": "BATCH"},
]


# ----------------------------------------------------------------------------------- one decode path
@pytest.mark.parametrize("kw", BAND_CONFIGS)
def test_decoding_in_bands_of_rows_equals_the_whole_decode(make_tiny_net, kw):
    net = make_tiny_net(**kw).eval()
    with torch.no_grad():
        for m in net.modules():  # non-zero learned offsets
            if getattr(m, "offset_conv", None) is not None:
                m.offset_conv.weight.normal_(0, 0.1)
        image = torch.rand(2, 1, 40, 48)
        for size in [(40, 48), (97, 131), (23, 30)]:
            whole = net.predict(image, list(size))
            bands = net.predict_in_rows(image, size, band_pixels=7 * size[1])  # bands of 7 rows
            torch.testing.assert_close(bands["alpha"], whole["alpha"], atol=1e-5, rtol=0)
            torch.testing.assert_close(bands["uncertainty"], whole["uncertainty"], atol=1e-5, rtol=0)
            torch.testing.assert_close(bands["sample_probs"], whole["sample_probs"])


def test_images_within_the_internal_grid_are_predicted_as_before(make_tiny_net):
    from scripts.workflows.inference import MattingInferer

    net = make_tiny_net(norm="INSTANCE", test_time_flips="h").eval()
    inferer = MattingInferer(max_internal_size=64)
    for shape, output_size in [((1, 1, 64, 64), None), ((1, 1, 40, 56), None), ((1, 1, 48, 48), (64, 60))]:
        image = torch.rand(shape)
        out = MattingInferer(output_size=output_size, max_internal_size=64)(image, net)
        with torch.no_grad():
            ref = net.predict(image, list(output_size) if output_size else None)
        for key in ("alpha", "uncertainty", "sample_probs"):
            torch.testing.assert_close(out[key], ref[key], atol=1e-6, rtol=0)
    assert inferer.internal_size((64, 64)) == (64, 64) and inferer.internal_size((200, 100)) == (64, 32)


def test_a_larger_image_runs_on_the_internal_grid_and_is_decoded_at_full_size(make_tiny_net):
    from scripts.workflows.inference import MattingInferer

    net = make_tiny_net(norm="INSTANCE").eval()
    image = torch.rand(1, 1, 150, 100)
    out = MattingInferer(max_internal_size=64, band_pixels=1000)(image, net)
    assert out["alpha"].shape == out["uncertainty"].shape == (1, 1, 150, 100)
    assert out["sample_probs"].shape[-2:] == (64, 43)  # the networks saw the bounded grid
    small = torch.nn.functional.interpolate(image, size=(64, 43), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        ref = net.predict(small, [150, 100])
    torch.testing.assert_close(out["alpha"], ref["alpha"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["uncertainty"], ref["uncertainty"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="max_internal_size"):
        MattingInferer(max_internal_size=4)


# ----------------------------------------------------------------------------------- header checks
def test_a_png_bomb_is_refused_from_its_header_without_decoding(tmp_path):
    from scripts.data.image_limits import ImageTooLargeError, check_image_header

    bomb = write_png_bomb(tmp_path / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 1_000_000  # under 1 MB
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="bomb.png.*decompression bomb"):
        check_image_header(bomb)
    assert time.perf_counter() - start < 1.0
    big = write_png_bomb(tmp_path / "big.png", 9000, 9000)  # under Pillow's bomb limit, over ours
    with pytest.raises(ImageTooLargeError, match=r"big.png: 9000 x 9000 pixels \(81.0 megapixels\) is above"):
        check_image_header(big)
    assert check_image_header(big, max_pixels=9000 * 9000).shape == (9000, 9000)


def test_header_checks_of_each_format(tmp_path):
    import nibabel as nib
    import SimpleITK as sitk

    from scripts.data.image_limits import ImageTooLargeError, UnreadableImageError, check_image_header

    Image.fromarray(smooth_image(20, 30)).save(tmp_path / "a.png")
    assert check_image_header(tmp_path / "a.png").shape == (20, 30)
    nib.save(nib.Nifti1Image(np.zeros((20, 30, 4), np.float32), np.eye(4)), str(tmp_path / "v.nii.gz"))
    assert check_image_header(tmp_path / "v.nii.gz").shape == (20, 30, 4)
    with pytest.raises(ImageTooLargeError, match="volume 20 x 30 x 4"):
        check_image_header(tmp_path / "v.nii.gz", max_voxels=1000)
    # a 4-D series: its 4th dimension counts (it is not a channel count that escapes the budget)
    series = nib.Nifti1Image(np.zeros((20, 30, 4, 3), np.uint8), np.eye(4))
    nib.save(series, str(tmp_path / "s.nii.gz"))
    assert check_image_header(tmp_path / "s.nii.gz").voxels == 20 * 30 * 4 * 3
    with pytest.raises(ImageTooLargeError, match="volume 20 x 30 x 4 x 3"):
        check_image_header(tmp_path / "s.nii.gz", max_voxels=20 * 30 * 4 * 2)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30), np.uint8)), str(tmp_path / "m.nrrd"))
    assert check_image_header(tmp_path / "m.nrrd").shape == (20, 30)
    with pytest.raises(ImageTooLargeError):
        check_image_header(tmp_path / "m.nrrd", max_pixels=500)
    (tmp_path / "t.png").write_bytes((tmp_path / "a.png").read_bytes()[:20])
    (tmp_path / "x.nii.gz").write_bytes(b"not a nifti")
    for name in ("t.png", "x.nii.gz", "missing.png"):
        with pytest.raises(UnreadableImageError, match=name):
            check_image_header(tmp_path / name)


# ----------------------------------------------------------------------------------- CLI inference
def _tiny_checkpoint(tmp_path: Path, **kw) -> Path:
    from scripts.networks import MedicalMattingNet

    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(MedicalMattingNet(**{**TINY_NET_ARGS, **kw}).state_dict(), ckpt)
    return ckpt


def _infer(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml", *args]
    return subprocess.run(cmd, cwd=str(BUNDLE_ROOT), env=bundle_env(OMP_NUM_THREADS="2"), capture_output=True,
                          text=True, timeout=timeout)


#: runs a command, kills it above KILL_MB of RSS (so a regression cannot take the machine), prints its peak RSS
_PEAK_RSS = r"""
import resource, subprocess, sys, time
proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=open(sys.argv[1], "w"))
killed = False
while proc.poll() is None:
    try:
        rss = int([l for l in open(f"/proc/{proc.pid}/status") if l.startswith("VmRSS")][0].split()[1]) / 1024
    except (OSError, IndexError):
        rss = 0
    if rss > 3000:
        proc.kill(); killed = True
    time.sleep(0.05)
print(proc.returncode, killed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


@pytest.mark.timeout(600)
def test_a_4000_by_4000_image_is_inferred_under_1_5_gb_peak_rss(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    Image.fromarray(smooth_image(4000, 4000)).save(inp / "large.png")
    ckpt = _tiny_checkpoint(tmp_path)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml",
           "--input_path", str(inp), "--output_dir", str(out), "--ckpt_path", str(ckpt)]
    log = tmp_path / "inference.log"
    res = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(log), *cmd], cwd=str(BUNDLE_ROOT),
                         env=bundle_env(OMP_NUM_THREADS="2"), capture_output=True, text=True, timeout=580)
    returncode, killed, peak_mb = res.stdout.split()
    assert killed == "False" and returncode == "0", log.read_text()[-4000:]
    assert float(peak_mb) < 1536, f"peak RSS {float(peak_mb):.0f} MB"
    alpha = np.load(out / "large_alpha.npy")
    assert alpha.shape == (4000, 4000) and np.isfinite(alpha).all()
    with Image.open(out / "large_uncertainty.png") as im:
        assert im.size == (4000, 4000)
    summary = json.loads((out / "inference_summary.json").read_text())
    assert summary["succeeded"] == 1 and summary["failed"] == 0
    print(f"4000 x 4000 CLI inference: peak RSS {float(peak_mb):.0f} MB")


@pytest.mark.timeout(300)
def test_a_folder_with_bad_files_processes_every_good_file_and_reports_each_bad_one(tmp_path):
    import nibabel as nib

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(40, 48 + 8 * i)).save(inp / f"good{i}.png")
    (inp / "truncated.png").write_bytes((inp / "good0.png").read_bytes()[:60])
    (inp / "garbage.png").write_bytes(b"this is not a png" * 8)
    Image.fromarray(np.dstack([smooth_image(40, 48)] * 3)).save(inp / "rgb.png")
    nan = np.random.default_rng(0).random((30, 30)).astype(np.float32)
    nan[3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(inp / "nan.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(inp / "volume.nii.gz"))
    write_png_bomb(inp / "bomb.png", 30000, 30000)
    ckpt = _tiny_checkpoint(tmp_path)

    res = _infer("--input_path", str(inp), "--output_dir", str(out), "--ckpt_path", str(ckpt))
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]  # one summary line naming each failed file, no traceback
    assert last.startswith("inference: 4 of 8 input file(s) failed (") and "Traceback" not in res.stderr, res.stderr[-3000:]
    for name in ("bomb.png", "garbage.png", "nan.nii.gz", "truncated.png"):
        assert f"{name}: " in last
    for case in ("good0", "good1", "rgb"):  # RGB: converted to grey (the colour rule)
        assert np.load(out / f"{case}_alpha.npy").shape[0] == 40
    assert nib.load(str(out / "volume_alpha.nii.gz")).shape == (8, 8, 8)  # a volume: slice by slice
    summary = json.loads((out / "inference_summary.json").read_text())
    assert (summary["total"], summary["succeeded"], summary["failed"]) == (8, 4, 4)
    status = {Path(f["file"]).name: f for f in summary["files"]}
    assert {n for n, f in status.items() if f["status"] == "ok"} == {"good0.png", "good1.png", "rgb.png", "volume.nii.gz"}
    expected = {"bomb.png": "decompression bomb", "garbage.png": "not a readable .png", "nan.nii.gz": "NaN",
                "truncated.png": "truncated.png"}
    for name, words in expected.items():
        assert status[name]["status"] == "failed" and words in status[name]["reason"], status[name]
        assert f"inference failed for {inp / name}" in res.stdout + res.stderr  # logged with the file
    assert not any(p.name.startswith(("bomb", "nan", "garbage", "truncated")) for p in out.iterdir())


def test_an_output_folder_inside_the_input_folder_is_refused(tmp_path):
    from scripts.workflows.inference import list_input_images

    Image.fromarray(smooth_image(20, 20)).save(tmp_path / "a.png")
    for out in (tmp_path, tmp_path / "out", tmp_path / "out" / "deeper"):
        with pytest.raises(ValueError, match="is inside the input folder"):
            list_input_images(tmp_path, out)
    assert len(list_input_images(tmp_path, tmp_path.parent / "elsewhere")) == 1
    res = _infer("--input_path", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--allow_untrained", "true",
                 timeout=120)
    assert res.returncode != 0 and "is inside the input folder" in res.stderr
    assert not (tmp_path / "out").exists()
