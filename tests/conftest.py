"""Shared test fixtures and paths."""

import os
import sys
from pathlib import Path

import pytest

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDICAL_MATTING_SHARED", BUNDLE_ROOT.parent / "shared"))
BRAIN_GROWTH_DIR = SHARED / "data" / "brain-growth"

if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))

# keep the suite predictable on the 2-core machines
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def bundle_root() -> Path:
    return BUNDLE_ROOT


@pytest.fixture(scope="session")
def brain_growth_dir() -> Path:
    if not (BRAIN_GROWTH_DIR / "brain_growth_alpha.zip").is_file():
        pytest.skip(f"shared Brain-growth data not found at {BRAIN_GROWTH_DIR} (../shared is absent)")
    return BRAIN_GROWTH_DIR


# --- TorchScript export of a tiny network (tests/test_export.py, tests/test_model_zoo_checks.py) ---------
#: config and top-level overrides of the export tests: the one place to repoint when the configs change
EXPORT_CONFIG = BUNDLE_ROOT / "configs" / "train.yaml"
TINY_NETWORK = {"prob_filters": [4, 8, 8, 8], "matting_filters": [4, 8, 8, 8], "implicit_hidden": 8,
                "latent_dim": 3, "num_samples": 4, "sample_seed": 5, "network_def#test_time_flips": "h"}


def export_tiny_torchscript(directory: Path, **overrides):
    """Write a tiny network's checkpoint into ``directory`` and export it with ``monai.bundle ckpt_export``.

    Returns ``(path of the .ts file, the eager network in eval mode with the same weights)``.
    """
    import torch
    from monai.bundle import ConfigParser, ckpt_export

    overrides = {**TINY_NETWORK, **overrides}
    parser = ConfigParser()
    parser.read_config(str(EXPORT_CONFIG))
    parser.update(overrides)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():  # non-zero offsets so the learned deformable sampling is exercised
        for module in net.modules():
            if getattr(module, "offset_conv", None) is not None:
                module.offset_conv.weight.normal_(0, 0.1)
    ckpt, ts = Path(directory) / "model.pt", Path(directory) / "model.ts"
    torch.save(net.state_dict(), ckpt)
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(ckpt),
                meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"), config_file=str(EXPORT_CONFIG),
                bundle_root=str(BUNDLE_ROOT), **overrides)
    return ts, net.eval()


@pytest.fixture(scope="session")
def tiny_torchscript(tmp_path_factory):
    """``(model.ts path, eager network)`` of :func:`export_tiny_torchscript`, exported once per session."""
    return export_tiny_torchscript(tmp_path_factory.mktemp("export"))
