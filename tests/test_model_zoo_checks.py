"""The checks of model-zoo's ``ci/verify_bundle.py``, offline and on a tiny network.

model-zoo runs, per bundle: required files, version / changelog, metadata against the schema,
``verify_net_in_out`` and ``ckpt_export`` to TorchScript (then ``torch.jit.load`` of a shipped
``models/model.ts``). Here the schema is the pinned copy in ``../shared/monai`` (no download), the
shape and export checks use :data:`conftest.TINY_NETWORK` so that they take seconds, and the
release-weights check runs once ``models/model.pt`` exists.
"""

import json
import re

import pytest
import torch

from conftest import BUNDLE_ROOT, EXPORT_CONFIG, SHARED, TINY_NETWORK

SCHEMA = SHARED / "monai" / "meta_schema_20240725.json"
META = BUNDLE_ROOT / "configs" / "metadata.json"
RELEASE_WEIGHTS = BUNDLE_ROOT / "models" / "model.pt"


def _metadata() -> dict:
    return json.loads(META.read_text())


@pytest.mark.parametrize("name", ["configs/metadata.json", "LICENSE", "docs/README.md"])
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
    # resolution-free network: no fixed spatial shape for the input or the outputs
    assert image["spatial_shape"] == ["*", "*"]
    assert set(outputs) == {"pred", "uncertainty"}
    for out in outputs.values():
        assert out["spatial_shape"] == ["*", "*"] and out["num_channels"] == 1 and out["value_range"] == [0, 1]
    for modality in ("MR", "CT", "dermoscopy"):
        assert modality in image["modality"]
    assert "contributors" in meta["authors"]
    # cross-validation result of the default recipe, as written by python -m scripts.reproduce
    cv = json.loads((BUNDLE_ROOT / "docs" / "results" / "brain_growth_cv.json").read_text())["recipes"]["ours"]["mean"]
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
