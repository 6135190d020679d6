"""Where the time of a training epoch goes: data loading, forward/backward, handlers (Ignite profilers).

Builds the trainer of the bundle config exactly as ``python -m monai.bundle run training`` does,
attaches Ignite's ``BasicTimeProfiler`` (time fetching batches = data loading + augmentation,
time in the iteration = forward + loss + backward + optimiser step, time in event handlers) and
``HandlersTimeProfiler`` (per handler), trains ``--epochs`` epochs into a temporary checkpoint
folder and prints the totals (each epoch's wall time, each checkpoint save, per-handler totals).

Example::

    python -m tools.benchmarks.profile_training --dataset_dir data/brain-growth --fold 0 --epochs 3
    python -m tools.benchmarks.profile_training --dataset_dir data/phantom --epochs 2 --batch_size 8

Other ``--key value`` arguments override the config like on the bundle command line (values are
parsed as YAML: ``--prob_filters [8,16,32]``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from tools.provenance import load_average

__all__ = ["profile_training", "main"]


def profile_training(
    config_file: Sequence[str] | str = ("configs/train.yaml",),
    epochs: int = 2,
    tracking: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train ``epochs`` epochs with Ignite's profilers attached; return the timing summary.

    Args:
        config_file: bundle config file(s).
        epochs: epochs to train.
        tracking: ``"mlflow"`` to include MONAI's MLflow handlers (store in a temporary folder).
        overrides: config overrides.

    Returns ``{"epochs", "iterations_per_epoch", "batch_size", "train_cases", "epoch_s" (each
    epoch's wall time), "epoch_process_cpu_s" (its process CPU time, all threads), "dataflow_s", "processing_s", "handlers_s" (totals over all epochs), "checkpoint_save_s"
    (each save), "handlers" ({name: total seconds}), "torch_threads"}``.
    """
    import torch
    from ignite.engine import Events

    from scripts.handlers.checkpoint import TrainingCheckpointHandler
    from ignite.handlers import BasicTimeProfiler, HandlersTimeProfiler
    from monai.bundle import ConfigWorkflow

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"ckpt_dir": f"{tmp}/models", "output_dir": f"{tmp}/eval", "progress_bar": False,
                     **overrides, "epochs": int(epochs)}
        workflow = ConfigWorkflow(config_file=list(config_file) if not isinstance(config_file, str) else config_file,
                                  workflow_type="train", tracking=tracking, **overrides)
        workflow.initialize()
        trainer = workflow.parser.get_parsed_content("train#trainer")
        save_times: list[float] = []
        for handler in workflow.parser.get_parsed_content("train#handlers"):
            if isinstance(handler, TrainingCheckpointHandler):
                handler.save = _timed(handler.save, save_times)
        basic, per_handler = BasicTimeProfiler(), HandlersTimeProfiler()
        basic.attach(trainer)
        per_handler.attach(trainer)
        epoch_times: list[float] = []
        epoch_cpu: list[float] = []
        clock: dict[str, float] = {}

        def _start(engine: Any) -> None:
            clock["t"], clock["cpu"] = time.perf_counter(), time.process_time()

        def _end(engine: Any) -> None:
            epoch_times.append(time.perf_counter() - clock["t"])
            epoch_cpu.append(time.process_time() - clock["cpu"])

        trainer.add_event_handler(Events.EPOCH_STARTED, _start)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, _end)
        trainer.run()
        results = basic.get_results()
        per_iter = len(trainer.data_loader)
        dataflow_epochs = basic.dataflow_times.reshape(-1, per_iter).sum(dim=1).tolist()
        processing_epochs = basic.processing_times.reshape(-1, per_iter).sum(dim=1).tolist()
        handler_rows = per_handler.get_results()
    handlers: dict[str, float] = {}
    for row in handler_rows:
        name, event, total = str(row[0]), str(row[1]), row[2]
        if name in ("Total", "Processing", "Dataflow") or not isinstance(total, (int, float)):
            continue
        handlers[f"{name} [{event}]"] = round(float(total), 4)
    total = results["event_handlers_stats"]["total_time"]
    return {
        "epochs": int(epochs),
        "iterations_per_epoch": len(trainer.data_loader),
        "batch_size": trainer.data_loader.batch_size,
        "train_cases": len(trainer.data_loader.dataset),
        "epoch_s": [round(t, 3) for t in epoch_times],
        "epoch_process_cpu_s": [round(t, 3) for t in epoch_cpu],
        "checkpoint_save_s": [round(t, 3) for t in save_times],
        "dataflow_per_epoch_s": [round(t, 3) for t in dataflow_epochs],
        "processing_per_epoch_s": [round(t, 3) for t in processing_epochs],
        "dataflow_s": round(float(results["dataflow_stats"]["total"]), 3),
        "processing_s": round(float(results["processing_stats"]["total"]), 3),
        "handlers_s": round(float(total if isinstance(total, (int, float)) else 0.0), 3),
        "handlers": dict(sorted(handlers.items(), key=lambda kv: -kv[1])),
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),
    }


def _timed(func: Any, times: list) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)

    return wrapper


def main(argv: Sequence[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(prog="python -m tools.benchmarks.profile_training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_file", default="configs/train.yaml", help="config file(s), comma separated")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the summary to this JSON file")
    parser.add_argument("--tracking", default=None, help="mlflow: include the MLflow handlers")
    args, rest = parser.parse_known_args(argv)
    overrides: dict[str, Any] = {}
    for i in range(0, len(rest), 2):
        if not rest[i].startswith("--") or i + 1 >= len(rest):
            raise SystemExit(f"expected --key value pairs, got {rest[i:]}")
        overrides[rest[i][2:]] = yaml.safe_load(rest[i + 1])
    summary = profile_training(args.config_file.split(","), epochs=args.epochs, tracking=args.tracking, **overrides)
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
