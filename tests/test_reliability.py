"""Errors a user can cause in training, cross-validation and checkpoints end in one line naming the file or
option; a killed cross-validation's temporaries are removed by the next run (docs/reliability.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_bundle
from scripts.data.datalist import load_datalist
from scripts.data.errors import DatasetValidationError
from scripts.data.prepare import prepare_dataset
from scripts.data.transforms import CheckMattingSampled, matting_eval_transforms


@pytest.fixture
def dataset(tmp_path) -> Path:
    return prepare_dataset("phantom", tmp_path / "ds", num_cases=4, folds=2, seed=0, preset="lidc")


def _edit_first_item(dataset: Path, **changes) -> None:
    path = dataset / "datalist.json"
    datalist = json.loads(path.read_text())
    datalist["training"][0].update(changes)
    path.write_text(json.dumps(datalist))


def _chain(error: BaseException) -> str:
    parts = []
    while error is not None:
        parts.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(parts)


# ------------------------------------------------------------------------------ datalist paths
@pytest.mark.parametrize("key, value, problem", [
    ("image", "/etc/passwd", "absolute paths are refused"),
    ("alpha", "../../outside.png", "leaves the dataset folder"),
    ("masks", ["masks/case001_r0.png", "../ds/../../x.png"], "leaves the dataset folder"),
    ("trimap", "trimaps/link.png", "leaves the dataset folder"),  # a symbolic link out of the folder
])
def test_datalist_paths_that_leave_the_dataset_folder_are_refused(dataset, tmp_path, key, value, problem):
    outside = tmp_path / "outside.png"
    outside.write_bytes((dataset / "trimaps" / "case001.png").read_bytes())
    (dataset / "trimaps" / "link.png").symlink_to(outside)
    _edit_first_item(dataset, **{key: value})
    with pytest.raises(DatasetValidationError, match=problem) as err:
        load_datalist(dataset)
    message = str(err.value)
    assert "\n" not in message and "datalist.json" in message and "case 'case001'" in message and key in message


def test_datalist_structure_errors_name_the_file(dataset):
    path = dataset / "datalist.json"
    datalist = json.loads(path.read_text())
    for broken in ({**datalist, "training": {"a": 1}}, {**datalist, "num_folds": "4"}):
        path.write_text(json.dumps(broken))
        with pytest.raises(DatasetValidationError, match=str(path)):
            load_datalist(dataset)


# ------------------------------------------------------------------------------ NaN / Inf and broken images
def _sample(**changes):
    sample = {"case": "case007", "image": np.zeros((1, 4, 4), np.float32), "alpha": np.zeros((1, 4, 4), np.float32),
              "masks": np.zeros((2, 4, 4), np.float32), "trimap": np.zeros((1, 4, 4), np.float32)}
    return {**sample, **changes}


@pytest.mark.parametrize("key, bad", [("masks", np.nan), ("trimap", np.inf), ("alpha", -np.inf), ("image", np.nan)])
def test_nan_or_inf_is_found_when_the_case_is_loaded(key, bad):
    value = _sample()[key].copy()
    value[0, 1, 2] = bad
    with pytest.raises(ValueError, match=rf"case case007: '{key}' holds NaN or infinite values"):
        CheckMattingSampled()(_sample(**{key: torch.as_tensor(value) if key == "trimap" else value}))


def test_nan_in_a_float_mask_file_is_reported_with_the_case_by_the_load_pipeline(dataset):
    item = load_datalist(dataset)["training"][0]
    mask = np.zeros(Image.open(item["masks"][0]).size[::-1], np.float32)
    mask[3, 3] = np.nan
    Image.fromarray(mask, mode="F").save(Path(item["masks"][0]).with_suffix(".tif"))
    item["masks"] = [str(Path(item["masks"][0]).with_suffix(".tif")), *item["masks"][1:]]
    with pytest.raises(Exception) as err:
        matting_eval_transforms()(item)
    assert f"case {item['case']}: 'masks'" in _chain(err.value) and "NaN or infinite" in _chain(err.value)


@pytest.mark.parametrize("damage, reason", [("truncate", "truncated or corrupt image"), ("empty", "the file is empty")])
def test_truncated_or_empty_image_names_the_case_and_file(dataset, damage, reason):
    item = load_datalist(dataset)["training"][1]
    data = Path(item["alpha"]).read_bytes()
    Path(item["alpha"]).write_bytes(data[: len(data) // 2] if damage == "truncate" else b"")
    with pytest.raises(Exception) as err:
        matting_eval_transforms()(item)
    assert f"case {item['case']}: cannot read 'alpha' file {item['alpha']}: {reason}" in _chain(err.value)


# ------------------------------------------------------------------------------ checkpoints
def test_empty_training_checkpoint_is_one_line_naming_the_file(tmp_path):
    from ignite.engine import Engine

    from scripts.handlers.checkpoint import TrainingCheckpointHandler

    ckpt = tmp_path / "models"
    ckpt.mkdir()
    (ckpt / "checkpoint_epoch=2.pt").write_bytes(b"")
    engine = Engine(lambda e, b: None)
    TrainingCheckpointHandler(ckpt, {"network": torch.nn.Linear(1, 1)}).attach(engine)
    with pytest.raises(RuntimeError) as err:
        engine.run([0], max_epochs=3)
    message = str(err.value)
    assert "\n" not in message and str(ckpt / "checkpoint_epoch=2.pt") in message and "empty or truncated" in message


@pytest.mark.parametrize("content", [b"", "truncated"])
def test_read_state_dict_empty_or_truncated_checkpoint(tmp_path, content):
    from scripts.workflows.inference import read_state_dict

    path = tmp_path / "model.pt"
    if content == "truncated":
        torch.save({"w": torch.zeros(64)}, path)
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(ValueError, match="cannot be read as weights") as err:
        read_state_dict(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------ cross-validation CLI
def _crossval_error(capsys, argv):
    from tools.crossval import main

    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    return err[0]


def test_crossval_user_errors_are_one_line_with_exit_2(dataset, tmp_path, capsys):
    out = ["--output_dir", str(tmp_path / "cv")]
    assert "not found" in _crossval_error(capsys, ["--dataset_dir", str(tmp_path / "nothing"), *out])
    assert "--folds 7: not in 0 .. 1" in _crossval_error(capsys, ["--dataset_dir", str(dataset), "--folds", "7", *out])
    assert "--fold" in _crossval_error(capsys, ["--dataset_dir", str(dataset), "--fold", "0", *out])
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert f"--output_dir {blocker / 'cv'}: cannot write there" in _crossval_error(
        capsys, ["--dataset_dir", str(dataset), "--output_dir", str(blocker / "cv")])
    path = dataset / "datalist.json"
    text = path.read_text()
    path.write_text(text.replace('"num_folds": 2', '"num_folds": 1'))
    assert "num_folds is 1; cross-validation needs at least 2 folds" in _crossval_error(
        capsys, ["--dataset_dir", str(dataset), *out])
    path.write_text(text[: len(text) // 2])
    assert f"{path}: cannot read" in _crossval_error(capsys, ["--dataset_dir", str(dataset), *out])
    assert not (tmp_path / "cv" / "crossval.json").exists()


def test_crossval_removes_a_killed_runs_temporaries(dataset, tmp_path, dead_pid):
    from tools.crossval import run_crossval

    cv = tmp_path / "cv"
    (cv / "fold0" / "predictions").mkdir(parents=True)
    (cv / "fold0" / "metrics.json").write_text(json.dumps({"num_cases": 2, "metrics": {"sad_unknown": {"mean": 1.0}}}))
    stale = [cv / f".crossval.json.{dead_pid}-{'a' * 32}.tmp", cv / "fold0" / f".metrics_per_case.json.{dead_pid}-{'b' * 32}.tmp",
             cv / "fold0" / "predictions" / f".case001_alpha.png.{dead_pid}-{'c' * 32}.tmp"]
    live = cv / "fold0" / f".figure_fold0.png.{os.getpid()}-{'d' * 32}.tmp"
    for path in (*stale, live):
        path.write_bytes(b"partial")
    result = run_crossval(dataset, cv, folds=[0], echo=False)
    assert result["aggregate"]["finished"] == [0]
    assert not any(p.exists() for p in stale) and live.exists()
    assert json.loads((cv / "crossval.json").read_text())["mean"]["sad_unknown"] == 1.0


def test_reproduce_bad_source_is_one_line_with_exit_2(tmp_path, capsys):
    from tools.reproduce import main

    rc = main(["--source", str(tmp_path / "missing.zip"), "--trimaps", str(tmp_path / "missing_t.zip"),
               "--data_dir", str(tmp_path / "bg"), "--work_dir", str(tmp_path / "runs"),
               "--results_dir", str(tmp_path / "results")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: {tmp_path / 'missing.zip'}: source not found"], err


def test_reproduce_with_overrides_refuses_the_recorded_run_folders(tmp_path, capsys):
    """A run with bundle overrides is keyed like the plain recipe: in the default folders it would resume
    the recipe's recorded folds and overwrite its report, so it must name folders of its own."""
    from tools.reproduce import DEFAULT_RESULTS_DIR, DEFAULT_WORK_DIR, main

    before = {p: p.stat().st_mtime_ns for p in DEFAULT_RESULTS_DIR.glob("brain_growth*")}
    for folders in (["--results_dir", str(tmp_path / "results")], ["--work_dir", str(tmp_path / "runs")]):
        rc = main(["--epochs", "100", "--data_dir", str(tmp_path / "bg"), *folders])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "--epochs 100 change recipe 'ours'" in err[0], err
        assert str(DEFAULT_WORK_DIR) in err[0] and str(DEFAULT_RESULTS_DIR) in err[0]
    assert not (tmp_path / "bg").exists()  # refused before any data preparation
    assert {p: p.stat().st_mtime_ns for p in DEFAULT_RESULTS_DIR.glob("brain_growth*")} == before


# ------------------------------------------------------------------------------ monai.bundle run
def test_bundle_training_refuses_a_datalist_path_outside_the_dataset(dataset, tmp_path, tiny_cli_args):
    _edit_first_item(dataset, image="../../etc/passwd")
    proc = run_bundle("training", "--config_file", "configs/train.yaml", "--dataset_dir", str(dataset), "--fold", "0",
                      "--epochs", "1", "--output_dir", str(tmp_path / "out"), "--ckpt_dir", str(tmp_path / "models"),
                      *tiny_cli_args, timeout=280, OMP_NUM_THREADS="1")
    assert proc.returncode != 0
    assert f"{dataset / 'datalist.json'}: case 'case001': image '../../etc/passwd': leaves the dataset folder" in proc.stderr
    assert not (tmp_path / "models" / "model.pt").exists()
