"""MattingPredictionWriter / write_matting_prediction: exact, readable, atomic files."""

from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from PIL import Image

from scripts.handlers import prediction_writer
from scripts.handlers.prediction_writer import (
    MattingPredictionWriter,
    case_name_from_path,
    matting_items_from_output,
    write_matting_prediction,
)


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def test_files_are_exact_and_not_transposed(tmp_path):
    rng = np.random.default_rng(0)
    alpha = rng.random((5, 7), dtype=np.float32)
    alpha[0, :4] = [0.0, 1.0, 0.5, 1.0 / 255]  # edges and a value that rounds (127.5 -> 128)
    unc = rng.random((5, 7)).astype(np.float32)
    paths = write_matting_prediction(tmp_path, "case01", torch.from_numpy(alpha)[None], unc)

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "case01_alpha.npy", "case01_alpha.png", "case01_uncertainty.npy", "case01_uncertainty.png"
    ]  # fmt: skip
    a_npy = np.load(paths["alpha_npy"], allow_pickle=False)
    assert a_npy.dtype == np.float32 and a_npy.shape == (5, 7)
    np.testing.assert_array_equal(a_npy, alpha)
    np.testing.assert_array_equal(np.load(paths["uncertainty_npy"]), unc)

    a_png = _read_png(paths["alpha_png"])
    assert a_png.shape == (5, 7)  # (H, W), no transpose
    expected = np.array([int(round(float(v) * 255)) for v in alpha.ravel()], dtype=np.uint8).reshape(5, 7)
    np.testing.assert_array_equal(a_png, expected)
    assert list(a_png[0, :4]) == [0, 255, 128, 1]
    np.testing.assert_array_equal(
        _read_png(paths["uncertainty_png"]),
        np.array([int(round(float(v) * 255)) for v in unc.ravel()], dtype=np.uint8).reshape(5, 7),
    )


def test_alpha_only_and_overwrite(tmp_path):
    write_matting_prediction(tmp_path, "c", np.zeros((3, 4)), None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c_alpha.npy", "c_alpha.png"]
    write_matting_prediction(tmp_path, "c", np.ones((3, 4)), None)  # replaces the files
    assert np.all(np.load(tmp_path / "c_alpha.npy") == 1.0)
    assert np.all(_read_png(tmp_path / "c_alpha.png") == 255)


@pytest.mark.parametrize(
    "case, alpha, message",
    [
        ("../evil", np.zeros((4, 4)), "file name"),
        ("", np.zeros((4, 4)), "file name"),
        ("c", np.zeros((2, 4, 4)), "shape"),
        ("c", np.full((4, 4), np.nan), "NaN"),
    ],
)
def test_bad_input_is_rejected(tmp_path, case, alpha, message):
    with pytest.raises(ValueError, match=message):
        write_matting_prediction(tmp_path, case, alpha, None)
    assert not any(tmp_path.iterdir())


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_save(f, values, allow_pickle=False):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(prediction_writer.np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_matting_prediction(tmp_path, "c", np.zeros((4, 4)), None)
    # the PNG before it was complete; the npy and its temporary file must not exist
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c_alpha.png"]


def test_case_name_from_path():
    assert case_name_from_path("/a/b/img.nii.gz") == "img"
    assert case_name_from_path("x/case.01.png") == "case.01"
    assert case_name_from_path("scan.NII.GZ") == "scan"


def test_handler_batched_dict_output_with_cases_in_batch(tmp_path):
    alpha = torch.rand(2, 1, 6, 5)
    unc = torch.rand(2, 1, 6, 5)

    def step(engine, batch):
        return {"pred": alpha, "uncertainty": unc}

    engine = Engine(step)
    writer = MattingPredictionWriter(output_dir=tmp_path)
    writer.attach(engine)
    writer.attach(engine)  # attaching twice registers once
    engine.run([{"case": ["a", "b"]}], max_epochs=1)
    for i, case in enumerate(["a", "b"]):
        np.testing.assert_array_equal(np.load(tmp_path / f"{case}_alpha.npy"), alpha[i, 0].numpy())
        np.testing.assert_array_equal(np.load(tmp_path / f"{case}_uncertainty.npy"), unc[i, 0].numpy())
    assert writer.written == ["a", "b"]


def test_handler_decollated_output_names_cases_from_image_metadata(tmp_path):
    alpha = torch.rand(1, 4, 4)

    def step(engine, batch):
        image = MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": "/data/scan7.png"})
        return [{"image": image, "pred": alpha, "uncertainty": None}]

    engine = Engine(step)
    MattingPredictionWriter(output_dir=tmp_path, uncertainty_key=None).attach(engine)
    engine.run([0], max_epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan7_alpha.npy", "scan7_alpha.png"]
    np.testing.assert_array_equal(np.load(tmp_path / "scan7_alpha.npy"), alpha[0].numpy())


def test_output_without_case_name_is_a_clear_error():
    with pytest.raises(ValueError, match="no case name"):
        matting_items_from_output([{"pred": torch.zeros(1, 2, 2)}])
    with pytest.raises(KeyError, match="pred"):
        matting_items_from_output({"alpha": torch.zeros(1, 1, 2, 2)})
