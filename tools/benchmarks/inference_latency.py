"""``python -m tools.benchmarks.inference_latency``: how long the default inference takes per 128 x 128 image.

Times exactly what ``configs/inference.yaml``, the evaluation and the MONAI Label app run per image:
the network built from a checkpoint by ``scripts.workflows.inference.load_trained_network`` (its
own prediction settings: prior samples, test-time flips) called through
:class:`scripts.workflows.inference.MattingInferer`, in eval mode without gradients. Loading,
intensity scaling and writing files are not timed.

Every setting (threads x flips) is timed in interleaved rounds in one process (A, B, C, ... then
in reverse order), so that drift of the machine's load hits all settings alike; per setting the
median over all timed calls is reported, with the minimum and the load average before and after.

- **latency**: one image per call (batch 1), the number a user waits for;
- **throughput**: ``--batch`` images per call, seconds per image (what a folder or an evaluation
  with a larger batch costs per image);
- **FLOP floor** (``--floor``): the setting's counted FLOPs per image over the machine's reference
  convolution rate (``tools.benchmarks.training_speed.reference_gflops``, channels-last, timed in
  every round with the same threads), and the latency as a multiple of it.

Example::

    python -m tools.benchmarks.inference_latency --ckpt_path models/model.pt --threads 1 2 \\
        --flips default none --json docs/results/inference_latency.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scripts import BUNDLE_ROOT
from scripts.atomic import write_text_atomic
from scripts.workflows.inference import MattingInferer, load_trained_network
from tools.benchmarks.training_speed import reference_gflops
from tools.provenance import git_commit, load_average, machine_info

__all__ = ["time_setting", "measure", "main"]


def time_setting(network: torch.nn.Module, inferer: MattingInferer, image: torch.Tensor, threads: int,
                 calls: int, bf16: bool = False) -> list[float]:
    """Wall seconds of ``calls`` calls of ``inferer(image, network)`` with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    times = []
    with torch.no_grad(), autocast:
        for _ in range(calls):
            start = time.perf_counter()
            inferer(image, network)
            times.append(time.perf_counter() - start)
    return times


def measure(ckpt_path: str | None, threads: Sequence[int] = (1, 2), flips: Sequence[str] = ("default", "none"),
            rounds: int = 5, calls: int = 4, batch: int = 8, size: int = 128, bf16: bool = False,
            num_samples: Sequence[int | None] = (None,), floor: bool = False) -> dict[str, Any]:
    """Median latency (batch 1) and per-image throughput (batch ``batch``) of every threads x flips x
    ``num_samples`` setting (``None``: the network's number of prior samples); with ``floor`` also
    the FLOP floor of every setting and the latency's multiple of it (module doc)."""
    network = load_trained_network(ckpt_path, allow_untrained=ckpt_path is None,
                                   fallback_config=BUNDLE_ROOT / "configs" / "train.yaml", bundle_root=BUNDLE_ROOT)
    network.eval()
    generator = torch.Generator().manual_seed(0)
    single = torch.rand(1, network.in_channels, size, size, generator=generator)
    many = torch.rand(batch, network.in_channels, size, size, generator=generator)
    settings = [(t, (f, n)) for f in flips for n in num_samples for t in threads]
    inferers = {(f, n): MattingInferer(flips=None if f == "default" else f, num_samples=n) for f in flips for n in num_samples}
    latency: dict[tuple, list[float]] = {s: [] for s in settings}
    per_image: dict[tuple, list[float]] = {s: [] for s in settings}
    reference: dict[int, list[float]] = {t: [] for t in threads}  # GFLOP/s of the reference convolution
    flops = {f: _counted_flops(network, inferers[f], single) for f in inferers} if floor else {}
    load_before = load_average()
    for t, f in settings:  # warm-up: first calls allocate and pick kernels
        time_setting(network, inferers[f], single, t, 2, bf16)
        time_setting(network, inferers[f], many, t, 1, bf16)
    for r in range(rounds):
        for t, f in settings if r % 2 == 0 else settings[::-1]:
            latency[(t, f)] += time_setting(network, inferers[f], single, t, calls, bf16)
            per_image[(t, f)] += [s / batch for s in time_setting(network, inferers[f], many, t, 1, bf16)]
        for t in threads if floor else ():
            torch.set_num_threads(t)
            reference[t].append(reference_gflops(runs=3)["conv2d_64x64_3x3_channels_last"])
    rows = []
    for t, (f, n) in settings:
        floor_row = {}
        if floor:
            rate = statistics.median(reference[t])
            floor_ms = 1000 * flops[(f, n)] / (rate * 1e9)
            floor_row = {"gflop": flops[(f, n)] / 1e9, "reference_gflops": rate, "floor_ms": floor_ms,
                         "latency_over_floor": statistics.median(latency[(t, (f, n))]) * 1000 / floor_ms}
        rows.append({
            "threads": t,
            "flips": network.test_time_flips if f == "default" else f,
            "default_flips": f == "default",
            "num_samples": network.num_samples if n is None else n,
            "latency_ms_median": 1000 * statistics.median(latency[(t, (f, n))]),
            "latency_ms_min": 1000 * min(latency[(t, (f, n))]),
            "throughput_ms_per_image_median": 1000 * statistics.median(per_image[(t, (f, n))]),
            "calls": len(latency[(t, (f, n))]),
            **floor_row,
        })
    return {
        "command": "python -m tools.benchmarks.inference_latency " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "ckpt_path": ckpt_path,
        "network": dict(network.config),
        "image_size": size,
        "default_num_samples": network.num_samples,
        "batch_for_throughput": batch,
        "bf16_autocast": bf16,
        "rows": rows,
    }


def _counted_flops(network: torch.nn.Module, inferer: MattingInferer, image: torch.Tensor) -> float:
    """FLOPs of one ``inferer(image, network)`` call (``torch.utils.flop_counter``), per image."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        inferer(image, network)
    return float(counter.get_total_flops()) / image.shape[0]


def markdown(result: dict[str, Any]) -> str:
    floor = "latency_over_floor" in result["rows"][0]
    head = "| threads | test-time flips | prior samples | latency, 1 image (ms, median / min) | throughput (ms per image, " \
           f"batch {result['batch_for_throughput']}) |" + (" FLOP floor (ms) | latency / floor |" if floor else "")
    lines = [head, "| ---: | --- | ---: | ---: | ---: |" + (" ---: | ---: |" if floor else "")]
    for r in result["rows"]:
        flips = r["flips"] + (" (default)" if r["default_flips"] else "")
        lines.append(f"| {r['threads']} | {flips} | {r['num_samples']} | {r['latency_ms_median']:.1f} / {r['latency_ms_min']:.1f} | "
                     f"{r['throughput_ms_per_image_median']:.1f} |"
                     + (f" {r['floor_ms']:.1f} | {r['latency_over_floor']:.2f}x |" if floor else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m tools.benchmarks.inference_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", default=str(BUNDLE_ROOT / "models" / "model.pt"),
                        help="trained model.pt (default: the shipped models/model.pt); 'none': untrained default network")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--flips", nargs="+", default=["default", "none"], choices=["default", "none", "h", "hv"])
    parser.add_argument("--num_samples", type=int, nargs="+", default=None,
                        help="prior samples per view to time (default: the network's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=4, help="batch-1 calls per setting and round")
    parser.add_argument("--batch", type=int, default=8, help="images per call for the throughput")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (not the default inference)")
    parser.add_argument("--floor", action="store_true",
                        help="also count each setting's FLOPs and time the reference convolution: the FLOP floor")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    ckpt = None if args.ckpt_path.lower() == "none" else args.ckpt_path
    if ckpt is not None and not Path(ckpt).is_file():
        parser.exit(2, f"error: checkpoint not found: {ckpt}\n")
    result = measure(ckpt, args.threads, args.flips, args.rounds, args.calls, args.batch, bf16=args.bf16,
                     num_samples=args.num_samples or (None,), floor=args.floor)
    print(markdown(result))
    print(f"load average before {result['load_average_before']}, after {result['load_average_after']}")
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
