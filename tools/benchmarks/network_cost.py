"""Parameters, FLOPs and CPU training-step time of ``MedicalMattingNet`` and its ablation options.

Usage::

    OMP_NUM_THREADS=2 python -m tools.benchmarks.network_cost --runs 5 --warmup 2 --markdown

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: it counts multiply-adds as 2 FLOPs for
the matrix operations it knows (convolutions, linear layers, matmuls, including their backward
formulas) and nothing else: ``grid_sample``, interpolation, pooling, activations, normalisation
and element-wise operations are NOT counted. "forward" is ``model.predict`` in eval mode (the
inference path); "train forward" is ``model.forward_train`` (posterior sample, KL, prior samples).

Time: one optimisation step's forward + backward (``forward_train`` then ``backward`` of a loss
touching every output), batch of B images, wall-clock seconds; median over ``--runs`` runs after
``--warmup`` runs. The process CPU time of the same runs is also reported (with other processes on
the machine, wall time rises while CPU time stays closer to the idle-machine cost).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from scripts.networks import MedicalMattingNet
from tools import provenance

__all__ = ["VARIANTS", "count_parameters", "count_flops", "time_train_step", "main"]

#: name -> constructor overrides; the default model is the paper's (region_aware, 3 scales, k = 2)
VARIANTS: Dict[str, dict] = {
    "default": {},  # region_aware, scales 3, k 2
    "upsampling=local_ensemble": {"upsampling": "local_ensemble"},
    "upsampling=bilinear": {"upsampling": "bilinear"},
    "scales=1": {"scales": 1},
    "scales=2": {"scales": 2},
    "kernel_size=1": {"kernel_size": 1},
    "kernel_size=3": {"kernel_size": 3},
    # not ablations of the paper: cheaper Probabilistic U-Net settings for the speed budget
    "latent_filters=16,32,64,96": {"latent_filters": (16, 32, 64, 96)},
    "prob_filters=16,32,64,96": {"prob_filters": (16, 32, 64, 96)},
}


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: MedicalMattingNet, size: int, train: bool) -> Dict[str, float]:
    """FLOPs of one image (batch 1): total, Probabilistic U-Net part and Matting U-Net part."""
    image = torch.rand(1, model.in_channels, size, size)
    target = (torch.rand(1, 1, size, size) > 0.5).float()
    model.train(train)
    with FlopCounterMode(display=False, depth=2) as counter:
        if train:
            model.forward_train(image, target)
        else:
            with torch.no_grad():
                model.predict(image)
    total = float(counter.get_total_flops())
    matting = float(sum(counter.get_flop_counts().get("MattingUNet", {}).values()))
    # everything outside the Matting U-Net belongs to the Probabilistic U-Net (its sub-modules are
    # called one by one, so it is not one entry of the counter)
    return {"total": total, "ProbabilisticUNet": total - matting, "MattingUNet": matting}


def time_train_step(model: MedicalMattingNet, size: int, batch: int, runs: int, warmup: int) -> Dict[str, float]:
    """Median wall and CPU seconds of forward_train + backward for a batch."""
    model.train()
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(batch, model.in_channels, size, size, generator=gen)
    target = (torch.rand(batch, 1, size, size, generator=gen) > 0.5).float()
    alpha_gt = torch.rand(batch, 1, size, size, generator=gen)
    wall: List[float] = []
    cpu: List[float] = []
    for i in range(warmup + runs):
        model.zero_grad(set_to_none=True)
        t0, c0 = time.perf_counter(), time.process_time()
        out = model.forward_train(image, target)
        loss = (
            (out["alpha"] - alpha_gt).abs().mean()
            + torch.nn.functional.binary_cross_entropy_with_logits(out["seg_logits"], target)
            + out["kl"].mean()
        )
        loss.backward()
        t1, c1 = time.perf_counter(), time.process_time()
        if i >= warmup:
            wall.append(t1 - t0)
            cpu.append(c1 - c0)
    return {
        "wall_median_s": statistics.median(wall),
        "wall_min_s": min(wall),
        "cpu_median_s": statistics.median(cpu),
        "wall_runs_s": wall,
    }


def main(argv: Optional[List[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="image side (default 128)")
    parser.add_argument("--batch", type=int, default=4, help="batch size of the timed step (default 4)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--in_channels", "--in-channels", type=int, default=1)
    parser.add_argument("--variants", default="all", help="comma-separated names from VARIANTS, or 'all'")
    parser.add_argument("--no_time", "--no-time", action="store_true", help="only parameters and FLOPs")
    parser.add_argument("--override", default="{}", help="JSON dict of extra MedicalMattingNet arguments")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)

    names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    override = json.loads(args.override)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    header = {
        "commit": provenance.git_commit(dirty_flag=False),
        "machine": f"{provenance.cpu_model()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "load_average_at_start": provenance.load_average(),
    }
    print(json.dumps(header))
    results = []
    for name in names:
        torch.manual_seed(0)
        model = MedicalMattingNet(in_channels=args.in_channels, **{**VARIANTS[name], **override})
        row = {
            "variant": name,
            "params": count_parameters(model),
            "params_prob_unet": count_parameters(model.prob_unet),
            "params_matting_unet": count_parameters(model.matting_unet),
            "gflops_forward": count_flops(model, args.size, train=False),
            "gflops_train_forward": count_flops(model, args.size, train=True),
        }
        for key in ("gflops_forward", "gflops_train_forward"):
            row[key] = {k: v / 1e9 for k, v in row[key].items()}
        if not args.no_time:
            row["time"] = time_train_step(model, args.size, args.batch, args.runs, args.warmup)
        results.append(row)
        print(json.dumps(row))
    header["load_average_at_end"] = provenance.load_average()
    print(json.dumps({"load_average_at_end": header["load_average_at_end"]}))
    if args.json is not None:
        args.json.write_text(json.dumps({"header": header, "args": vars(args) | {"json": str(args.json)}, "results": results}, indent=1))
    if args.markdown:
        print()
        print(
            f"| variant | params (M) | Prob. U-Net / Matting U-Net params (M) | GFLOPs forward / image "
            f"(Prob. / Matting) | GFLOPs train forward / image | fwd+bwd batch {args.batch} wall median (s) "
            f"| CPU median (s) |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in results:
            fw, tf = r["gflops_forward"], r["gflops_train_forward"]
            t = r.get("time")
            print(
                f"| {r['variant']} | {r['params'] / 1e6:.3f} | {r['params_prob_unet'] / 1e6:.3f} / "
                f"{r['params_matting_unet'] / 1e6:.3f} | {fw['total']:.2f} ({fw['ProbabilisticUNet']:.2f} / "
                f"{fw['MattingUNet']:.2f}) | {tf['total']:.2f} | "
                + (f"{t['wall_median_s']:.3f} | {t['cpu_median_s']:.3f} |" if t else "- | - |")
            )
    return results


if __name__ == "__main__":
    main()
