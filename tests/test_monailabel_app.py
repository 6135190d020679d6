"""Pieces of the MONAI Label app without a server: image I/O, label -> dataset mapping, weights handling."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from conftest import TINY_APP_NETWORK
import torch
from PIL import Image

from scripts.data.datalist import load_datalist
from scripts.monailabel_app.lib.bundle_model import BundleModel
from scripts.monailabel_app.lib.errors import (
    InvalidCheckpointError,
    NoTrainedWeightsError,
    NoTrainingLabelsError,
    UnsupportedStudyImageError,
)
from scripts.monailabel_app.lib.imaging import match_channels, to_unit_range, write_result
from scripts.monailabel_app.lib.trainers.dataset import (
    case_name,
    label_to_alpha,
    prepare_training_dataset,
    read_pair,
    trimap_for_label,
)

TINY = TINY_APP_NETWORK


def test_to_unit_range_is_the_bundles_one_intensity_rule():
    unit, how = to_unit_range(np.array([0, 51, 255], np.uint8))  # by type, as in training
    np.testing.assert_allclose(unit, [0.0, 0.2, 1.0], atol=1e-7)
    assert how == "uint8 range [0, 255]"
    unit, how = to_unit_range(np.array([0, 65535], np.uint16))  # a 16-bit PNG is not clipped
    assert unit.tolist() == [0.0, 1.0]
    unit, how = to_unit_range(np.array([-1000.0, 0.0, 1000.0]))  # float outside [0, 1]: said so
    np.testing.assert_allclose(unit, [0.0, 0.5, 1.0])
    assert how.startswith("min-max")
    with pytest.raises(UnsupportedStudyImageError, match="outside intensity_range"):
        to_unit_range(np.array([-1000, 1000]), (0, 255))  # an explicit range is never clipped silently


def test_match_channels():
    rgb = np.stack([np.full((2, 3), 100.0), np.full((2, 3), 50.0), np.full((2, 3), 10.0)])
    grey = match_channels(rgb, 1)
    assert grey.shape == (1, 2, 3)
    np.testing.assert_allclose(grey, 0.299 * 100 + 0.587 * 50 + 0.114 * 10, rtol=1e-6)
    assert match_channels(grey, 3).shape == (3, 2, 3)
    with pytest.raises(UnsupportedStudyImageError, match="has 2 channel"):
        match_channels(np.zeros((2, 4, 4)), 1)


def test_label_to_alpha_rule():
    np.testing.assert_array_equal(label_to_alpha(np.array([[0, 1]], np.uint8)), [[0, 255]])
    np.testing.assert_array_equal(label_to_alpha(np.array([0.0, 0.5, 1.0])), [0, 128, 255])
    np.testing.assert_array_equal(label_to_alpha(np.array([0, 7, 200], np.uint8)), [0, 7, 200])
    with pytest.raises(UnsupportedStudyImageError, match="lab.nii"):
        label_to_alpha(np.array([0, 300]), "lab.nii")
    with pytest.raises(UnsupportedStudyImageError, match="negative"):
        label_to_alpha(np.array([-1, 1]))


def test_trimap_of_a_binary_label_is_a_band_around_the_boundary():
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    trimap = trimap_for_label(mask * 255, mask, band=2)
    assert set(np.unique(trimap)) == {0, 128, 255}
    assert trimap[10, 10] == 255 and trimap[0, 0] == 0
    assert trimap[5, 10] == 128 and trimap[3, 10] == 128 and trimap[2, 10] == 0 and trimap[7, 10] == 255
    # a soft matte keeps the data pipeline's rule: unknown where the matte is fractional (grown by 1)
    alpha = mask * 255
    alpha[10, 4] = 90
    soft = trimap_for_label(alpha, (alpha >= 128).astype(np.uint8))
    assert soft[10, 4] == 128 and soft[10, 10] == 255 and soft[0, 0] == 0


def _phantom_pairs(tmp_path, n=3):
    from scripts.data.phantom import make_phantom_dataset

    pairs, cases = [], make_phantom_dataset(n, seed=1)
    (tmp_path / "labels").mkdir()
    for case, arrays in cases.items():
        Image.fromarray(arrays["image"]).save(tmp_path / f"{case}.png")
        Image.fromarray(arrays["alpha"]).save(tmp_path / "labels" / f"{case}.png")
        pairs.append({"image": str(tmp_path / f"{case}.png"), "label": str(tmp_path / "labels" / f"{case}.png")})
    return pairs, cases


def test_prepare_training_dataset_writes_a_valid_prepared_dataset(tmp_path):
    pairs, cases = _phantom_pairs(tmp_path)
    out = prepare_training_dataset(pairs, tmp_path / "ds", num_folds=5, seed=0)
    datalist = load_datalist(out)  # the bundle's own reader accepts it
    assert datalist["num_folds"] == 3 and datalist["raters"] == 1 and datalist["channels"] == 1
    assert datalist["spatial_shape"] == [128, 128]
    assert sorted(item["fold"] for item in datalist["training"]) == [0, 1, 2]
    for item in datalist["training"]:
        src = cases[item["case"]]
        np.testing.assert_array_equal(np.array(Image.open(item["image"])), src["image"])  # 8-bit: unchanged
        np.testing.assert_array_equal(np.array(Image.open(item["alpha"])), src["alpha"])
        np.testing.assert_array_equal(np.array(Image.open(item["masks"][0])), src["alpha"] >= 128)
        trimap = np.array(Image.open(item["trimap"]))
        assert set(np.unique(trimap)) <= {0, 128, 255} and (trimap == 128).any()


def test_prepare_training_dataset_refuses_bad_input(tmp_path):
    pairs, _ = _phantom_pairs(tmp_path, n=2)
    with pytest.raises(NoTrainingLabelsError, match="at least 2"):
        prepare_training_dataset(pairs[:1], tmp_path / "ds1")
    Image.fromarray(np.zeros((64, 128), np.uint8)).save(pairs[1]["label"])
    with pytest.raises(UnsupportedStudyImageError, match=r"case002\.png.*differs"):
        prepare_training_dataset(pairs, tmp_path / "ds2")
    assert not (tmp_path / "ds2").exists()


def test_nifti_volume_pair_becomes_one_case_per_slice(tmp_path):
    nib = pytest.importorskip("nibabel")
    image = np.arange(4 * 5 * 2, dtype=np.float32).reshape(4, 5, 2) * 10 - 200  # outside 0..255: min-max
    label = np.zeros((4, 5, 2), np.uint8)
    label[1:3, 1:4, 1] = 1
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "vol a.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "lab.nii.gz")
    cases = dict(read_pair(str(tmp_path / "vol a.nii.gz"), str(tmp_path / "lab.nii.gz")))
    assert sorted(cases) == ["vol_a_z0", "vol_a_z1"]
    assert case_name("/x/vol a.nii.gz") == "vol_a"
    expected = np.rint((image - image.min()) / (image.max() - image.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(cases["vol_a_z1"]["image"], expected[..., 1])
    np.testing.assert_array_equal(cases["vol_a_z1"]["alpha"], label[..., 1] * 255)
    assert cases["vol_a_z0"]["alpha"].max() == 0


def test_write_result_keeps_the_input_geometry(tmp_path):
    nib = pytest.importorskip("nibabel")
    affine = np.array([[0, 2.0, 0, 1], [-1.5, 0, 0, 2], [0, 0, 3.0, -4], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 3), np.int16), affine), tmp_path / "img.nii.gz")
    values = np.random.default_rng(0).random((6, 7, 3))
    out = nib.load(write_result(str(tmp_path / "img.nii.gz"), values))
    assert out.shape == (6, 7, 3)
    np.testing.assert_allclose(out.affine, affine)
    np.testing.assert_allclose(out.get_fdata(), values, atol=1e-6)

    Image.fromarray(np.zeros((5, 9), np.uint8)).save(tmp_path / "img.png")
    png = write_result(str(tmp_path / "img.png"), np.full((5, 9), 0.5))
    assert np.array(Image.open(png)).shape == (5, 9) and (np.array(Image.open(png)) == 128).all()
    os.remove(png)
    with pytest.raises(UnsupportedStudyImageError, match="unsupported image format"):
        write_result(str(tmp_path / "img.nrrd"), values)


def test_bundle_model_weights_handling(tmp_path, bundle_root):
    weights = tmp_path / "model.pt"
    refusing = BundleModel(bundle_root, weights_path=weights, overrides=TINY)
    assert refusing.status()["trained"] is False
    with pytest.raises(NoTrainedWeightsError, match=str(weights)):
        refusing.network("cpu")

    untrained = BundleModel(bundle_root, weights_path=weights, overrides=TINY, allow_untrained=True)
    net, trained = untrained.network("cpu")
    assert trained is False and "UNTRAINED" in untrained.status()["message"]

    state = {k: v + 1.0 if torch.is_tensor(v) else v for k, v in net.state_dict().items()}
    key = "network"
    torch.save({key: state, "epoch": 3}, weights)  # CheckpointSaver layout: the weights under ckpt_key
    loaded, trained = refusing.network("cpu")
    assert trained is True
    for key, value in loaded.state_dict().items():
        if torch.is_tensor(value):
            torch.testing.assert_close(value, state[key])

    time.sleep(0.05)
    state2 = {k: v * 0 if torch.is_tensor(v) else v for k, v in state.items()}
    torch.save(state2, weights)  # a bare state dict, newer file: reloaded
    os.utime(weights, (time.time() + 5, time.time() + 5))
    reloaded, _ = refusing.network("cpu")
    assert all(float(v.abs().sum()) == 0 for v in reloaded.state_dict().values() if torch.is_tensor(v))

    torch.save({"other": torch.zeros(2)}, weights)
    os.utime(weights, (time.time() + 10, time.time() + 10))
    with pytest.raises(InvalidCheckpointError, match="Error.s. in loading state_dict"):
        refusing.network("cpu")


def test_training_command():
    pytest.importorskip("monailabel", reason="monailabel is not installed")
    from scripts.monailabel_app.lib.trainers.matting import training_command

    cmd = training_command("/b", "/d", "/c", "/o", epochs=3, fold=1, tracking_uri="http://127.0.0.1:5000",
                           overrides={"network_def#prob_filters": [4, 8], "batch_size": 2})
    assert cmd[1:5] == ["-m", "monai.bundle", "run", "training"]
    args = dict(zip(cmd[5::2], cmd[6::2]))
    assert args["--config_file"] == "/b/configs/train.yaml" and args["--dataset_dir"] == "/d"
    assert args["--epochs"] == "3" and args["--fold"] == "1" and args["--ckpt_dir"] == "/c"
    assert args["--tracking"] == "mlflow" and args["--tracking_uri"] == "http://127.0.0.1:5000"
    assert json.loads(args["--network_def#prob_filters"]) == [4, 8] and args["--batch_size"] == "2"


def test_exported_nifti_studies_map_back_to_the_prepared_cases(tmp_path):
    pytest.importorskip("nibabel")
    from scripts.data.prepare import prepare_dataset
    from scripts.monailabel_app.studies import export_studies, main

    dataset = prepare_dataset("phantom", tmp_path / "ph", num_cases=3, folds=3)
    studies = export_studies(dataset, tmp_path / "studies", fmt="nifti", labels=2)
    assert sorted(p.name for p in studies.glob("*.nii.gz")) == ["case001.nii.gz", "case002.nii.gz", "case003.nii.gz"]
    assert sorted(p.name for p in (studies / "labels" / "final").iterdir()) == ["case001.nii.gz", "case002.nii.gz"]
    source = {item["case"]: item for item in load_datalist(dataset)["training"]}
    for case in ("case001", "case002"):
        [(name, arrays)] = read_pair(str(studies / f"{case}.nii.gz"), str(studies / "labels" / "final" / f"{case}.nii.gz"))
        assert name == case
        np.testing.assert_array_equal(arrays["image"], np.array(Image.open(source[case]["image"])))
        np.testing.assert_array_equal(arrays["alpha"], np.array(Image.open(source[case]["alpha"])))
    # a PNG image with a NIfTI label (e.g. saved by a viewer) is refused, never silently transposed
    Image.open(source["case001"]["image"]).save(tmp_path / "case001.png")
    with pytest.raises(UnsupportedStudyImageError, match="format differs"):
        read_pair(str(tmp_path / "case001.png"), str(studies / "labels" / "final" / "case001.nii.gz"))
    assert main(["--dataset", str(dataset), "--out", str(tmp_path / "png"), "--format", "png", "--fold", "0"]) == 0
    with pytest.raises(ValueError, match="not empty"):
        export_studies(dataset, tmp_path / "png")


def test_server_training_overrides_follow_the_served_network(bundle_root, tmp_path):
    pytest.importorskip("monailabel", reason="monailabel is not installed")
    if not (bundle_root / "configs" / "train.yaml").is_file():
        pytest.skip("configs/train.yaml not present")
    from scripts.monailabel_app.lib.trainers.matting import MattingTrainTask

    model = BundleModel(bundle_root, weights_path=tmp_path / "m.pt", overrides=TINY)
    task = MattingTrainTask(model, train_dir=tmp_path, train_overrides={"batch_size": 2})
    overrides = task.training_overrides()
    # network_def#... for the network itself, and the top-level keys train.yaml logs as parameters
    assert overrides["network_def#prob_filters"] == [4, 8, 8, 8] and overrides["prob_filters"] == [4, 8, 8, 8]
    assert overrides["implicit_hidden"] == 8 and overrides["num_samples"] == 2 and overrides["batch_size"] == 2
    assert task.stats() == {"runs": 0}


#: monailabel 0.8.5 requirements deliberately not installed (docs/monailabel.md, "Install choice")
UNNEEDED_MONAILABEL_REQUIREMENTS = {"httpx", "expiringdict", "pynetdicom", "numpymaxflow", "ninja", "einops",
                                    "bcrypt", "shapely", "sam2"}


def test_environment_has_monailabel_without_cuda_or_torchvision():
    pytest.importorskip("monailabel", reason="monailabel is not installed")
    from importlib.metadata import distributions

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    installed = {canonicalize_name(d.metadata["Name"]): d for d in distributions()}
    assert "torchvision" not in installed and "sam2" not in installed
    assert not [n for n in installed if n.startswith("nvidia-")], "CUDA wheels were installed"
    assert installed["numpy"].version.startswith("1."), "numpy must stay < 2 (pydicom-seg, numpymaxflow)"
    unmet = set()
    for line in installed["monailabel"].requires or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name not in installed or not req.specifier.contains(installed[name].version, prereleases=True):
            unmet.add(name)
    assert unmet <= UNNEEDED_MONAILABEL_REQUIREMENTS, unmet - UNNEEDED_MONAILABEL_REQUIREMENTS


def test_the_app_serves_the_shipped_weights_out_of_the_box(bundle_root):
    weights = bundle_root / "models" / "model.pt"
    if not weights.is_file():
        pytest.skip("models/model.pt (the release weights) is not in the bundle")
    model = BundleModel(bundle_root)  # the defaults of `monailabel start_server ... --conf models medical_matting`
    assert model.status()["trained"] is True and model.weights_path == weights
    network, trained = model.network("cpu")
    assert trained and network.config == torch.load(weights, weights_only=True)["_extra_state"]["config"]
