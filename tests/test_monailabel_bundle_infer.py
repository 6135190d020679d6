"""The bundle served by MONAI Label's generic ``BundleInferTask`` as the ``monaibundle`` app creates it
(MONAI Label's default settings: ``configs/inference.yaml``'s ``pre_transforms``, ``inferer``, ``post_transforms``).

MONAI Label's own class runs the shipped ``models/model.pt`` on one PNG; the label it writes is compared
with the alpha matte of the bundle's own prediction path (``load_trained_network`` + ``MattingInferer``).

``monailabel.tasks.infer.bundle`` imports ``monailabel.transform.post``, which imports scikit-image,
shapely and torchvision at module level; the pinned CPU environment has none of them (torchvision would
replace the CPU torch, docs/monailabel.md). Where one is missing, the ``label_imports`` fixture puts an
empty module with the imported names in its place for the duration of a test: none of them is called on
this path (``Restored`` and ``Writer`` use numpy, MONAI and ITK only), and a call would raise.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import smooth_image
from PIL import Image

from scripts import BUNDLE_ROOT

#: what monailabel.transform.post imports from the packages the pinned environment leaves out
_IMPORTED_NAMES = {
    "skimage": [],
    "skimage.measure": ["approximate_polygon", "find_contours"],
    "shapely": [],
    "shapely.geometry": ["Point", "Polygon"],
    "torchvision": [],
    "torchvision.utils": ["make_grid", "save_image"],
}


def _not_installed(name: str):
    def call(*args, **kwargs):
        raise ImportError(f"{name} is not installed (stand-in module of tests/test_monailabel_bundle_infer.py)")

    return call


@pytest.fixture(scope="module")
def label_imports():
    """MONAI Label's bundle task importable; afterwards ``sys.modules`` and ``sys.path`` as before.

    ``BundleInferTask`` drops every ``scripts.*`` module and imports the bundle's again from its folder;
    the test's own modules are put back afterwards so that later tests keep one copy of each class.
    """
    saved_modules = dict(sys.modules)
    saved_path = list(sys.path)
    saved_threads = torch.get_num_threads()
    # one thread: on a busy 2-core machine two OpenMP threads wait for each other (seconds per request
    # of the shipped network on 48 x 32 instead of about 0.1 s)
    torch.set_num_threads(1)
    missing = {n.split(".")[0] for n in _IMPORTED_NAMES if importlib.util.find_spec(n.split(".")[0]) is None}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name, attrs in _IMPORTED_NAMES.items():
            if name.split(".")[0] not in missing:
                continue  # installed: the real package is used
            module = types.ModuleType(name)
            for attr in attrs:
                setattr(module, attr, _not_installed(f"{name}.{attr}"))
            monkeypatch.setitem(sys.modules, name, module)
            if "." in name:
                setattr(sys.modules[name.rsplit(".", 1)[0]], name.rsplit(".", 1)[1], module)
        yield
    for name in [m for m in sys.modules if m not in saved_modules]:
        if name.split(".")[0] in ("scripts", "monailabel") or name in _IMPORTED_NAMES:
            del sys.modules[name]
    for name, module in saved_modules.items():
        if name.split(".")[0] == "scripts":
            sys.modules[name] = module
    sys.path[:] = saved_path
    torch.set_num_threads(saved_threads)


@pytest.fixture(scope="module")
def study_png(tmp_path_factory):
    """A 48 x 32 grey PNG (rows != columns, so a transpose would show) and its uint8 array."""
    image = smooth_image(48, 32)
    image[10:36, 6:24] = np.clip(image[10:36, 6:24].astype(int) + 60, 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("studies") / "case.png"
    Image.fromarray(image).save(path)
    return path, image


@pytest.fixture(scope="module")
def bundle_prediction(study_png):
    """The bundle's own prediction of ``study_png``: ``{"alpha", "uncertainty"}`` as (H, W) float arrays."""
    from scripts.workflows.inference import MattingInferer, load_trained_network

    network = load_trained_network(BUNDLE_ROOT / "models" / "model.pt").eval()
    x = torch.from_numpy(study_png[1].astype(np.float32) / 255.0)[None, None]
    with torch.no_grad():
        out = MattingInferer()(x, network)
    return {k: out[k][0, 0].numpy() for k in ("alpha", "uncertainty")}


@pytest.fixture(scope="module")
def bundle_task(label_imports):
    """MONAI Label's ``BundleInferTask`` on this bundle with MONAI Label's default settings."""
    from monailabel.tasks.infer.bundle import BundleInferTask

    task = BundleInferTask(str(BUNDLE_ROOT), {})
    assert task.is_valid(), "BundleInferTask did not accept the bundle (see its log)"
    return task


def test_the_default_settings_read_the_bundles_inference_config(label_imports):
    """The ``monaibundle`` app passes no settings: MONAI Label reads configs/inference.yaml, whose generic-task
    keys run the batch workflow's image pipeline."""
    from monai.bundle import ConfigParser
    from monailabel.tasks.infer.bundle import BundleConstants

    assert "inference.yaml" in BundleConstants().configs()
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "inference.yaml"))
    shared = parser["preprocessing"]["transform"]["transform"]["transforms"]
    assert shared == "@image_transforms" and "image_transforms" in parser["pre_transforms"]
    assert parser["post_transforms"][0]["_target_"] == "scripts.workflows.label_serving.MattingLabeld"


def test_bundle_infer_task_returns_the_bundles_alpha(bundle_task, study_png, bundle_prediction):
    path, image = study_png
    task = bundle_task
    assert task.labels == {"alpha matte": 0}

    result = {}
    for map_type in ("alpha", "uncertainty"):  # the mask rule: test_matting_labeld_refuses_bad_options_and_outputs
        label_file, result_json = task({"image": str(path), "device": "cpu", "map_type": map_type})
        assert str(label_file).endswith(".png")
        result[map_type] = np.asarray(Image.open(label_file))
        assert result[map_type].shape == image.shape and result[map_type].dtype == np.uint8
        assert result_json["map_type"] == map_type
        np.testing.assert_allclose(result_json["mean_uncertainty"], bundle_prediction["uncertainty"].mean(), atol=1e-5)

    expected_alpha = np.round(np.clip(bundle_prediction["alpha"], 0, 1) * 255)
    expected_uncertainty = np.round(np.clip(bundle_prediction["uncertainty"], 0, 1) * 255)
    # same network, same input: equal up to float rounding at the 8-bit step
    assert np.abs(result["alpha"].astype(int) - expected_alpha).max() <= 1
    assert np.mean(result["alpha"] == expected_alpha) > 0.99
    assert np.abs(result["uncertainty"].astype(int) - expected_uncertainty).max() <= 1
    assert 0 < result["alpha"].mean() < 255, "a constant matte would not test the row/column order"


def test_bundle_infer_task_on_a_nifti_slice(bundle_task, study_png, bundle_prediction, tmp_path):
    """NIfTI is read in (x, y) order: the written map is not transposed; MONAI Label drops a 2-D map's affine."""
    nib = pytest.importorskip("nibabel")
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(study_png[1][..., None], affine), path)
    label_file, result_json = bundle_task({"image": str(path), "device": "cpu"})
    written = nib.load(label_file)
    assert written.shape == study_png[1].shape and result_json["map_type"] == "alpha"
    expected = np.round(np.clip(bundle_prediction["alpha"], 0, 1) * 255)
    assert np.abs(np.asarray(written.dataobj).astype(int) - expected).max() <= 1


def test_request_options_are_never_read_as_config(bundle_task, study_png, tmp_path):
    """A request's ``map_type`` is data: config syntax in it is refused, not evaluated or resolved."""
    marker = tmp_path / "ran"
    for value in (f"$open({str(marker)!r}, 'w').close() or 'alpha'", "@ckpt_path", "%configs/train.yaml#epochs"):
        with pytest.raises(ValueError, match=r"map_type .* is not one of \['alpha', 'uncertainty', 'mask'\]"):
            bundle_task({"image": str(study_png[0]), "device": "cpu", "map_type": value})
    assert not marker.exists()
    assert "displayable_configs" not in bundle_task.bundle_config.get()
    label_file, _ = bundle_task({"image": str(study_png[0]), "device": "cpu", "map_type": "mask", "mask_threshold": 0.3})
    assert set(np.unique(np.asarray(Image.open(label_file)))) <= {0, 1}


def test_config_transforms_do_not_need_monailabel():
    """configs/inference.yaml imports label_serving: it must not pull MONAI Label's extra imports."""
    import ast

    from scripts.workflows import label_serving

    tree = ast.parse(Path(label_serving.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported and not {m for m in imported if m.split(".")[0] in ("monailabel", *_IMPORTED_NAMES)}


def test_matting_labeld_refuses_bad_options_and_outputs():
    from scripts.workflows.label_serving import MattingLabeld

    out = {"pred": {"alpha": torch.full((1, 4, 3), 0.7), "uncertainty": torch.zeros(1, 4, 3)}}
    with pytest.raises(ValueError, match=r"map_type 'contours' is not one of \['alpha', 'uncertainty', 'mask'\]"):
        MattingLabeld("pred")({**out, "map_type": "contours"})
    for bad in ("1.5", float("nan"), "x"):
        with pytest.raises(ValueError, match="mask_threshold .* (is not in|is not a number in) \\(0, 1\\)"):
            MattingLabeld("pred")({**out, "map_type": "mask", "mask_threshold": bad})
    with pytest.raises(ValueError, match="'pred' holds Tensor, not the inferer's dict"):
        MattingLabeld("pred")({"pred": torch.zeros(1, 4, 4)})
    # request options arrive as text and win over the defaults; no image meta data: the array's order
    label = MattingLabeld("pred", map_type="alpha")({**out, "map_type": " Mask ", "mask_threshold": "0.6"})
    assert label["pred"].shape == (4, 3) and label["pred"].dtype == torch.uint8 and label["pred"].min() == 1
    assert label["result"] == {"map_type": "mask", "mean_uncertainty": 0.0, "mask_threshold": 0.6}
    assert MattingLabeld("pred", map_type="mask", mask_threshold=0.8)(out)["pred"].max() == 0  # the defaults


def test_label_geometry_follows_the_reader():
    """PNG (read as rows, columns): (x, y) size and a transpose; NIfTI (read as x, y): as it is."""
    from monai.data import MetaTensor

    from scripts.workflows.label_serving import ROWS_FIRST_KEY, LabelGeometryd, MattingLabeld

    alpha = torch.arange(12, dtype=torch.float32).reshape(1, 4, 3) / 11
    for source, rows_first in (("case.png", True), ("case.nii.gz", False)):
        image = MetaTensor(torch.zeros(1, 4, 3), meta={"filename_or_obj": source, "spatial_shape": [9, 9, 1]})
        d = LabelGeometryd("image")({"image": image})
        assert d["image"].meta[ROWS_FIRST_KEY] is rows_first
        assert list(d["image"].meta["spatial_shape"]) == ([3, 4] if rows_first else [4, 3])
        d["pred"] = {"alpha": alpha, "uncertainty": torch.zeros_like(alpha)}
        label = MattingLabeld("pred")(d)["pred"]
        expected = torch.round(alpha[0] * 255).to(torch.uint8)
        assert torch.equal(label, expected.T if rows_first else expected)
    with pytest.raises(ValueError, match="'image': expected a \\(C, H, W\\) MetaTensor"):
        LabelGeometryd("image")({"image": torch.zeros(4, 3)})
