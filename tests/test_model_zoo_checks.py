"""The checks of model-zoo's ``ci/verify_bundle.py``, offline.

model-zoo runs, per bundle: the large files of ``large_files.yml`` (download, sha256), required and
preferred files, version / changelog, metadata against the schema, and in ``-m full`` mode the
properties of every app in ``supported_apps``, ``verify_net_in_out`` and ``ckpt_export`` to
TorchScript with ``configs/inference.yaml`` and ``models/model.pt``. Here the schema is the pinned
copy in ``../shared/monai`` (no download); :func:`test_full_mode_checks_on_the_release_weights` runs
the full-mode steps as the CI calls them; the other shape and export checks use
:data:`conftest.TINY_NETWORK` so that they take seconds. TensorRT is not checked (no GPU).
"""

import hashlib
import json
import re
import shutil

import pytest
import torch

from conftest import BUNDLE_ROOT, EXPORT_CONFIG, SHARED, TINY_NETWORK

SCHEMA = SHARED / "monai" / "meta_schema_20240725.json"
META = BUNDLE_ROOT / "configs" / "metadata.json"
RELEASE_WEIGHTS = BUNDLE_ROOT / "models" / "model.pt"
LARGE_FILES = BUNDLE_ROOT / "large_files.yml"


def _metadata() -> dict:
    return json.loads(META.read_text())


@pytest.mark.parametrize("name", ["configs/metadata.json", "LICENSE", "docs/README.md", "models/model.pt",
                                  "configs/inference.yaml", "large_files.yml"])
def test_required_file(name):
    assert (BUNDLE_ROOT / name).is_file(), f"{name} is required by the MONAI bundle specification / model-zoo"


def test_release_weights_load_and_script():
    if not RELEASE_WEIGHTS.is_file():
        pytest.skip("models/model.pt (the release weights) is not in the bundle yet; this check runs once it is")
    from scripts.networks import MedicalMattingNet

    state = torch.load(RELEASE_WEIGHTS, map_location="cpu", weights_only=True)
    config = MedicalMattingNet.checkpoint_config(state)
    assert config is not None, "models/model.pt does not carry the network configuration (_extra_state)"
    net = MedicalMattingNet(**config)
    net.load_state_dict(state)
    scripted = torch.jit.script(net.eval())
    image = torch.rand(1, config["in_channels"], 64, 48)
    with torch.no_grad():
        assert (scripted(image) - net(image)).abs().max() <= 1e-5


def test_version_and_changelog():
    meta = _metadata()
    version = meta["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    assert version in meta["changelog"], f"version {version} has no changelog entry"

    def key(v):
        return tuple(int(x) for x in v.split("."))

    assert max(meta["changelog"], key=key) == version, "the version must be the newest changelog entry"
    assert list(meta["changelog"]) == sorted(meta["changelog"], key=key, reverse=True), "changelog: newest first"


@pytest.mark.skipif(not SCHEMA.is_file(), reason=f"bundle metadata schema not found at {SCHEMA} (../shared is absent)")
def test_metadata_schema():
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(_metadata(), schema)  # what monai.bundle verify_metadata runs


def test_metadata_describes_the_model():
    meta = _metadata()
    io = meta["network_data_format"]
    image, outputs = io["inputs"]["image"], io["outputs"]
    # resolution-free network: the input's "16*n" is what model-zoo's CI builds (n = 1: 16 x 16, a
    # real image; "*" builds 1 x 1); outputs have the input's size, whatever it is
    assert image["spatial_shape"] == ["16*n", "16*n"]
    assert meta["supported_apps"] == {"monai-label": "0.8.5"}
    assert set(outputs) == {"pred", "uncertainty"}
    for out in outputs.values():
        assert out["spatial_shape"] == ["*", "*"] and out["num_channels"] == 1 and out["value_range"] == [0, 1]
    for modality in ("MR", "CT", "dermoscopy"):
        assert modality in image["modality"]
    assert "contributors" in meta["authors"]
    # cross-validation result of the default recipe (the shipped weights' recipe), mean over its training
    # seeds, as written by python -m tools.reproduce
    cv = json.loads((BUNDLE_ROOT / "docs" / "results" / "brain_growth_cv.json").read_text())["seed_summaries"]["ours"]["mean"]
    for metric in ("sad", "mse", "grad", "conn"):
        assert meta["eval_metrics"][f"brain_growth_4fold_cv_{metric}"] == round(cv[f"{metric}_unknown"], 4), metric
    for metric in ("ged", "dice"):
        assert meta["eval_metrics"][f"brain_growth_4fold_cv_{metric}"] == round(cv[metric], 4), metric


@pytest.mark.parametrize("size", [40, 136])
def test_verify_net_in_out(size):
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(META), config_file=str(EXPORT_CONFIG), any=size,
                      bundle_root=str(BUNDLE_ROOT), **TINY_NETWORK)


def test_outputs_keep_any_input_size():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(EXPORT_CONFIG))
    parser.update(TINY_NETWORK)
    net = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        for h, w in [(24, 40), (136, 72)]:
            out = net.predict(torch.rand(1, 1, h, w))
            assert out["alpha"].shape == out["uncertainty"].shape == (1, 1, h, w)


def test_torchscript_export(tiny_torchscript):
    ts, net = tiny_torchscript  # written by monai.bundle ckpt_export (conftest.export_tiny_torchscript)
    model = torch.jit.load(str(ts))
    image = torch.rand(1, 1, 36, 52)
    with torch.no_grad():
        assert (model(image) - net(image)).abs().max() <= 1e-5


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def test_large_files_describe_the_shipped_weights():
    import yaml

    entries = yaml.safe_load(LARGE_FILES.read_text())["large_files"]
    assert [e["path"] for e in entries] == ["models/model.pt"]
    (entry,) = entries
    assert entry["hash_type"] == "sha256" and entry["url"].startswith("https://")
    assert entry["hash_val"] == _sha256(RELEASE_WEIGHTS), "large_files.yml: hash_val is not models/model.pt's sha256"


def test_download_large_files_skips_the_tracked_weights_and_refuses_a_changed_file(tmp_path):
    from monai.apps.utils import HashCheckError
    from monai.bundle import download_large_files

    download_large_files(bundle_path=str(BUNDLE_ROOT))  # offline: the file is there with its hash, nothing fetched
    # a bundle whose models/model.pt differs from large_files.yml: an error, the file is left as it was
    (tmp_path / "models").mkdir()
    shutil.copy(LARGE_FILES, tmp_path / "large_files.yml")
    (tmp_path / "models" / "model.pt").write_bytes(b"not the release weights")
    with pytest.raises(HashCheckError, match="sha256"):
        download_large_files(bundle_path=str(tmp_path))
    assert (tmp_path / "models" / "model.pt").read_bytes() == b"not the release weights"


def test_spatial_shape_builds_a_real_input():
    from monai.bundle.scripts import _get_fake_spatial_shape

    shape = _metadata()["network_data_format"]["inputs"]["image"]["spatial_shape"]
    assert _get_fake_spatial_shape(shape) == (16, 16)  # the CI's defaults n = p = any = 1


def test_full_mode_checks_on_the_release_weights(tmp_path, monkeypatch):
    """``verify_bundle.py -m full`` after the metadata checks: properties, data shape, TorchScript export."""
    from monai.bundle import ckpt_export, create_workflow, verify_net_in_out

    from scripts.monailabel_app.lib.bundle_properties import MONAI_LABEL_BUNDLE_PROPERTIES

    monkeypatch.chdir(tmp_path)  # nothing the checks write lands in the bundle
    inference = str(BUNDLE_ROOT / "configs" / "inference.yaml")
    common = dict(config_file=inference, meta_file=str(META), bundle_root=str(BUNDLE_ROOT))
    # verify_bundle_properties: the inference workflow against the properties of each supported app
    assert set(_metadata()["supported_apps"]) == {"monai-label"}
    workflow = create_workflow(workflow_type="inference", logging_file=str(BUNDLE_ROOT / "configs" / "logging.conf"),
                               **common)
    workflow.properties = MONAI_LABEL_BUNDLE_PROPERTIES
    assert workflow.check_properties() == []
    # verify_data_shape: the CI's fake input from spatial_shape, the release network built by inference.yaml
    verify_net_in_out(net_id="network_def", **common)
    # verify_torchscript: ckpt_export of models/model.pt with inference.yaml, then torch.jit.load
    ts = tmp_path / "verify_model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(RELEASE_WEIGHTS), **common)
    model = torch.jit.load(str(ts))
    image = torch.rand(1, 1, 40, 24)
    with torch.no_grad():
        assert model(image).shape == (1, 1, 40, 24)
