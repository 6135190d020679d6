"""The Fig. 4-style figure: panels read from the right files (ours from each case's test fold), grid size, errors."""

import json

import numpy as np
import pytest
from PIL import Image

from tools.figures import qualitative


def make_inputs(root, cases=3, size=20):
    """A tiny dataset, a classic-mattes folder (2 methods) and a cross-validation folder (2 folds)."""
    data, base, cv = root / "data", root / "mattes", root / "cv"
    yy, xx = np.mgrid[:size, :size]
    items = []
    for i in range(cases):
        alpha = np.clip((size / 3 - np.hypot(yy - size / 2, xx - size / 2)) / 3 + 0.5, 0, 1)
        trimap = np.where(alpha >= 1, 255, np.where(alpha <= 0, 0, 128)).astype(np.uint8)
        fold = i % 2
        for sub, arr in (("images", 0.2 + 0.6 * alpha), ("alpha", alpha)):
            (data / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.rint(arr * 255).astype(np.uint8)).save(data / sub / f"c{i}.png")
        (data / "trimaps").mkdir(exist_ok=True)
        Image.fromarray(trimap).save(data / "trimaps" / f"c{i}.png")
        items.append({"case": f"c{i}", "fold": fold, "image": f"images/c{i}.png", "alpha": f"alpha/c{i}.png",
                      "trimap": f"trimaps/c{i}.png"})
        for method, value in (("cf", 0.25), ("bayes", 0.75)):
            (base / method).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((size, size), int(value * 255), np.uint8)).save(base / method / f"c{i}.png")
        for k in (0, 1):  # every fold predicts every case here; only the test fold's file may be used
            (cv / f"fold{k}" / "predictions").mkdir(parents=True, exist_ok=True)
            np.save(cv / f"fold{k}" / "predictions" / f"c{i}_alpha.npy",
                    np.full((size, size), 0.9 if k == fold else 0.1, np.float32))
    (data / "datalist.json").write_text(json.dumps({"num_folds": 2, "training": items}))
    return data, base, cv


def test_panels_come_from_the_test_fold_and_table_order(tmp_path):
    data, base, cv = make_inputs(tmp_path)
    datalist = json.loads((data / "datalist.json").read_text())
    assert qualitative.default_cases(datalist) == ["c0", "c1"]  # first case of each fold
    columns, rows = qualitative.load_panels(data, ["c0", "c1", "c2"], base, cv)
    assert columns == ["bayes", "cf", "ours"]  # Table 1 order, ours last
    for row in rows:
        assert np.allclose(row["mattes"]["ours"], 0.9)  # the test fold's prediction, not another fold's
        assert np.allclose(row["mattes"]["cf"], 63 / 255)
    assert [r["fold"] for r in rows] == [0, 1, 0]


def test_figure_png_has_the_grid_size(tmp_path):
    data, base, cv = make_inputs(tmp_path)
    out = tmp_path / "fig" / "q.png"
    qualitative.main(["--dataset_dir", str(data), "--baselines", str(base), "--crossval_dir", str(cv),
                      "--out", str(out), "--dpi", "50"])
    with Image.open(out) as im:
        assert im.format == "PNG"
        width, height = im.size
    ncols, nrows = 2 + 3, 2  # image, ground truth, bayes, cf, ours; default: 2 cases (one per fold)
    assert abs(width - qualitative.PANEL_INCHES * ncols * 50) <= 1  # inches x dpi, up to rounding
    assert abs(height - (qualitative.PANEL_INCHES * nrows + 0.5) * 50) <= 1
    pixels = np.asarray(Image.open(out).convert("L"))
    assert pixels.std() > 10  # panels drawn, not an empty canvas

    only = tmp_path / "only.png"
    qualitative.main(["--dataset_dir", str(data), "--baselines", str(base), "--methods", "cf",
                      "--cases", "c0", "c1", "c2", "--out", str(only), "--dpi", "50"])
    with Image.open(only) as im:
        width, height = im.size  # image, ground truth, cf; 3 cases
    assert abs(width - qualitative.PANEL_INCHES * 3 * 50) <= 1
    assert abs(height - (qualitative.PANEL_INCHES * 3 + 0.5) * 50) <= 1


def test_figure_errors(tmp_path):
    data, base, cv = make_inputs(tmp_path)
    (cv / "fold1" / "predictions" / "c1_alpha.npy").unlink()
    with pytest.raises(FileNotFoundError, match="c1 .*test fold is 1"):
        qualitative.load_panels(data, ["c1"], base, cv)
    with pytest.raises(FileNotFoundError, match="knn"):
        qualitative.load_panels(data, ["c0"], base, None, methods=["knn"])
    with pytest.raises(ValueError, match="c9"):
        qualitative.load_panels(data, ["c9"], base, cv)
    with pytest.raises(ValueError, match="nothing to compare"):
        qualitative.load_panels(data, ["c0"], None, None)
    with pytest.raises(ValueError, match="at least one case"):
        qualitative.save_qualitative_figure(["cf"], [], tmp_path / "x.png")
