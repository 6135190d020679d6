"""ONNX export with dynamic height and width (``tools.export_onnx``), checked in onnxruntime.

A tiny network with deformable offsets, test-time flips and seeded prior samples is exported once
at 128 x 128 and run at 128 x 128, 200 x 176 and 384 x 384 against eager PyTorch. Skipped when
onnxruntime (or the exporter's onnx / onnxscript) is not installed: they are not pinned
(docs/inference.md, "ONNX").
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (not pinned; docs/inference.md, ONNX)")
pytest.importorskip("onnxscript", reason="onnxscript (torch.onnx's dynamo exporter) is not installed")

from conftest import TINY_NET_ARGS  # noqa: E402

from tools.export_onnx import CHECK_SIZES, export_onnx, load_network, onnx_max_difference  # noqa: E402


def _tiny_checkpoint(path):
    from scripts.networks import MedicalMattingNet

    torch.manual_seed(0)
    net = MedicalMattingNet(**{**TINY_NET_ARGS, "num_samples": 3, "test_time_flips": "h"})
    with torch.no_grad():  # non-zero offsets: the learned deformable sampling is exported too
        for module in net.modules():
            if getattr(module, "offset_conv", None) is not None:
                module.offset_conv.weight.normal_(0, 0.1)
    torch.save(net.state_dict(), path)
    return path


def test_onnx_model_takes_any_size_and_matches_eager(tmp_path):
    network = load_network(_tiny_checkpoint(tmp_path / "model.pt"))
    path = export_onnx(network, tmp_path / "model.onnx")
    import onnx

    model = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[:2] == [1, 1] and all(isinstance(d, str) for d in dims[2:]), dims  # H and W symbolic
    differences = onnx_max_difference(network, path)
    assert set(differences) == {f"{h}x{w}" for h, w in CHECK_SIZES}
    assert max(differences.values()) <= 1e-4, differences
    # deterministic: the same image gives the same matte twice (fixed prior noise, no random op in the graph)
    again = onnx_max_difference(network, path)
    assert again == differences


def test_load_network_refuses_a_state_dict_without_arguments(tmp_path):
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt does not say which network it belongs to"):
        load_network(tmp_path / "other.pt")
