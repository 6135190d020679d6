"""``python -m tools.studies.instance_norm_layouts``: instance normalisation on a channels-last network.

Compares, on the U-Nets' unit (conv 3x3 -> instance norm -> ReLU, twice; channels-last, forward and
backward, bfloat16 autocast as in training, one thread by default):

- ``pytorch``: ``F.instance_norm`` followed by a copy back to channels-last (the earlier layout-keeping
  norm): PyTorch reshapes the batch into channels, which needs NCHW, so the input, the
  output and the backward's gradients are copied between layouts;
- ``per_image``: :class:`scripts.networks.blocks.LayoutKeepingInstanceNorm2d` (``F.batch_norm`` on
  each image's (1, C, H, W) slice, on the channels-last layout).

Both are timed in interleaved rounds (A B, then B A, ...), median per block shape. It also checks the
input gradient of both against the float64 formula of instance normalisation, for a batch of one and
of four channels-last images (PyTorch 2.13's ``instance_norm`` gets the one-image case wrong).

Hand-written glue (no library benchmarks two implementations of one layer). Example::

    python -m tools.studies.instance_norm_layouts --rounds 4 --json runs/instance_norm_layouts.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from scripts.networks.blocks import LayoutKeepingInstanceNorm2d
from tools import provenance

__all__ = ["BLOCKS", "pytorch_instance_norm", "gradient_errors", "time_blocks", "main"]

#: (batch, in channels, channels, size) of conv -> norm -> ReLU blocks of the default model
BLOCKS: List[tuple] = [(4, 16, 32, 128), (4, 32, 32, 128), (4, 32, 64, 64), (4, 64, 128, 32), (4, 128, 192, 16)]


def pytorch_instance_norm(x: torch.Tensor) -> torch.Tensor:
    """PyTorch's instance norm, the output copied back to the input's channels-last layout."""
    return F.instance_norm(x, None, None, None, None, True, 0.0, 1e-5).contiguous(memory_format=torch.channels_last)


def gradient_errors(batches: Sequence[int] = (1, 4), channels: int = 16, size: int = 12) -> Dict[str, Dict[str, float]]:
    """Max absolute error of the input gradient against float64 instance normalisation.

    Returns ``{"batch=B": {"pytorch": err, "per_image": err}}`` for channels-last inputs and upstream
    gradients (what a channels-last network hands the norm).
    """
    out: Dict[str, Dict[str, float]] = {}
    per_image = LayoutKeepingInstanceNorm2d(channels)
    for batch in batches:
        gen = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, channels, size, size, generator=gen) * 3 + 1
        upstream = torch.randn(x.shape, generator=gen)
        ref = x.double().requires_grad_(True)
        mean, var = ref.mean((2, 3), keepdim=True), ref.var((2, 3), unbiased=False, keepdim=True)
        ((ref - mean) / torch.sqrt(var + 1e-5)).backward(upstream.double())
        row = {}
        for name, norm in (("pytorch", pytorch_instance_norm), ("per_image", per_image)):
            a = x.to(memory_format=torch.channels_last).requires_grad_(True)
            norm(a).backward(upstream.to(memory_format=torch.channels_last))
            row[name] = float((a.grad.double() - ref.grad).abs().max())
        out[f"batch={batch}"] = row
    return out


def _block_step(norm: Callable, convs: Sequence[torch.nn.Module], x: torch.Tensor) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = x
        for conv in convs:
            y = F.relu(norm(conv(y)))
    y.float().sum().backward()


def time_blocks(blocks: Sequence[tuple] = BLOCKS, rounds: int = 4, reps: int = 5, warmup: int = 2) -> List[dict]:
    """Seconds per forward + backward of two conv -> norm -> ReLU layers, both norms, interleaved."""
    results = []
    for batch, cin, c, size in blocks:
        variants = {"pytorch": pytorch_instance_norm, "per_image": LayoutKeepingInstanceNorm2d(c)}
        torch.manual_seed(0)
        convs = [torch.nn.Conv2d(cin, c, 3, padding=1), torch.nn.Conv2d(c, c, 3, padding=1)]
        convs = [conv.to(memory_format=torch.channels_last) for conv in convs]
        x = torch.randn(batch, cin, size, size).to(memory_format=torch.channels_last).requires_grad_(True)
        times: Dict[str, List[float]] = {name: [] for name in variants}
        for r in range(rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                for _ in range(warmup):
                    _block_step(variants[name], convs, x)
                t = time.perf_counter()
                for _ in range(reps):
                    _block_step(variants[name], convs, x)
                times[name].append((time.perf_counter() - t) / reps)
        med = {name: statistics.median(v) for name, v in times.items()}
        results.append({
            "block": {"batch": batch, "in_channels": cin, "channels": c, "size": size},
            "seconds": times,
            "median_s": med,
            "ratio_per_image_to_pytorch": med["per_image"] / med["pytorch"],
        })
    return results


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    parser.add_argument("--reps", type=int, default=5, help="timed steps per round and variant (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--small", action="store_true", help="small blocks (a quick check, not a measurement)")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        blocks = [(2, 4, 8, 16), (2, 8, 16, 8)] if args.small else BLOCKS
        before = provenance.load_average()
        result = {
            "gradient_max_abs_error": gradient_errors(),
            "blocks": time_blocks(blocks, rounds=args.rounds, reps=args.reps),
            "threads": args.threads,
            "machine": provenance.machine_info(),
            "load_average_before": before,
            "load_average_after": provenance.load_average(),
        }
    finally:  # the caller's setting (a test process goes on with it)
        torch.set_num_threads(threads_before)
    for key, row in result["gradient_max_abs_error"].items():
        print(f"input gradient, {key}, channels-last: max abs error pytorch {row['pytorch']:.2e}, per_image {row['per_image']:.2e}")
    print("| block (B, C_in, C, size) | pytorch + copy (ms) | per image (ms) | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for row in result["blocks"]:
        b = row["block"]
        print(f"| {b['batch']}, {b['in_channels']}, {b['channels']}, {b['size']} | {row['median_s']['pytorch'] * 1e3:.1f} "
              f"| {row['median_s']['per_image'] * 1e3:.1f} | {row['ratio_per_image_to_pytorch']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
