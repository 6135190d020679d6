"""``python -m tools.demo`` (``bash run.sh demo``): the whole product in under three minutes on 2 CPU cores.

1. prepares the phantom dataset into ``data/phantom`` (skipped when its ``datalist.json`` exists);
2. trains fold 0 with the demo recipe (:data:`DEMO_OVERRIDES`: a small network, four images per
   step) and evaluates the final model on the test fold -- one ``python -m monai.bundle run
   train_evaluate`` with ``--tracking configs/mlflow.yaml``; an interrupted demo resumes;
3. prints the test metrics (the matte's SAD / MSE / Grad, the Prob. U-Net samples' Dice and GED
   against the raters, and the uncertainty map's correlation with the raters' disagreement),
   each checked against :data:`EXPECTED`, and where the figure, predictions and MLflow run are;
4. serves the shipped weights ``models/model.pt`` with ``configs/inference.yaml`` (paths only) on
   a real Brain-growth image, prepared from ``../shared/data/brain-growth`` or the published
   addresses, and prints how the served matte agrees with that image's seven raters.

The demo recipe is a short schedule on synthetic data, not the bundle's training recipe
(``configs/train.yaml``); its network is too small for real images. Its precision is the bundle's
(``cpu_bf16 auto``: bfloat16 only where the CPU runs it natively, ``scripts.workflows.precision``).

Options: ``--data DIR``, ``--output_dir DIR``, ``--ckpt_dir DIR``, ``--epochs N``, ``--fresh`` (delete
the demo's previous checkpoints and outputs first), ``--no_serve``, ``--cpu_bf16 auto|true|false``,
and any ``--key value`` bundle override.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from scripts import BUNDLE_ROOT
from tools.processes import bundle_env

__all__ = ["DEMO_OVERRIDES", "EXPECTED", "demo_overrides", "training_threads", "check_metrics",
           "prepare_phantom", "main"]

#: the demo recipe: a small network, four images per step (the full-size defaults are in configs/train.yaml)
DEMO_OVERRIDES = {
    "epochs": "30",
    "batch_size": "4",
    # the Prob. U-Net's cross-entropy stalls near 0.22 at 2e-3 within this schedule; at 4e-3 it falls below 0.05
    "learning_rate": "0.004",
    "norm": "INSTANCE",
    "prob_filters": "[8,16,32]",
    "latent_filters": "[8,16,32]",
    "matting_filters": "[8,16,32]",
    "implicit_hidden": "16",
    "num_samples": "4",
    "val_interval": "0",
    "progress_bar": "False",
}
DEMO_CASES = 32
#: what the demo's test metrics must show: (metric, "min" | "max", bound)
EXPECTED = (("dice", "min", 0.85), ("unc_corr", "min", 0.2), ("sad_unknown", "max", 0.2))
SHARED_BRAIN_GROWTH = BUNDLE_ROOT.parent / "shared" / "data" / "brain-growth"


def demo_overrides(epochs: str | int | None = None, cpu_bf16: str = "auto") -> dict[str, str]:
    """:data:`DEMO_OVERRIDES` with ``epochs`` and ``cpu_bf16`` (``auto`` | ``true`` | ``false``) filled in."""
    out = dict(DEMO_OVERRIDES)
    if epochs is not None:
        out["epochs"] = str(epochs)
    out["cpu_bf16"] = str(cpu_bf16)
    return out


def training_threads(load_average: float | None = None, cpus: int | None = None) -> int | None:
    """Torch threads of the demo's training: 1 when other processes keep the cores busy, else torch's default.

    On a 2-core machine shared with other work, a 2-thread training step waits for its descheduled
    thread: the demo's epoch took 170 s with 2 threads against 16 s with one at a load average of
    11-14 (docs/workflows.md); on an idle machine the second thread helps.
    """
    load = os.getloadavg()[0] if load_average is None else load_average
    cpus = cpus or os.cpu_count() or 1
    return 1 if load >= 0.5 * cpus else None


def check_metrics(metrics: dict[str, dict]) -> list[str]:
    """The :data:`EXPECTED` bounds that ``metrics`` (``metrics.json``'s ``metrics``) misses, as lines."""
    failed = []
    for name, kind, bound in EXPECTED:
        mean = metrics.get(name, {}).get("mean")
        if mean is None or (mean < bound if kind == "min" else mean > bound):
            failed.append(f"{name} = {mean} ({'at least' if kind == 'min' else 'at most'} {bound} expected)")
    return failed


def prepare_phantom(data_dir: Path, num_cases: int = DEMO_CASES) -> None:
    """Create the phantom dataset in ``data_dir`` unless its ``datalist.json`` exists."""
    if (data_dir / "datalist.json").is_file():
        print(f"[demo] phantom dataset found: {data_dir}", flush=True)
        return
    print(f"[demo] preparing the phantom dataset ({num_cases} cases) in {data_dir}", flush=True)
    cmd = [sys.executable, "-m", "scripts.prepare_data", "--dataset", "phantom",
           "--num_cases", str(num_cases), "--out", str(data_dir)]
    subprocess.run(cmd, cwd=str(BUNDLE_ROOT), check=True, stdout=subprocess.DEVNULL)


def _print_metrics(summary: dict) -> None:
    labels = {"sad_unknown": "SAD (unknown region)", "mse_unknown": "MSE (unknown region)",
              "grad_unknown": "Grad (unknown region)", "dice": "Dice of the samples", "ged": "GED of the samples",
              "unc_corr": "uncertainty vs raters"}
    print(f"[demo] test metrics of fold {summary.get('fold')} ({summary.get('num_cases')} cases, mean +/- std):")
    for name, label in labels.items():
        stats = summary["metrics"].get(name, {})
        mean, std = stats.get("mean"), stats.get("std")
        print(f"    {label:<22} {'n/a' if mean is None else f'{mean:.4f} +/- {std:.4f}'}")


def _serve_brain_growth(out: Path, env: dict[str, str]) -> int:
    """Infer one real Brain-growth image with the shipped weights and compare it with its raters."""
    import numpy as np
    import torch

    from scripts.metrics.samples import compute_sample_dice, compute_uncertainty_rater_correlation
    from tools.reproduce import prepare_brain_growth

    data_dir = prepare_brain_growth(BUNDLE_ROOT / "data" / "brain-growth", None, None, seed=0)
    item = json.loads((data_dir / "datalist.json").read_text())["training"][0]
    image = data_dir / item["image"]
    served = out / "served"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
           "--input_path", str(image), "--output_dir", str(served)]
    print(f"[demo] the shipped weights models/model.pt on the Brain-growth image {image.name}:\n    {shlex.join(cmd)}",
          flush=True)
    code = subprocess.run(cmd, cwd=str(BUNDLE_ROOT), env=env, stdout=subprocess.DEVNULL).returncode
    if code != 0:
        print(f"[demo] inference failed (exit code {code})")
        return code
    from PIL import Image

    alpha = np.load(served / f"{image.stem}_alpha.npy").squeeze()
    uncertainty = np.load(served / f"{image.stem}_uncertainty.npy").squeeze()
    masks = torch.from_numpy(np.stack([np.asarray(Image.open(data_dir / m)) > 0 for m in item["masks"]]))[None].float()
    dice = compute_sample_dice(torch.from_numpy(alpha)[None, None], masks).item()
    corr = compute_uncertainty_rater_correlation(torch.from_numpy(uncertainty)[None, None], masks).item()
    print(f"    alpha > 0.5 against the raters' majority: Dice {dice:.4f}; uncertainty vs the raters' "
          f"disagreement: correlation {corr:+.2f}")
    print(f"    outputs: {served}/{image.stem}_alpha.png/.npy, {image.stem}_uncertainty.png/.npy")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(BUNDLE_ROOT / "data" / "phantom"), help="phantom dataset folder")
    parser.add_argument("--output_dir", default=str(BUNDLE_ROOT / "eval" / "demo"))
    parser.add_argument("--ckpt_dir", default=str(BUNDLE_ROOT / "eval" / "demo" / "models"))
    parser.add_argument("--epochs", default=DEMO_OVERRIDES["epochs"])
    parser.add_argument("--fresh", action="store_true", help="delete the previous demo checkpoints and outputs")
    parser.add_argument("--no_serve", action="store_true", help="skip inference with the shipped weights")
    parser.add_argument("--cpu_bf16", choices=("auto", "true", "false"), default="auto",
                        help="bfloat16 forward pass on CPU (auto: where the CPU has native bfloat16)")
    args, extra = parser.parse_known_args(argv)

    data_dir, out, ckpt = Path(args.data).absolute(), Path(args.output_dir).absolute(), Path(args.ckpt_dir).absolute()
    if args.fresh:
        for folder in (out, ckpt):
            if folder.is_dir():
                shutil.rmtree(folder)
    start = time.time()
    prepare_phantom(data_dir)

    cmd = [sys.executable, "-m", "monai.bundle", "run", "train_evaluate",
           "--config_file", "['configs/train.yaml','configs/evaluate.yaml']",
           "--dataset_dir", str(data_dir), "--fold", "0",
           "--output_dir", str(out), "--ckpt_dir", str(ckpt), "--run_name", "demo-fold0",
           "--tracking", "configs/mlflow.yaml"]
    for key, value in demo_overrides(args.epochs, args.cpu_bf16).items():
        cmd += [f"--{key}", value]
    cmd += extra
    print(f"[demo] training + evaluation of fold 0 (log: {out / 'log.txt'}):\n    {shlex.join(cmd)}", flush=True)
    threads = training_threads()
    env = bundle_env(threads)
    if threads:
        print(f"[demo] the cores are busy (load average {os.getloadavg()[0]:.1f}): training with {threads} thread", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "a") as log:
        code = subprocess.run(cmd, cwd=str(BUNDLE_ROOT), env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        print(f"[demo] the bundle run failed (exit code {code}, see {out / 'log.txt'}); rerun to resume.")
        return code
    print(f"[demo] trained and evaluated in {time.time() - start:.0f} s", flush=True)

    summary = json.loads((out / "metrics.json").read_text())
    _print_metrics(summary)
    failed = check_metrics(summary["metrics"])
    for line in failed:
        print(f"[demo] unexpected: {line}")

    if not args.no_serve:
        code = _serve_brain_growth(out, env)
        if code != 0:
            return code
    db = out / "mlruns.db"
    print(f"[demo] done in {time.time() - start:.0f} s. Outputs:")
    print(f"    figure       {out / 'figure_fold0.png'}  (image, true and predicted alpha, uncertainty, error)")
    print(f"    metrics      {out / 'metrics.json'}  (+ metrics.csv, metrics_per_case.json/.csv)")
    print(f"    predictions  {out / 'predictions'}  (<case>_alpha.png/.npy, <case>_uncertainty.png/.npy)")
    print(f"    model        {ckpt / 'model.pt'}")
    print(f"    MLflow       experiment 'medical_matting', run 'demo-fold0': mlflow ui --backend-store-uri sqlite:///{db}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
