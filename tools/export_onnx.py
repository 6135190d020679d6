"""``python -m tools.export_onnx``: the trained network as an ONNX model that takes any image size.

The network is built from the checkpoint's own arguments (``load_trained_network``, as inference
does) and exported with ``torch.onnx.export(..., dynamo=True)`` with dynamic height and width (``torch.export.Dim.DYNAMIC``): one image ``image`` (1, C, H, W),
float32 in [0, 1], gives the alpha matte ``alpha`` (1, 1, H, W), test-time flips included. Eval-mode
prior samples use the network's fixed noise buffer, so the ONNX model is deterministic and gives the
eager network's matte. ``--check`` runs the file with onnxruntime at 128 x 128, 200 x 176 and
384 x 384 and prints the largest difference from eager PyTorch.

Needs ``onnx``, ``onnxscript`` (the exporter) and, for ``--check``, ``onnxruntime``; none of them is
in the pinned environment (docs/inference.md, "ONNX").

Example::

    python -m tools.export_onnx --ckpt_path models/model.pt --filepath models/model.onnx --check
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from scripts.networks import MedicalMattingNet
from scripts.workflows.inference import load_trained_network

#: image sizes the export is checked at (a square, a non-square, a larger one)
CHECK_SIZES = ((128, 128), (200, 176), (384, 384))


def load_network(ckpt_path: str | os.PathLike) -> MedicalMattingNet:
    """The eval-mode network of a ``model.pt`` that carries its arguments (``_extra_state``)."""
    return load_trained_network(ckpt_path).eval()


def export_onnx(network: MedicalMattingNet, filepath: str | os.PathLike, example_size: Sequence[int] = (128, 128)) -> Path:
    """Write ``network.forward`` as ONNX with dynamic H and W; returns the file's path.

    Raises:
        ImportError: ``onnxscript`` (the dynamo exporter) is not installed.
    """
    path = Path(filepath)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = torch.rand(1, network.in_channels, *example_size)
    dynamic = {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    with torch.no_grad():
        torch.onnx.export(network.eval(), (image,), str(path), dynamo=True, input_names=["image"],
                          output_names=["alpha"], dynamic_shapes={"image": dynamic}, external_data=False)
    return path


def onnx_max_difference(network: MedicalMattingNet, filepath: str | os.PathLike,
                        sizes: Sequence[Sequence[int]] = CHECK_SIZES, seed: int = 0) -> dict[str, float]:
    """Largest |onnxruntime - eager| alpha difference per size (``"HxW"`` -> value) on random images."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(filepath), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for h, w in sizes:
        image = torch.rand(1, network.in_channels, h, w, generator=generator)
        with torch.no_grad():
            expected = network(image).numpy()
        (alpha,) = session.run(["alpha"], {"image": image.numpy()})
        if alpha.shape != expected.shape:
            raise ValueError(f"{filepath}: onnxruntime gave {alpha.shape} for a {h} x {w} image, eager {expected.shape}")
        result[f"{h}x{w}"] = float(np.abs(alpha - expected).max())
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", default="models/model.pt", help="trained weights (model.pt)")
    parser.add_argument("--filepath", default="models/model.onnx", help="the ONNX file to write")
    parser.add_argument("--check", action="store_true", help="compare with eager PyTorch in onnxruntime")
    args = parser.parse_args(argv)
    network = load_network(args.ckpt_path)
    path = export_onnx(network, args.filepath)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    if args.check:
        for size, diff in onnx_max_difference(network, path).items():
            print(f"{size}: max |onnxruntime - eager| = {diff:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
