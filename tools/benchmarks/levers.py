"""Interleaved A/B comparisons of training-speed levers with the real trainer iteration.

Usage::

    OMP_NUM_THREADS=2 python -m tools.benchmarks.levers --rounds 4 --iterations 2 \\
        --levers channels_last,bf16,threads --json levers.json --markdown
    OMP_NUM_THREADS=2 python -m tools.benchmarks.levers --levers compile --compile_iterations 6

On a machine shared with other processes absolute times drift with the load, so each lever builds
its A and B trainers (``tools.benchmarks.training_speed.make_trainer`` from ``configs/train.yaml``
plus the lever's overrides) in one process and alternates them: round r runs ``--iterations``
training iterations of A then of B (B then A on odd rounds). Each round gives a B / A ratio of the
median wall time and of the median process CPU time (``time.process_time``, less sensitive to other
processes); the median ratio and its range over rounds are reported. The ``augmentation`` lever
times the random transforms per image instead, the same way. The ``compile`` lever reports the
compile time (first iteration minus steady state) and the iterations after which it pays back.

Hand-written (no library runs interleaved A/B timings of Ignite engines).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from tools import provenance
from tools.benchmarks.training_speed import (
    DEFAULT_CONFIG,
    augmentation_time,
    build_from_config,
    compile_network,
    machine_info,
    make_trainer,
    run_iterations,
    synthetic_batches,
)

__all__ = ["LEVERS", "RECOMMENDED", "SMALL", "SMALLEST", "Variant", "compare_training", "compare_augmentation", "compile_payback", "main"]

#: smaller-network settings recommended for training speed (see docs/benchmarks.md)
RECOMMENDED: Dict[str, Any] = {"implicit_hidden": 32, "network_def#latent_filters": [16, 32, 64, 96]}
#: a smaller Probabilistic U-Net on top of RECOMMENDED (about 1/3 of the default's training FLOPs)
SMALL: Dict[str, Any] = {**RECOMMENDED, "prob_filters": [16, 32, 64, 96]}
#: SMALL with one convolution per U-Net level (about 1/5 of the default's training FLOPs)
SMALLEST: Dict[str, Any] = {**SMALL, "network_def#convs_per_block": 1}


class Variant(dict):
    """One side of a comparison: ``overrides`` (config id -> value), ``threads``, ``bf16``, ``augment``."""


def _v(overrides: Optional[dict] = None, threads: Optional[int] = None, bf16: bool = False, augment: Optional[dict] = None) -> Variant:
    return Variant(overrides=overrides or {}, threads=threads, bf16=bf16, augment=augment)


#: lever name -> (A = configs/train.yaml, or the setting named in A, B = the lever applied)
LEVERS: Dict[str, tuple] = {
    "channels_last": (_v({"network_def#channels_last": False}), _v({"network_def#channels_last": True})),
    "bf16": (_v({"cpu_bf16": False}), _v({"cpu_bf16": True})),
    "cpu_bf16=auto": (_v({"cpu_bf16": False}), _v({"cpu_bf16": "auto"})),  # the default against float32
    "threads=1": (_v(threads=2), _v(threads=1)),
    "implicit_hidden=32": (_v({"implicit_hidden": 64}), _v({"implicit_hidden": 32})),
    "num_samples=4": (_v(), _v({"num_samples": 4})),
    "latent_filters=16/32/64/96": (_v(), _v({"network_def#latent_filters": [16, 32, 64, 96]})),
    "prob_filters=16/32/64/96": (_v(), _v({"prob_filters": [16, 32, 64, 96]})),
    "convs_per_block=1": (_v(), _v({"network_def#convs_per_block": 1})),
    "matting_filters=16/32/64/64": (_v(), _v({"matting_filters": [16, 32, 64, 64]})),
    "prob_filters=8/16/32/64": (_v(), _v({"prob_filters": [8, 16, 32, 64]})),
    "matting_filters=8/16/32/64": (_v(), _v({"matting_filters": [8, 16, 32, 64]})),
    "latent_filters=8/16/32/48": (_v(), _v({"network_def#latent_filters": [8, 16, 32, 48]})),
    "norm=none": (_v(), _v({"norm": None})),
    "fused_adam": (_v({"optimizer#fused": False}), _v({"optimizer#fused": True})),
    "fused_adam+batch_size=1": (_v({"batch_size": 1, "optimizer#fused": False}), _v({"batch_size": 1, "optimizer#fused": True})),
    "recommended": (_v(), _v(RECOMMENDED)),
    "recommended+bf16": (_v(RECOMMENDED), _v(RECOMMENDED, bf16=True)),
    "small": (_v(), _v(SMALL)),
    "smallest": (_v(), _v(SMALLEST)),
    "augmentation:flips_only": (_v(augment={}), _v(augment={"deform_prob": 0.0})),
    "augmentation:always_deform": (_v(augment={}), _v(augment={"deform_prob": 1.0})),
}


def _summary(a: List[float], b: List[float]) -> Dict[str, float]:
    ratios = [y / x for x, y in zip(a, b)]
    return {
        "a_median_s": statistics.median(a),
        "b_median_s": statistics.median(b),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def compare_training(a: Variant, b: Variant, rounds: int = 4, iterations: int = 2, warmup: int = 1,
                     config: Path = DEFAULT_CONFIG) -> Dict[str, Any]:
    """Interleaved A/B timing of the trainer's iteration; ratios are B / A per round."""
    sides = []
    default_threads = torch.get_num_threads()
    for variant in (a, b):
        torch.manual_seed(0)
        parts = build_from_config(config, variant["overrides"])
        batches = synthetic_batches(iterations, parts["batch_size"], parts["in_channels"])
        trainer, timer = make_trainer(parts, batches)
        sides.append((variant, trainer, timer))
    per_round: Dict[str, List[List[float]]] = {"wall_a": [], "wall_b": [], "cpu_a": [], "cpu_b": []}

    def run(side, count):
        variant, trainer, timer = side
        torch.set_num_threads(variant["threads"] or default_threads)
        start = len(timer.wall)
        for _ in range(count):
            run_iterations(trainer, bf16=variant["bf16"])
        torch.set_num_threads(default_threads)
        return timer.wall[start:], timer.cpu[start:]

    for side in sides:
        run(side, warmup)
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for idx in order:
            wall, cpu = run(sides[idx], 1)
            key = "a" if idx == 0 else "b"
            per_round[f"wall_{key}"].append(statistics.median(wall))
            per_round[f"cpu_{key}"].append(statistics.median(cpu))
    wall = _summary(per_round["wall_a"], per_round["wall_b"])
    cpu = _summary(per_round["cpu_a"], per_round["cpu_b"])
    del sides
    gc.collect()
    return {"wall": wall, "cpu": cpu, "rounds": rounds, "iterations_per_round": iterations, "per_round": per_round}


def compare_augmentation(a: Variant, b: Variant, rounds: int = 4, images: int = 20,
                         config: Path = DEFAULT_CONFIG) -> Dict[str, Any]:
    """Interleaved A/B timing of the random training transforms (mean seconds per image)."""
    base = build_from_config(config)["augment"]
    settings = [{**base, **a["augment"]}, {**base, **b["augment"]}]
    wall_a, wall_b = [], []
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for idx in order:
            t = augmentation_time(settings[idx], images, seed=r)["mean_s"]
            (wall_a if idx == 0 else wall_b).append(t)
    return {"wall": _summary(wall_a, wall_b), "settings_a": settings[0], "settings_b": settings[1], "rounds": rounds}


def compile_payback(iterations: int = 6, overrides: Optional[dict] = None, config: Path = DEFAULT_CONFIG,
                    protocol_iterations: int = 3200) -> Dict[str, Any]:
    """Compile time and steady-state step of ``torch.compile`` (forward_train) against eager, interleaved."""
    out: Dict[str, Any] = {}
    torch.manual_seed(0)
    eager = build_from_config(config, overrides)
    torch.manual_seed(0)
    compiled = build_from_config(config, overrides)
    compile_network(compiled["network"])
    batches = synthetic_batches(1, eager["batch_size"], eager["in_channels"])
    t_eager, timer_eager = make_trainer(eager, batches)
    t_comp, timer_comp = make_trainer(compiled, batches)
    try:
        t0 = time.perf_counter()
        run_iterations(t_comp)
        out["first_compiled_iteration_s"] = time.perf_counter() - t0
    except Exception as exc:  # report the failure (e.g. no C++ compiler) instead of crashing
        out["error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
        return out
    run_iterations(t_eager)
    start_e, start_c = len(timer_eager.wall), len(timer_comp.wall)
    for r in range(iterations):
        for trainer in ((t_eager, t_comp) if r % 2 == 0 else (t_comp, t_eager)):
            run_iterations(trainer)
    eager_wall, comp_wall = timer_eager.wall[start_e:], timer_comp.wall[start_c:]
    out["wall"] = _summary(eager_wall, comp_wall)
    out["cpu"] = _summary(timer_eager.cpu[start_e:], timer_comp.cpu[start_c:])
    steady = out["wall"]["b_median_s"]
    saving = out["wall"]["a_median_s"] - steady
    out["compile_s_estimate"] = out["first_compiled_iteration_s"] - steady
    out["saving_per_iteration_s"] = saving
    out["payback_iterations"] = out["compile_s_estimate"] / saving if saving > 0 else None
    out["pays_back_within_protocol"] = bool(saving > 0 and out["payback_iterations"] < protocol_iterations)
    out["protocol_iterations"] = protocol_iterations
    return out


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levers", default="all", help=f"comma-separated from {list(LEVERS) + ['compile']}, or 'all'")
    parser.add_argument("--rounds", type=int, default=4, help="A/B rounds (default 4)")
    parser.add_argument("--iterations", type=int, default=2, help="training iterations per side and round (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per side before the rounds")
    parser.add_argument("--compile_iterations", "--compile-iterations", type=int, default=6, help="interleaved steady-state steps of the compile lever")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for A (and B unless the lever sets it)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table at the end")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = list(LEVERS) if args.levers == "all" else [n.strip() for n in args.levers.split(",")]
    unknown = [n for n in names if n not in LEVERS and n != "compile"]
    if unknown:
        parser.error(f"unknown levers {unknown}; choose from {list(LEVERS) + ['compile']}")
    result: Dict[str, Any] = {
        "command": "python -m tools.benchmarks.levers " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "levers": {},
    }
    for name in names:
        t0 = time.perf_counter()
        if name == "compile":
            row = compile_payback(args.compile_iterations, config=args.config)
        elif name.startswith("augmentation:"):
            row = compare_augmentation(*LEVERS[name], rounds=args.rounds, config=args.config)
        else:
            a, b = LEVERS[name]
            row = compare_training(a, b, args.rounds, args.iterations, args.warmup, args.config)
            row["a"], row["b"] = a, b
        row["seconds"] = time.perf_counter() - t0
        result["levers"][name] = row
        print(json.dumps({name: {k: v for k, v in row.items() if k != "per_round"}}), flush=True)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1))
    result["machine"]["load_average_at_end"] = provenance.load_average()
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    if args.markdown:
        print(markdown_table(result))
    return result


def markdown_table(result: Dict[str, Any]) -> str:
    """Markdown rows: lever, A and B median step (s), wall ratio B/A (range), CPU-time ratio (range)."""
    lines = ["| lever | A median (s) | B median (s) | wall ratio B/A (min-max) | CPU ratio B/A (min-max) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, row in result["levers"].items():
        if "error" in row:
            lines.append(f"| {name} | - | - | failed: {row['error'][:80]} | - |")
            continue
        w, c = row["wall"], row.get("cpu")
        cpu = f"{c['ratio_median']:.2f} ({c['ratio_min']:.2f}-{c['ratio_max']:.2f})" if c else "-"
        lines.append(f"| {name} | {w['a_median_s']:.3f} | {w['b_median_s']:.3f} | "
                     f"{w['ratio_median']:.2f} ({w['ratio_min']:.2f}-{w['ratio_max']:.2f}) | {cpu} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
