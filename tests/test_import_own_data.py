"""scripts.prepare_data --dataset folder / manifest: the user's own multi-rater data in every format, targets
from the raters, sizes, folds and splits, and every bad-input rule; Brain-growth through the QUBIQ folder
layout and a PNG + CSV manifest equals the pickle path."""

from __future__ import annotations

import csv
import json
import os
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from dicom_writer import write_ct_series

from scripts.data.case_import import ImportOptions
from scripts.data.datalist import load_datalist
from scripts.data.errors import DataPreparationError
from scripts.data.import_dataset import import_dataset
from scripts.data.prepare import main, prepare_dataset
from scripts.data.safe_pickle import safe_loads_pickle
from scripts.data.targets import alpha_from_raters, trimap_from_raters
from scripts.data.writer import read_png


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def _png(path: Path, array: np.ndarray, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius ** 2).astype(np.uint8)


def _case_arrays(seed: int, shape=(24, 20), raters=3):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    c = (shape[0] / 2 + rng.uniform(-1, 1), shape[1] / 2 + rng.uniform(-1, 1))
    masks = [_disc(shape, c, 4 + k) for k in range(raters)]
    return image, masks


def _write_png_cases(root: Path, count: int, shape=(24, 20), raters=3) -> dict:
    cases = {}
    for i in range(count):
        image, masks = _case_arrays(i, shape, raters)
        folder = root / f"case{i:02d}"
        folder.mkdir(parents=True)
        _png(folder / "image.png", image)
        for k, m in enumerate(masks, 1):
            _png(folder / f"task01_seg{k:02d}.png", m * 255)
        cases[folder.name] = (image, masks)
    return cases


def _dataset(out: Path) -> tuple[dict, dict]:
    dl = json.loads((out / "datalist.json").read_text())
    return dl, {it["case"]: it for it in dl["training"]}


# ------------------------------------------------------------------------------- Brain-growth, three ways
@pytest.fixture(scope="module")
def brain_growth_three_ways(brain_growth_dir, tmp_path_factory):
    """The first 8 Brain-growth cases: the pickle path, the QUBIQ NIfTI folder layout, a PNG + CSV manifest
    (0 / 255 masks, the pickle's alpha and the published trimaps as columns)."""
    from tools.brain_growth_layouts import write_layouts

    root = tmp_path_factory.mktemp("bg3")
    count = 8
    pickle_out = prepare_dataset("brain-growth", root / "pickle", source=brain_growth_dir / "brain_growth_alpha.zip",
                                 trimaps=brain_growth_dir / "trimap_brain.zip", folds=4, seed=0, num_cases=count)
    with zipfile.ZipFile(brain_growth_dir / "brain_growth_alpha.zip") as zf:
        records = safe_loads_pickle(zf.read("brain_growth_alpha.pkl"))
    names = sorted(records)[:count]
    layouts = write_layouts(root / "layouts", brain_growth_dir, num_cases=count, alpha_and_trimaps=True)
    qubiq, manifest = layouts["qubiq"], layouts["manifest"]
    assert main(["--dataset", "folder", "--source", str(qubiq), "--out", str(root / "from_qubiq")]) == 0
    assert main(["--dataset", "manifest", "--source", str(manifest), "--out",
                 str(root / "from_manifest")]) == 0
    return {"pickle": pickle_out, "qubiq": root / "from_qubiq", "manifest": root / "from_manifest",
            "records": records, "names": names}


def test_qubiq_folder_layout_equals_the_pickle_path_with_targets_from_raters(brain_growth_three_ways):
    ways = brain_growth_three_ways
    ref_dl, ref = _dataset(ways["pickle"])
    dl, items = _dataset(ways["qubiq"])
    assert list(items) == ways["names"] and dl["raters"] == 7 and dl["channels"] == 1
    assert dl["spatial_shape"] == [128, 128] and dl["num_folds"] == 4
    for case, it in items.items():
        assert it["fold"] == ref[case]["fold"]
        np.testing.assert_array_equal(read_png(ways["qubiq"] / it["image"]), read_png(ways["pickle"] / ref[case]["image"]))
        masks = [read_png(ways["qubiq"] / m) for m in it["masks"]]
        for mine, theirs in zip(masks, ref[case]["masks"]):
            np.testing.assert_array_equal(mine, read_png(ways["pickle"] / theirs))
        alpha = read_png(ways["qubiq"] / it["alpha"])
        np.testing.assert_array_equal(alpha, alpha_from_raters(masks))  # the raters' mean, not the pickle's alpha
        votes = np.sum(masks, axis=0)
        assert (alpha[votes == 0] == 0).all() and (alpha[votes == 7] == 255).all()
        assert alpha[votes == 3].size == 0 or (alpha[votes == 3] == 109).all()  # round(255 * 3 / 7)
        trimap = read_png(ways["qubiq"] / it["trimap"])
        np.testing.assert_array_equal(trimap, trimap_from_raters(alpha, masks, dilation=1))
        assert ((trimap == 128) >= ((votes > 0) & (votes < 7))).all()  # every disagreement is unknown
    assert dl["import"]["alpha"] == "raters' mean" and "disagreement" in dl["import"]["trimap"]


def test_png_manifest_with_alpha_and_trimap_equals_the_pickle_path(brain_growth_three_ways):
    ways = brain_growth_three_ways
    _, ref = _dataset(ways["pickle"])
    dl, items = _dataset(ways["manifest"])
    assert list(items) == ways["names"]
    for case, it in items.items():
        assert it["fold"] == ref[case]["fold"]
        for key in ("image", "alpha", "trimap"):
            np.testing.assert_array_equal(read_png(ways["manifest"] / it[key]), read_png(ways["pickle"] / ref[case][key]))
        for mine, theirs in zip(it["masks"], ref[case]["masks"], strict=True):
            np.testing.assert_array_equal(read_png(ways["manifest"] / mine), read_png(ways["pickle"] / theirs))
        np.testing.assert_array_equal(read_png(ways["manifest"] / it["alpha"]), ways["records"][case]["alpha"])


@pytest.mark.timeout(400)
def test_manifest_with_the_pickles_alpha_gives_identical_fold_metrics_after_a_short_training(
        brain_growth_three_ways, tmp_path):
    from conftest import TINY_OVERRIDES
    from monai.bundle import ConfigWorkflow

    from scripts import BUNDLE_ROOT

    ways = brain_growth_three_ways
    configs = [str(BUNDLE_ROOT / "configs" / name) for name in ("train.yaml", "evaluate.yaml")]
    metrics = {}
    for way in ("pickle", "manifest"):  # the bundle's training and evaluation, in this process
        out = tmp_path / way
        common = dict(bundle_root=str(BUNDLE_ROOT), dataset_dir=str(ways[way]), fold=0, ckpt_dir=str(out / "models"),
                      output_dir=str(out / "eval"), epochs=1, progress_bar=False, write_predictions=False,
                      **TINY_OVERRIDES)
        for config_file, workflow_type in [(configs[0], "train"), (configs, "infer")]:
            workflow = ConfigWorkflow(config_file=config_file, workflow_type=workflow_type, **common)
            workflow.initialize()
            workflow.run()
            workflow.finalize()
        metrics[way] = json.loads((out / "eval" / "metrics_per_case.json").read_text())
    assert metrics["pickle"] == metrics["manifest"]
    assert len(metrics["pickle"]) > 0
    # the per-case table carries the QUBIQ score and each case's foreground / unknown-region size
    _, items = _dataset(ways["manifest"])
    for row in metrics["manifest"]:
        masks = [read_png(ways["manifest"] / m) for m in items[row["case"]]["masks"]]
        trimap = read_png(ways["manifest"] / items[row["case"]]["trimap"])
        assert row["foreground_pixels"] == int(np.any(masks, axis=0).sum())
        assert row["unknown_pixels"] == int((trimap == 128).sum())
        assert 0.0 <= row["qubiq"] <= 1.0


# ------------------------------------------------------------------------------------------------ formats
def test_3d_nifti_volume_with_affine_is_cut_into_foreground_slices_grouped_by_volume(tmp_path):
    affine = np.array([[0.0, -0.8, 0, 12], [1.2, 0, 0, -3], [0, 0, 2.5, 40], [0, 0, 0, 1]])
    volumes = {}
    for v in range(3):
        folder = tmp_path / "src" / f"vol{v}"
        folder.mkdir(parents=True)
        rng = np.random.default_rng(v)
        image = rng.normal(100.0, 30.0, (16, 14, 9)).astype(np.float32)
        masks = [np.zeros((16, 14, 9), np.uint8) for _ in range(2)]
        masks[0][5:9, 4:8, 3:5] = 1
        masks[1][6:10, 4:9, 4:6] = 1
        _nifti(folder / "image.nii.gz", image, affine)
        for k, m in enumerate(masks, 1):
            _nifti(folder / f"task01_seg{k:02d}.nii.gz", m, affine)
        volumes[folder.name] = (image, masks)
    out = import_dataset("folder", tmp_path / "src", tmp_path / "out", folds=3, seed=1,
                         options=ImportOptions(slice_axis=2, slice_margin=1))
    dl, items = _dataset(out)
    # foreground in slices 3..5, margin 1: slices 2..6 of each volume
    assert sorted(items) == [f"vol{v}_s{i:03d}" for v in range(3) for i in range(2, 7)]
    image, masks = volumes["vol1"]
    lo, hi = float(image.min()), float(image.max())
    for i in range(2, 7):
        it = items[f"vol1_s{i:03d}"]
        expected = np.floor((image[:, :, i].astype(np.float64) - lo) * 255.0 / (hi - lo) + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(read_png(out / it["image"]), expected)  # min-max over the whole volume
        for k in range(2):
            np.testing.assert_array_equal(read_png(out / it["masks"][k]), masks[k][:, :, i])
        assert it["group"] == "vol1" and it["source_case"] == "vol1"
    for v in range(3):
        assert len({it["fold"] for c, it in items.items() if c.startswith(f"vol{v}_")}) == 1  # one fold per volume
    assert dl["spatial_shape"] == [16, 14]
    # another axis: slices of (14, 9)
    out2 = import_dataset("folder", tmp_path / "src", tmp_path / "out_axis0", folds=2,
                          options=ImportOptions(slice_axis=0))
    _, items2 = _dataset(out2)
    assert sorted(items2)[:2] == ["vol0_s005", "vol0_s006"] and read_png(out2 / items2["vol0_s005"]["image"]).shape == (14, 9)


def test_masks_on_another_voxel_grid_than_the_image_are_refused(tmp_path):
    folder = tmp_path / "src" / "vol0"
    folder.mkdir(parents=True)
    image = np.random.default_rng(0).normal(size=(8, 8, 4)).astype(np.float32)
    mask = np.zeros((8, 8, 4), np.uint8)
    mask[2:5, 2:5, 1] = 1
    moved = np.eye(4)
    moved[0, 3] = 5.0
    _nifti(folder / "image.nii.gz", image)
    _nifti(folder / "task01_seg01.nii.gz", mask)
    _nifti(folder / "task01_seg02.nii.gz", mask, moved)
    with pytest.raises(DataPreparationError, match=r"vol0: mask task01_seg02.nii.gz lies on another voxel grid"):
        import_dataset("folder", tmp_path / "src", tmp_path / "out", folds=2)
    assert not (tmp_path / "out").exists()


def test_dicom_series_written_with_pydicom(tmp_path):
    rng = np.random.default_rng(3)
    volume = rng.integers(-1000, 1500, (5, 12, 10)).astype(np.int16)  # (Z, rows, columns)
    for c in range(2):
        case = tmp_path / "src" / f"pat{c}"
        write_ct_series(case / "ct", volume + c)
        for k in range(2):
            seg = np.zeros_like(volume)
            seg[2, 3:7, 4:8 + k] = 1
            write_ct_series(case / f"seg{k}", seg)
    out = import_dataset("folder", tmp_path / "src", tmp_path / "out", folds=2, image_pattern="ct",
                         mask_pattern="seg*")
    dl, items = _dataset(out)
    assert sorted(items) == ["pat0_s002", "pat1_s002"]
    # the reader's (x, y, z) voxel order: column index first
    image = read_png(out / items["pat0_s002"]["image"])
    lo, hi = int(volume.min()), int(volume.max())
    expected = np.floor((volume[2].T.astype(np.float64) - lo) * 255.0 / (hi - lo) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)
    mask = read_png(out / items["pat0_s002"]["masks"][1])
    assert mask.shape == (10, 12) and mask.sum() == 4 * 5 and mask[4:9, 3:7].all()
    # one DICOM file per image and mask: a 2-D case
    single = tmp_path / "single" / "c0"
    single.mkdir(parents=True)
    for name, series, z in (("image.dcm", "ct", 2), ("task01_seg1.dcm", "seg0", 2), ("task01_seg2.dcm", "seg1", 2)):
        shutil.copy(tmp_path / "src" / "pat0" / series / f"im{volume.shape[0] - z:03d}.dcm", single / name)
    shutil.copytree(single, tmp_path / "single" / "c1")
    out = import_dataset("folder", tmp_path / "single", tmp_path / "out_single", folds=2)
    _, items = _dataset(out)
    assert read_png(out / items["c0"]["image"]).shape == (10, 12)
    assert read_png(out / items["c0"]["masks"][0]).sum() == 4 * 4


def test_jpeg_masks_are_binarised_at_128_and_a_grey_level_png_mask_is_refused(tmp_path):
    cases = {}
    for i in range(2):
        image, masks = _case_arrays(i, (32, 32), 2)
        folder = tmp_path / "src" / f"c{i}"
        folder.mkdir(parents=True)
        _png(folder / "image.png", image)
        for k, m in enumerate(masks, 1):
            _png(folder / f"task01_seg{k}.jpg", m * 255, quality=75)
        cases[folder.name] = masks
    out = import_dataset("folder", tmp_path / "src", tmp_path / "out", folds=2)
    _, items = _dataset(out)
    for case, masks in cases.items():
        for path, m in zip(items[case]["masks"], masks):
            stored = read_png(out / path)
            assert set(np.unique(stored)) <= {0, 1}
            assert (stored != m).mean() < 0.02  # JPEG ringing near the border only
    _png(tmp_path / "src" / "c1" / "task01_seg3.png", np.array([[0, 128], [255, 0]] * 16, np.uint8).repeat(16, 1))
    with pytest.raises(DataPreparationError, match=r"task01_seg3.png: mask is not binary \(values 0, 128, 255\)"):
        import_dataset("folder", tmp_path / "src", tmp_path / "out2", folds=2, mask_pattern="task01_seg*")


def test_rgb_and_16_bit_images_and_a_multi_modal_case(tmp_path):
    rng = np.random.default_rng(5)
    shape = (20, 18)
    masks = [_disc(shape, (10, 9), r) for r in (4, 5)]
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, shape, dtype=np.uint16)
    t1 = rng.normal(500, 100, shape).astype(np.float32)
    t2 = rng.normal(0, 1, shape).astype(np.float32)
    for kind in ("rgb", "grey16", "multi"):
        for c in range(2):
            folder = tmp_path / kind / f"c{c}"
            folder.mkdir(parents=True)
            if kind == "rgb":
                _png(folder / "image.png", rgb)
            elif kind == "grey16":
                _png(folder / "image.png", grey16)
            else:
                _nifti(folder / "image_t1.nii.gz", t1)
                _nifti(folder / "image_t2.nii.gz", t2)
            for k, m in enumerate(masks):
                (_nifti(folder / f"task01_seg{k}.nii.gz", m) if kind == "multi" else _png(folder / f"task01_seg{k}.png", m))
    out = import_dataset("folder", tmp_path / "rgb", tmp_path / "out_rgb", folds=2)
    dl, items = _dataset(out)
    assert dl["channels"] == 3
    np.testing.assert_array_equal(read_png(out / items["c0"]["image"]), rgb)

    out = import_dataset("folder", tmp_path / "grey16", tmp_path / "out16", folds=2)
    _, items = _dataset(out)
    np.testing.assert_array_equal(read_png(out / items["c0"]["image"]),
                                  ((grey16.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8))

    out = import_dataset("folder", tmp_path / "multi", tmp_path / "out_multi", folds=2, image_pattern="image_*")
    dl, items = _dataset(out)
    assert dl["channels"] == 2 and items["c0"]["image"] == ["images/c0_c0.png", "images/c0_c1.png"]
    for k, modality in enumerate((t1, t2)):
        lo, hi = float(modality.min()), float(modality.max())
        expected = np.floor((modality.astype(np.float64) - lo) * 255.0 / (hi - lo) + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(read_png(out / items["c0"]["image"][k]), expected)
    from scripts.data.transforms import matting_eval_transforms

    sample = matting_eval_transforms(image_channels=2)(load_datalist(out)["training"][0])
    assert tuple(sample["image"].shape) == (2, 20, 18) and tuple(sample["masks"].shape) == (2, 20, 18)


def test_mixed_sizes_need_spatial_size_then_resize_or_pad_crop(tmp_path):
    _write_png_cases(tmp_path / "src", 2, shape=(24, 20))
    _write_png_cases(tmp_path / "other", 1, shape=(30, 32))
    os.rename(tmp_path / "other" / "case00", tmp_path / "src" / "case02")
    with pytest.raises(DataPreparationError, match=r"case 'case02': size \(30, 32\), case 'case00' has \(24, 20\); "
                                                   r"pass --spatial_size"):
        import_dataset("folder", tmp_path / "src", tmp_path / "out", folds=2)
    out = import_dataset("folder", tmp_path / "src", tmp_path / "resized", folds=2,
                         options=ImportOptions(spatial_size=(32, 32), size_rule="resize"))
    dl, items = _dataset(out)
    assert dl["spatial_shape"] == [32, 32] and items["case02"]["source_shape"] == [30, 32]
    for it in items.values():
        masks = [read_png(out / m) for m in it["masks"]]
        assert masks[0].shape == (32, 32) and set(np.unique(masks[0])) <= {0, 1}
        np.testing.assert_array_equal(read_png(out / it["alpha"]), alpha_from_raters(masks))
    out = import_dataset("folder", tmp_path / "src", tmp_path / "padded", folds=2,
                         options=ImportOptions(spatial_size=(26, 26), size_rule="pad_crop"))
    _, items = _dataset(out)
    original = np.array(Image.open(tmp_path / "src" / "case00" / "image.png"))
    padded = read_png(out / items["case00"]["image"])
    np.testing.assert_array_equal(padded[1:25, 3:23], original)  # centred, padded with 0
    assert (padded[0] == 0).all()
    cropped = read_png(out / items["case02"]["image"])
    np.testing.assert_array_equal(cropped, np.array(Image.open(tmp_path / "src" / "case02" / "image.png"))[2:28, 3:29])


# ------------------------------------------------------------------------------------------ bad input rules
@pytest.mark.parametrize("damage, message", [
    ("mask_shape", r"case01: mask task01_seg02.png has shape \(10, 10\), the image \(24, 20\)"),
    ("one_rater", r"case01: 1 rater mask\(s\) found, at least 2 are needed"),
    ("empty_image", r"case01/image.png: the image is empty \(every value is 7\)"),
    ("no_image", r"case01: no image file"),
    ("unreadable", r"case01/image.png: not a readable .png file"),
])
def test_a_bad_case_stops_the_import_with_one_line_and_writes_nothing(tmp_path, damage, message):
    _write_png_cases(tmp_path / "src", 3)
    case = tmp_path / "src" / "case01"
    if damage == "mask_shape":
        _png(case / "task01_seg02.png", np.zeros((10, 10), np.uint8))
    elif damage == "one_rater":
        for k in (2, 3):
            (case / f"task01_seg{k:02d}.png").unlink()
    elif damage == "empty_image":
        _png(case / "image.png", np.full((24, 20), 7, np.uint8))
    elif damage == "no_image":
        (case / "image.png").unlink()
    else:
        (case / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataPreparationError, match=message):
        import_dataset("folder", tmp_path / "src", tmp_path / "out", folds=2)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary left


def test_skip_bad_cases_lists_them_and_writes_the_rest(tmp_path, capsys):
    _write_png_cases(tmp_path / "src", 4)
    (tmp_path / "src" / "case02" / "task01_seg03.png").unlink()
    (tmp_path / "src" / "case02" / "task01_seg02.png").unlink()
    args = ["--dataset", "folder", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--folds", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "case02: 1 rater mask(s) found" in err
    assert main([*args, "--skip_bad_cases"]) == 0
    printed = capsys.readouterr().out
    assert "skipped        1 case(s):" in printed and "case02" in printed
    dl, items = _dataset(tmp_path / "out")
    assert sorted(items) == ["case00", "case01", "case03"]
    assert dl["skipped"][0]["case"] == "case02"


def test_existing_dataset_survives_a_failed_import(tmp_path):
    _write_png_cases(tmp_path / "src", 3)
    out = import_dataset("folder", tmp_path / "src", tmp_path / "out", folds=2)
    before = (out / "datalist.json").read_bytes()
    _png(tmp_path / "src" / "case02" / "task01_seg01.png", np.full((24, 20), 3, np.uint8) * np.eye(24, 20, dtype=np.uint8) + 1)
    with pytest.raises(DataPreparationError, match="case02/task01_seg01.png: mask is not binary"):
        import_dataset("folder", tmp_path / "src", out, folds=2, overwrite=True)
    assert (out / "datalist.json").read_bytes() == before


# ------------------------------------------------------------------------------------------- folds / splits
def _manifest(tmp_path: Path, count: int, extra: dict[str, list]) -> Path:
    cases = _write_png_cases(tmp_path / "src", count)
    rows = []
    for i, case in enumerate(cases):
        row = {"case": case, "image": f"src/{case}/image.png", "masks": ";".join(f"src/{case}/task01_seg{k:02d}.png" for k in (1, 2, 3))}
        row.update({k: v[i] for k, v in extra.items()})
        rows.append(row)
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_manifest_groups_keep_a_patient_in_one_fold(tmp_path):
    groups = ["p0", "p0", "p0", "p1", "p1", "p2", "p3", "p3"]
    cases = [f"{g}_img{i}" for i, g in enumerate(groups)]
    path = _manifest(tmp_path, 8, {"case": cases, "patient": groups})
    out = import_dataset("manifest", path, tmp_path / "out", folds=3, seed=2)
    _, items = _dataset(out)
    for g in set(groups):
        assert len({it["fold"] for it in items.values() if it["group"] == g}) == 1
    assert {it["fold"] for it in items.values()} == {0, 1, 2}


def test_manifest_fold_column_and_fixed_split_are_kept_as_given(tmp_path):
    path = _manifest(tmp_path / "a", 5, {"fold": ["2", "0", "1", "0", "2"]})
    dl, items = _dataset(import_dataset("manifest", path, tmp_path / "out_a"))
    assert dl["num_folds"] == 3 and [it["fold"] for it in items.values()] == [2, 0, 1, 0, 2]
    path = _manifest(tmp_path / "b", 4, {"split": ["train", "test", "train", "TEST"]})
    dl, items = _dataset(import_dataset("manifest", path, tmp_path / "out_b"))
    assert dl["num_folds"] == 2 and [it["fold"] for it in items.values()] == [1, 0, 1, 0]
    # the split is kept by training and cross-validation: fold 0 only tests, fold 1 is refused
    from scripts.workflows.splits import fold_split
    from tools.crossval import _selected_folds

    split = fold_split(load_datalist(tmp_path / "out_b"), 0)
    assert [it["case"] for it in split["test"]] == ["case01", "case03"]
    with pytest.raises(ValueError, match=r"fold 1: the dataset has a fixed split whose test cases are fold\(s\) \[0\]"):
        fold_split(load_datalist(tmp_path / "out_b"), 1)
    assert _selected_folds(tmp_path / "out_b", None) == [0]
    # a test-case list for the folder layout
    (tmp_path / "tests.txt").write_text("# held out\ncase01\n")
    dl, items = _dataset(import_dataset("folder", tmp_path / "b" / "src", tmp_path / "out_c",
                                        test_cases=tmp_path / "tests.txt"))
    assert [it["fold"] for it in items.values()] == [1, 0, 1, 1]
    path = _manifest(tmp_path / "d", 4, {"fold": ["0", "2", "0", "2"]})
    with pytest.raises(DataPreparationError, match=r"no case in fold\(s\) \[1\]"):
        import_dataset("manifest", path, tmp_path / "out_d")
    path = _manifest(tmp_path / "e", 3, {"split": ["train", "validation", "test"]})
    with pytest.raises(DataPreparationError, match=r"manifest.csv: row 3 \(case 'case01'\)|row 3: split 'validation'"):
        import_dataset("manifest", path, tmp_path / "out_e")


def test_manifest_errors_name_the_file_and_row(tmp_path):
    path = _manifest(tmp_path, 2, {"case": ["a", "a"]})
    with pytest.raises(DataPreparationError, match=r"manifest.csv: row 3: case 'a' already on row 2"):
        import_dataset("manifest", path, tmp_path / "out")
    (tmp_path / "bad.csv").write_text("picture,mask1\nx.png,y.png\n")
    with pytest.raises(DataPreparationError, match=r"bad.csv: no 'image' column"):
        import_dataset("manifest", tmp_path / "bad.csv", tmp_path / "out")
    path = _manifest(tmp_path / "m", 2, {})
    (tmp_path / "m" / "src" / "case01" / "task01_seg02.png").unlink()
    with pytest.raises(DataPreparationError, match=r"case01/task01_seg02.png: file not found"):
        import_dataset("manifest", path, tmp_path / "out")


def test_rater_targets_figure_of_one_imported_case(tmp_path):
    from tools.figures.rater_targets import main as figure_main

    _write_png_cases(tmp_path / "src", 2)
    out = import_dataset("folder", tmp_path / "src", tmp_path / "out", folds=2)
    assert figure_main(["--dataset_dir", str(out), "--case", "case01", "--out", str(tmp_path / "f.png")]) == 0
    with Image.open(tmp_path / "f.png") as img:
        assert img.size[0] > 2 * img.size[1]  # four panels side by side
    assert figure_main(["--dataset_dir", str(out), "--case", "nope", "--out", str(tmp_path / "g.png")]) == 2


def test_an_image_bomb_is_refused_from_its_header(tmp_path):
    from conftest import write_png_bomb

    _write_png_cases(tmp_path / "src", 2)
    write_png_bomb(tmp_path / "src" / "case01" / "image.png", 8200, 8200)  # 67 megapixels
    with pytest.raises(DataPreparationError, match=r"case01/image.png: .*(megapixels|decompression)"):
        import_dataset("folder", tmp_path / "src", tmp_path / "out", folds=2)
