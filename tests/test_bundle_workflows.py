"""The bundle's workflows as a newcomer and as model-zoo's ``ci/unit_tests`` run them, on real Brain-growth data.

- CLI: ``monai.bundle run training --config_file configs/train.yaml --dataset_dir ... --fold 0`` followed by
  ``monai.bundle run --config_file configs/inference.yaml`` given only paths serves the trained model
  (a tiny network and one epoch: the network is read from the checkpoint, not typed again).
- In one process: training -> evaluation -> inference through ``ConfigWorkflow``, each passing
  ``check_properties()``, with MONAI's global metadata tracking restored by every ``finalize``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES, cli_args, run_bundle
from PIL import Image

from scripts import BUNDLE_ROOT
from scripts.data.prepare import prepare_dataset

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def brain_growth(tmp_path_factory, brain_growth_dir):
    out = tmp_path_factory.mktemp("bg") / "brain-growth"
    return prepare_dataset(
        "brain-growth", out,
        source=brain_growth_dir / "brain_growth_alpha.zip", trimaps=brain_growth_dir / "trimap_brain.zip",
    )  # fmt: skip


def test_newcomer_trains_then_serves_with_paths_only(brain_growth, tmp_path):
    models = tmp_path / "models"
    proc = run_bundle(
        "training", "--config_file", "configs/train.yaml", "--dataset_dir", str(brain_growth), "--fold", "0",
        "--ckpt_dir", str(models), "--output_dir", str(tmp_path / "eval"), "--epochs", "1",
        "--progress_bar", "false", *cli_args(TINY_OVERRIDES), OMP_NUM_THREADS="1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    image = brain_growth / "images" / "case01.png"
    if not image.is_file():
        image = sorted((brain_growth / "images").iterdir())[0]
    out = tmp_path / "out"
    proc = run_bundle(
        "run", "--config_file", "configs/inference.yaml", "--input_path", str(image), "--output_dir", str(out),
        "--ckpt_path", str(models / "model.pt"), OMP_NUM_THREADS="1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    case = image.name[: -len(".png")]
    alpha = np.load(out / f"{case}_alpha.npy")
    with Image.open(image) as im:
        assert alpha.shape == im.size[::-1]
    assert alpha.dtype == np.float32 and 0.0 <= alpha.min() <= alpha.max() <= 1.0 and np.isfinite(alpha).all()
    assert (out / f"{case}_uncertainty.png").is_file()


def test_train_evaluate_infer_in_one_process(brain_growth, tmp_path):
    from monai.bundle import ConfigWorkflow
    from monai.data import get_track_meta

    common = dict(bundle_root=str(BUNDLE_ROOT), dataset_dir=str(brain_growth), fold=1, ckpt_dir=str(tmp_path / "models"),
                  output_dir=str(tmp_path / "eval"), epochs=1, progress_bar=False, **TINY_OVERRIDES)
    configs = [str(BUNDLE_ROOT / "configs" / name) for name in ("train.yaml", "evaluate.yaml")]
    for config_file, workflow_type in [(configs[0], "train"), (configs, "infer")]:
        workflow = ConfigWorkflow(config_file=config_file, workflow_type=workflow_type, **common)
        workflow.initialize()
        assert workflow.check_properties() == []
        workflow.run()
        workflow.finalize()
        assert get_track_meta() is True  # finalize restored MONAI's default
    metrics = (tmp_path / "eval" / "metrics.json").read_text()
    assert '"sad_unknown"' in metrics and '"dice"' in metrics

    folder = tmp_path / "images"  # a folder of three of the cases
    folder.mkdir()
    for image in sorted((brain_growth / "images").iterdir())[:3]:
        (folder / image.name).symlink_to(image)
    inference = ConfigWorkflow(
        config_file=str(BUNDLE_ROOT / "configs" / "inference.yaml"), workflow_type="infer",
        bundle_root=str(BUNDLE_ROOT), input_path=str(folder),
        output_dir=str(tmp_path / "inference"), ckpt_path=str(tmp_path / "models" / "model.pt"),
    )  # fmt: skip
    inference.initialize()
    assert inference.check_properties() == []
    inference.run()
    inference.finalize()
    written = sorted(p.name for p in (tmp_path / "inference").glob("*_alpha.npy"))
    assert written == sorted(f"{p.name[:-len('.png')]}_alpha.npy" for p in folder.iterdir()) and len(written) == 3
    # the served network is the trained one (tiny widths read from the checkpoint, not typed here)
    assert inference.network_def.config["prob_filters"] == TINY_OVERRIDES["prob_filters"]
    assert isinstance(inference.network_def, torch.nn.Module)
