"""Training-speed benchmark of the bundle's real training step on 128 x 128 batches.

Usage::

    OMP_NUM_THREADS=2 python -m tools.benchmarks.training_speed --iterations 20 --warmup 3 \\
        --json speed.json [--threads 2] [--bf16] [--compile] [--set prob_filters=[16,32,64,96] ...]

What it measures (one configuration per run; ``tools.benchmarks.ab`` compares several):

- **training throughput**: the network, loss, optimiser and augmentation settings come from
  ``configs/train.yaml`` (``--config``; ``--set ID=VALUE`` overrides any config id, e.g.
  ``num_samples=4`` or ``network_def#convs_per_block=1``), and the step is the trainer's own
  iteration: a :class:`scripts.workflows.engines.MattingTrainer` runs over synthetic phantom batches
  (``scripts.data.phantom``, batch ``--batch``), with the per-epoch loss averages attached as in the
  config. Wall and process CPU seconds of every iteration are taken between Ignite's
  ``ITERATION_STARTED`` and ``ITERATION_COMPLETED`` events; the medians after ``--warmup``
  iterations are reported, and images/s = batch / median wall time;
- **inference latency** of one 128 x 128 image: ``model.predict`` in eval mode without gradients,
  batch 1, the config's number of Prob. U-Net samples (median of ``--inference_runs``);
- **FLOPs** of one training step and of one inference, from ``torch.utils.flop_counter.FlopCounterMode``
  (multiply-adds of convolutions / linear layers / matmuls counted as 2 FLOPs, forward and backward;
  interpolation, grid_sample, pooling and element-wise work are not counted), and the achieved
  GFLOP/s = counted FLOPs / median time;
- **reference GFLOP/s** of the machine: a large convolution (conv2d 64 -> 64, 3 x 3, on a
  (8, 64, 128, 128) tensor, forward, NCHW and channels-last) and a 2048 x 2048 fp32 matmul;
- **data pipeline**: the random part of the training transforms (flips + rotation/elastic
  resampling of ``scripts.data.transforms``, the config's settings) per image on phantom cases;
- **peak memory**: the process's peak resident set size (``resource.getrusage().ru_maxrss``).

``--bf16`` runs the trainer inside ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the trainer's own
``amp`` switch is CUDA-only); ``--compile`` replaces ``network.forward_train`` and ``network.predict``
by their ``torch.compile`` versions and reports the compile time (first-iteration time minus the
steady-state median).

Hand-written glue (no library benchmarks a MONAI trainer's iteration); the timing uses Ignite events.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from scripts import BUNDLE_ROOT
from scripts.workflows.allocator import retain_freed_memory
from tools import provenance

__all__ = [
    "DEFAULT_CONFIG",
    "StepTimer",
    "parse_overrides",
    "build_from_config",
    "synthetic_batches",
    "make_trainer",
    "run_iterations",
    "inference_latency",
    "training_step_flops",
    "inference_flops",
    "reference_gflops",
    "augmentation_time",
    "bf16_check",
    "machine_info",
    "main",
]

DEFAULT_CONFIG = BUNDLE_ROOT / "configs" / "train.yaml"


# --------------------------------------------------------------------------------------- set-up
def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``["num_samples=4", "prob_filters=[16,32,64,96]"]`` -> ``{"num_samples": 4, ...}`` (YAML values).

    Example::

        parse_overrides(["network_def#convs_per_block=1"])  # {"network_def#convs_per_block": 1}
    """
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"an override must look like ID=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def build_from_config(config_file: str | Path = DEFAULT_CONFIG, overrides: Optional[Dict[str, Any]] = None) -> dict:
    """Instantiate the config's network and loss on the CPU and read its augmentation settings.

    Args:
        config_file: a training config (``configs/train.yaml``).
        overrides: config id -> value (``{"num_samples": 4, "network_def#convs_per_block": 1}``).

    Returns:
        dict with ``network``, ``loss``, ``augment`` (kwargs of ``matting_augment_transforms``),
        ``batch_size``, ``learning_rate``, ``optimizer_args`` (Adam's other config arguments), ``pseudo_gt``, ``in_channels``, ``num_samples`` and
        ``network_args`` (the resolved ``network_def`` arguments).

    Example::

        parts = build_from_config(overrides={"num_samples": 4})
        parts["network"].num_samples  # 4
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["device"] = "$torch.device('cpu')"
    for key, value in (overrides or {}).items():
        parser[key] = value
    network = parser.get_parsed_content("network_def", instantiate=True)
    loss = parser.get_parsed_content("loss_def", instantiate=True)
    get = lambda key: parser.get_parsed_content(key)  # noqa: E731
    # the config's initialize step that matters for speed: the allocator setting (process-wide,
    # so compare both values in separate processes, not within one)
    retained = retain_freed_memory(bool(get("retain_freed_memory"))) if "retain_freed_memory" in parser else False
    network_args = {
        k: get(f"network_def#{k}") for k in parser.get("network_def") if not str(k).startswith("_")
    }
    return {
        "network": network,
        "loss": loss,
        "augment": {
            "flip_prob": float(get("flip_prob")),
            "deform_prob": float(get("deform_prob")),
            "rotate_degrees": float(get("rotate_degrees")),
            "elastic_spacing": int(get("elastic_spacing")),
            "elastic_magnitude": tuple(float(v) for v in get("elastic_magnitude")),
        },
        "batch_size": int(get("batch_size")),
        "learning_rate": float(get("learning_rate")),
        # the optimiser's other arguments (e.g. ``fused``), as the config passes them to Adam
        "optimizer_args": {k: get(f"optimizer#{k}") for k in parser.get("optimizer") if k not in ("_target_", "params", "lr")},
        "pseudo_gt": str(get("pseudo_gt")),
        "cpu_bf16": get("precision") == "bfloat16",  # cpu_bf16 / amp resolved for this CPU (scripts.workflows.precision)
        "in_channels": int(get("in_channels")),
        "num_samples": int(network.num_samples),
        "network_args": network_args,
        "retain_freed_memory": retained,
    }


def _phantom_samples(num: int, seed: int = 0) -> List[dict]:
    """Phantom Brain-growth-like cases as the load transforms leave them (float32 channel-first tensors)."""
    from scripts.data.phantom import make_phantom_dataset

    samples = []
    for name, case in make_phantom_dataset(num, seed, "brain-growth").items():
        image = np.asarray(case["image"], dtype=np.float32)
        image = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
        samples.append(
            {
                "image": torch.from_numpy(image / 255.0),
                "alpha": torch.from_numpy(np.asarray(case["alpha"], dtype=np.float32)[None] / 255.0),
                "masks": torch.from_numpy(np.stack([np.asarray(m, dtype=np.float32) for m in case["masks"]])),
                "trimap": torch.from_numpy(np.asarray(case["trimap"], dtype=np.float32)[None]),
                "case": name,
            }
        )
    return samples


def synthetic_batches(num_batches: int, batch_size: int = 4, in_channels: int = 1, seed: int = 0) -> List[dict]:
    """``num_batches`` collated batches of phantom 128 x 128 cases (keys image, alpha, masks, trimap, case).

    Example::

        batches = synthetic_batches(2)   # batches[0]["masks"].shape == (4, 7, 128, 128)
    """
    samples = _phantom_samples(max(batch_size * 2, 8), seed)
    if in_channels != samples[0]["image"].shape[0]:
        for s in samples:
            s["image"] = s["image"][:1].expand(in_channels, -1, -1).contiguous()
    batches = []
    for b in range(num_batches):
        chosen = [samples[(b * batch_size + i) % len(samples)] for i in range(batch_size)]
        batch = {k: torch.stack([c[k] for c in chosen]) for k in ("image", "alpha", "masks", "trimap")}
        batch["case"] = [c["case"] for c in chosen]
        batches.append(batch)
    return batches


class StepTimer:
    """Wall (``perf_counter``) and process CPU (``process_time``) seconds of every trainer iteration.

    Attach to an Ignite engine; ``wall`` and ``cpu`` hold one entry per iteration, across runs.

    Example::

        timer = StepTimer().attach(trainer); trainer.run(); statistics.median(timer.wall)
    """

    def __init__(self) -> None:
        self.wall: List[float] = []
        self.cpu: List[float] = []
        self._t0 = self._c0 = 0.0

    def attach(self, engine: Any) -> "StepTimer":
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop)
        return self

    def _start(self, engine: Any) -> None:
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def _stop(self, engine: Any) -> None:
        self.wall.append(time.perf_counter() - self._t0)
        self.cpu.append(time.process_time() - self._c0)


def make_trainer(parts: dict, batches: List[dict], seed: int = 0):
    """The config's ``MattingTrainer`` (Adam on network + loss parameters, loss averages attached).

    Returns ``(trainer, timer)``; each ``trainer.run()`` runs one pass over ``batches``.
    """
    from scripts.workflows.engines import MattingTrainer, loss_averages

    network, loss = parts["network"], parts["loss"]
    optimizer = torch.optim.Adam(list(network.parameters()) + list(loss.parameters()), lr=parts["learning_rate"],
                                 **parts.get("optimizer_args", {}))
    trainer = MattingTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=batches,
        epoch_length=len(batches),
        network=network,
        optimizer=optimizer,
        loss_function=loss,
        pseudo_gt=parts["pseudo_gt"],
        seed=seed,
        key_train_metric=loss_averages(["loss"]),
        additional_metrics=loss_averages(["ce", "kl", "l1", "grad", "seg", "mat", "w_seg", "w_mat"]),
        metric_cmp_fn=lambda current, best: current < best,
        cpu_bf16=parts.get("cpu_bf16", False),
    )
    return trainer, StepTimer().attach(trainer)


def run_iterations(trainer: Any, bf16: bool = False) -> None:
    """One ``trainer.run()`` (one pass over its batches); ``bf16`` turns on the trainer's CPU bfloat16
    autocast (``MattingTrainer(cpu_bf16=True)``: the forward pass in bfloat16, the loss in float32)
    for this pass, whatever the config says."""
    configured = trainer.cpu_bf16
    trainer.cpu_bf16 = configured or bf16
    try:
        trainer.run()
    finally:
        trainer.cpu_bf16 = configured


def compile_network(network: torch.nn.Module) -> None:
    """Replace ``forward_train`` and ``predict`` of ``network`` by their ``torch.compile`` versions."""
    network.forward_train = torch.compile(network.forward_train)
    network.predict = torch.compile(network.predict)


# ---------------------------------------------------------------------------------- measurements
def inference_latency(network: torch.nn.Module, in_channels: int, runs: int = 10, warmup: int = 2,
                      num_samples: Optional[int] = None, bf16: bool = False, batch: int = 1) -> Dict[str, float]:
    """Median wall / CPU seconds of ``network.predict`` on a (batch, C, 128, 128) image (eval, no grad)."""
    image = synthetic_batches(1, batch, in_channels)[0]["image"]
    network.eval()
    wall, cpu = [], []
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        for i in range(warmup + runs):
            t0, c0 = time.perf_counter(), time.process_time()
            network.predict(image, num_samples=num_samples)
            if i >= warmup:
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    network.train()
    return {"wall_median_s": statistics.median(wall), "wall_min_s": min(wall), "cpu_median_s": statistics.median(cpu)}


def training_step_flops(parts: dict, batch: dict) -> float:
    """Counted FLOPs of one training step (forward_train + loss + backward) on ``batch``."""
    from scripts.losses import pseudo_ground_truth

    network, loss = parts["network"], parts["loss"]
    network.train()
    seg_target = pseudo_ground_truth("rater", masks=batch["masks"], generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        out = network.forward_train(batch["image"], seg_target)
        loss(out, batch["alpha"], seg_target)["loss"].backward()
    network.zero_grad(set_to_none=True)
    loss.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def inference_flops(network: torch.nn.Module, image: torch.Tensor) -> float:
    """Counted FLOPs of ``network.predict(image)`` in eval mode."""
    network.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network.predict(image)
    network.train()
    return float(counter.get_total_flops())


def _time_op(fn, runs: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reference_gflops(runs: int = 5) -> Dict[str, float]:
    """GFLOP/s of a large 3 x 3 convolution (forward, NCHW and channels-last) and of a 2048^2 matmul.

    Example::

        reference_gflops(runs=3)["conv2d_64x64_3x3_nchw"]
    """
    out = {}
    torch.manual_seed(0)
    x = torch.randn(8, 64, 128, 128)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    conv_flops = 2.0 * 8 * 64 * 64 * 9 * 128 * 128
    with torch.no_grad():
        out["conv2d_64x64_3x3_nchw"] = conv_flops / _time_op(lambda: conv(x), runs) / 1e9
        xc, convc = x.to(memory_format=torch.channels_last), conv.to(memory_format=torch.channels_last)
        out["conv2d_64x64_3x3_channels_last"] = conv_flops / _time_op(lambda: convc(xc), runs) / 1e9
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        out["matmul_2048_fp32"] = 2.0 * 2048**3 / _time_op(lambda: a @ b, runs) / 1e9
    return out


def augmentation_time(augment: dict, num_images: int = 40, seed: int = 0) -> Dict[str, float]:
    """Mean / median seconds per image of the random training transforms (the config's settings).

    Runs ``Compose(matting_augment_transforms(**augment))`` on phantom cases shaped as the cached
    deterministic part leaves them; MONAI metadata tracking off, as in the configs.
    """
    from monai.data import get_track_meta, set_track_meta
    from monai.transforms import Compose

    from scripts.data.transforms import matting_augment_transforms

    was_tracking = get_track_meta()
    set_track_meta(False)
    try:  # the switch is global: restore it for whatever runs next in this process
        pipeline = Compose(matting_augment_transforms(**augment))
        pipeline.set_random_state(seed)
        samples = _phantom_samples(8, seed)
        times = []
        for i in range(num_images):
            t0 = time.perf_counter()
            pipeline(dict(samples[i % len(samples)]))
            times.append(time.perf_counter() - t0)
    finally:
        set_track_meta(was_tracking)
    return {"mean_s": statistics.fmean(times), "median_s": statistics.median(times), "max_s": max(times)}


def bf16_check(parts: dict, batch: dict, seed: int = 0) -> Dict[str, Any]:
    """Compare one training forward / loss / gradients and one prediction under bf16 autocast with fp32.

    The same global seed is set before each pass (same posterior and prior samples). Returns the
    largest alpha difference, both losses, whether everything is finite and the relative L2
    difference of the gradients. Quality is judged by training runs, not by this check.
    """
    from scripts.losses import pseudo_ground_truth

    network, loss = parts["network"], parts["loss"]
    seg_target = pseudo_ground_truth("rater", masks=batch["masks"], generator=torch.Generator().manual_seed(seed))
    results = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        network.train()
        network.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            out = network.forward_train(batch["image"], seg_target)
            losses = loss(out, batch["alpha"], seg_target)
        losses["loss"].backward()
        grads = torch.cat([p.grad.flatten().float() for p in network.parameters() if p.grad is not None])
        network.eval()
        with torch.no_grad(), ctx:
            pred = network.predict(batch["image"][:1])
        results[name] = {
            "alpha": out["alpha"].detach().float(),
            "pred": pred["alpha"].float(),
            "losses": {k: float(v.detach()) for k, v in losses.items()},
            "grads": grads,
        }
    network.zero_grad(set_to_none=True)
    network.train()
    a, b = results["fp32"], results["bf16"]
    return {
        "loss_fp32": a["losses"]["loss"],
        "loss_bf16": b["losses"]["loss"],
        "all_finite": bool(
            all(np.isfinite(v) for v in b["losses"].values()) and torch.isfinite(b["grads"]).all() and torch.isfinite(b["pred"]).all()
        ),
        "train_alpha_max_abs_diff": float((a["alpha"] - b["alpha"]).abs().max()),
        "train_alpha_mean_abs_diff": float((a["alpha"] - b["alpha"]).abs().mean()),
        "predict_alpha_max_abs_diff": float((a["pred"] - b["pred"]).abs().max()),
        "predict_alpha_mean_abs_diff": float((a["pred"] - b["pred"]).abs().mean()),
        "grad_relative_l2_diff": float((a["grads"] - b["grads"]).norm() / a["grads"].norm().clamp_min(1e-12)),
    }


def machine_info() -> Dict[str, Any]:
    """:func:`tools.provenance.machine_info` plus the torch / MONAI versions and the commit."""
    import monai

    return {**provenance.machine_info(), "torch": torch.__version__, "monai": monai.__version__,
            "commit": provenance.git_commit(dirty_flag=False)}


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="training config (default configs/train.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="ID=VALUE",
                        help="config override, e.g. num_samples=4 or network_def#convs_per_block=1 (repeatable)")
    parser.add_argument("--iterations", type=int, default=20, help="timed training iterations (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up iterations (default 3)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the config's)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--interop_threads", "--interop-threads", type=int, default=None, help="torch.set_num_interop_threads")
    parser.add_argument("--channels_last", dest="channels_last", action="store_true", default=None,
                        help="network in channels-last format (the network's default)")
    parser.add_argument("--no_channels_last", "--no-channels_last", dest="channels_last", action="store_false",
                        help="network in the default contiguous (NCHW) format")
    parser.add_argument("--bf16", action="store_true", help="torch.autocast('cpu', dtype=torch.bfloat16)")
    parser.add_argument("--compile", action="store_true", help="torch.compile forward_train and predict")
    parser.add_argument("--inference_runs", "--inference-runs", type=int, default=10, help="timed predict calls (default 10)")
    parser.add_argument("--augment_images", "--augment-images", type=int, default=40, help="images for the augmentation timing")
    parser.add_argument("--reference_runs", "--reference-runs", type=int, default=5, help="runs of the reference conv / matmul (0 skips)")
    parser.add_argument("--skip_flops", "--skip-flops", action="store_true", help="do not count FLOPs")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.interop_threads is not None:
        torch.set_num_interop_threads(args.interop_threads)
    overrides = parse_overrides(args.overrides)
    if args.channels_last is not None:
        overrides["network_def#channels_last"] = bool(args.channels_last)
    torch.manual_seed(0)
    parts = build_from_config(args.config, overrides)
    batch_size = args.batch or parts["batch_size"]
    network = parts["network"]
    result: Dict[str, Any] = {
        "command": "python -m tools.benchmarks.training_speed " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "config": str(args.config),
        "overrides": overrides,
        "network_args": parts["network_args"],
        "batch_size": batch_size,
        "bf16": args.bf16,
        "compile": args.compile,
        "retain_freed_memory": parts["retain_freed_memory"],
        "params": sum(p.numel() for p in network.parameters()),
    }

    batches = synthetic_batches(args.warmup + args.iterations, batch_size, parts["in_channels"])
    if not args.skip_flops:
        step_flops = training_step_flops(parts, batches[0])
        infer_flops = inference_flops(network, batches[0]["image"][:1])
        result["flops"] = {
            "train_step": step_flops,
            "train_per_image": step_flops / batch_size,
            "inference_per_image": infer_flops,
        }
    if args.compile:
        compile_network(network)
    trainer, timer = make_trainer(parts, batches)
    run_iterations(trainer, bf16=args.bf16)
    wall, cpu = timer.wall[args.warmup:], timer.cpu[args.warmup:]
    step = statistics.median(wall)
    train = {
        "iterations": len(wall),
        "warmup": args.warmup,
        "step_wall_median_s": step,
        "step_wall_min_s": min(wall),
        "step_wall_max_s": max(wall),
        "step_cpu_median_s": statistics.median(cpu),
        "images_per_s": batch_size / step,
        "first_iteration_s": timer.wall[0],
        "wall_s": timer.wall,
    }
    if args.compile:
        train["compile_s_estimate"] = timer.wall[0] - step
    result["training"] = train
    infer = inference_latency(network, parts["in_channels"], runs=args.inference_runs, bf16=args.bf16)
    result["inference"] = {**infer, "num_samples": parts["num_samples"], "batch": 1}
    if "flops" in result:
        result["flops"]["train_gflops_per_s"] = result["flops"]["train_step"] / step / 1e9
        result["flops"]["inference_gflops_per_s"] = result["flops"]["inference_per_image"] / infer["wall_median_s"] / 1e9
    if args.reference_runs > 0:
        result["reference_gflops_per_s"] = reference_gflops(args.reference_runs)
    if args.augment_images > 0:
        aug = augmentation_time(parts["augment"], args.augment_images)
        aug["share_of_step"] = aug["mean_s"] * batch_size / (aug["mean_s"] * batch_size + step)
        result["augmentation"] = {"settings": parts["augment"], **aug}
    if args.bf16:
        result["bf16_check"] = bf16_check(parts, batches[0])
    result["peak_rss_mib"] = peak_rss_mib()
    result["machine"]["load_average_at_end"] = provenance.load_average()

    _print_table(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


def _print_table(r: dict) -> None:
    m, t, i = r["machine"], r["training"], r["inference"]
    rows = [
        ("commit", m["commit"]),
        ("machine", f"{m['cpu']}, {m['logical_cpus']} cores, {m['torch_threads']} torch threads, load {m['load_average']}"),
        ("torch / monai", f"{m['torch']} / {m['monai']}"),
        ("parameters", f"{r['params'] / 1e6:.3f} M"),
        ("training step (batch %d), wall median" % r["batch_size"],
         f"{t['step_wall_median_s']:.3f} s (min {t['step_wall_min_s']:.3f}, max {t['step_wall_max_s']:.3f})"),
        ("training step, process CPU median", f"{t['step_cpu_median_s']:.3f} s"),
        ("training throughput", f"{t['images_per_s']:.2f} images/s"),
        ("inference latency, 1 image, %d samples" % i["num_samples"], f"{i['wall_median_s'] * 1e3:.1f} ms"),
    ]
    if "compile_s_estimate" in t:
        rows.append(("compile time (first iteration - median)", f"{t['compile_s_estimate']:.1f} s"))
    if "flops" in r:
        f = r["flops"]
        rows += [
            ("FLOPs per image, training", f"{f['train_per_image'] / 1e9:.2f} GFLOP"),
            ("FLOPs per image, inference", f"{f['inference_per_image'] / 1e9:.2f} GFLOP"),
            ("achieved, training", f"{f['train_gflops_per_s']:.1f} GFLOP/s"),
            ("achieved, inference", f"{f['inference_gflops_per_s']:.1f} GFLOP/s"),
        ]
    for k, v in r.get("reference_gflops_per_s", {}).items():
        rows.append((f"reference {k}", f"{v:.1f} GFLOP/s"))
    if "augmentation" in r:
        a = r["augmentation"]
        rows.append(("augmentation per image (mean)", f"{a['mean_s'] * 1e3:.1f} ms ({a['share_of_step'] * 100:.1f} % of a step)"))
    if "bf16_check" in r:
        b = r["bf16_check"]
        rows.append(("bf16 vs fp32", f"loss {b['loss_bf16']:.4f} vs {b['loss_fp32']:.4f}, predict max |d alpha| "
                                       f"{b['predict_alpha_max_abs_diff']:.3g}, grad rel. diff {b['grad_relative_l2_diff']:.3g}"))
    rows.append(("peak RSS", f"{r['peak_rss_mib']:.0f} MiB"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")


if __name__ == "__main__":
    main()
