"""CLI inference's handling of its inputs and output folder (docs/inference.md, "Inputs")."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import BUNDLE_ROOT


def test_folders_named_like_images_and_unmatched_images_are_named_in_a_warning(tmp_path):
    from scripts.workflows.inference import list_input_images

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a_image.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a_mask.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.warns(UserWarning, match=r"dir\.png/ \(a folder\)"):
        items = list_input_images(tmp_path)
    assert [i["case"] for i in items] == ["a_image", "a_mask"]
    with pytest.warns(UserWarning) as record:
        items = list_input_images(tmp_path, pattern="*_image.png")
    assert [i["case"] for i in items] == ["a_image"]
    assert any("a_mask.png" in str(w.message) and "--pattern" in str(w.message) for w in record)


def test_an_output_folder_must_be_new_empty_or_a_previous_runs(tmp_path):
    from scripts.workflows.inference import prepare_output_dir

    with pytest.raises(ValueError, match=r"--output_dir .*configs holds files that are not inference outputs"):
        prepare_output_dir(BUNDLE_ROOT / "configs")
    old = tmp_path / "out"
    old.mkdir()
    for name in ("old_alpha.png", "old_uncertainty.npy", "inference_summary.json", "config_1.json"):
        (old / name).write_bytes(b"x")
    prepare_output_dir(old)  # a previous run's maps and summary go; tracking records stay
    assert sorted(p.name for p in old.iterdir()) == ["config_1.json"]
    (old / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        prepare_output_dir(old)
    assert (old / "notes.txt").read_text() == "mine"


def test_figure_true_writes_image_alpha_and_uncertainty_side_by_side(tmp_path, make_tiny_net):
    import torch
    from monai.bundle import run

    torch.save(make_tiny_net().state_dict(), tmp_path / "model.pt")
    Image.fromarray(np.tile(np.arange(0, 240, 8, dtype=np.uint8), (24, 1))).save(tmp_path / "a.png")
    out = tmp_path / "out"
    run("inference", config_file=str(BUNDLE_ROOT / "configs" / "inference.yaml"),
        meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"), bundle_root=str(BUNDLE_ROOT),
        input_path=str(tmp_path / "a.png"), output_dir=str(out), ckpt_path=str(tmp_path / "model.pt"), figure=True)
    with Image.open(out / "a_figure.png") as figure:
        assert figure.size[0] > 2 * figure.size[1]  # three panels in a row
    assert sorted(p.name for p in out.glob("a_*")) == ["a_alpha.npy", "a_alpha.png", "a_figure.png",
                                                       "a_uncertainty.npy", "a_uncertainty.png"]
