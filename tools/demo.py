"""``python -m tools.demo`` (``bash run.sh demo``): the README's main job, in a few minutes on 2 CPU cores.

1. prepares the phantom dataset into ``data/phantom`` (skipped when its ``datalist.json`` exists);
2. trains fold 0 with a short schedule and a small network (``DEMO_OVERRIDES``), resuming from
   ``models/demo`` when a previous demo was interrupted, and evaluates the final model on the
   test fold -- one ``python -m monai.bundle run train_evaluate`` with ``--tracking mlflow``;
3. prints the test metrics and where the metrics, predictions, figure and MLflow run are.

The short schedule is a smoke run of the whole product, not the bundle's training schedule
(``configs/train.yaml``); the figure shows what a few minutes of training give.

Options: ``--data DIR``, ``--output_dir DIR``, ``--ckpt_dir DIR``, ``--epochs N``, ``--fresh`` (delete
the demo's previous checkpoints and outputs first), and any ``--key value`` bundle override.
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

#: the demo's short schedule and small network (the full-size defaults are in configs/train.yaml)
DEMO_OVERRIDES = {
    "epochs": "30",
    "learning_rate": "0.001",
    # without normalisation this small network collapses to alpha = 0 at this learning rate
    "norm": "INSTANCE",
    "prob_filters": "[8,16,32]",
    "matting_filters": "[8,16,32]",
    "implicit_hidden": "16",
    "num_samples": "4",
    "val_interval": "0",
}
DEMO_CASES = 32


def prepare_phantom(data_dir: Path, num_cases: int = DEMO_CASES) -> None:
    """Create the phantom dataset in ``data_dir`` unless its ``datalist.json`` exists."""
    if (data_dir / "datalist.json").is_file():
        print(f"[demo] phantom dataset found: {data_dir}", flush=True)
        return
    print(f"[demo] preparing the phantom dataset ({num_cases} cases) in {data_dir}", flush=True)
    cmd = [sys.executable, "-m", "scripts.prepare_data", "--dataset", "phantom",
           "--num_cases", str(num_cases), "--out", str(data_dir)]
    subprocess.run(cmd, cwd=str(BUNDLE_ROOT), check=True)


def _print_metrics(metrics_path: Path) -> None:
    summary = json.loads(metrics_path.read_text())
    print(f"[demo] test metrics of fold {summary.get('fold')} ({summary.get('num_cases')} cases, mean +/- std):")
    for name, stats in summary["metrics"].items():
        mean, std = stats.get("mean"), stats.get("std")
        text = "n/a" if mean is None else f"{mean:.4f} +/- {std:.4f}"
        print(f"    {name:<13} {text}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(BUNDLE_ROOT / "data" / "phantom"), help="phantom dataset folder")
    parser.add_argument("--output_dir", default=str(BUNDLE_ROOT / "eval" / "demo"))
    parser.add_argument("--ckpt_dir", default=str(BUNDLE_ROOT / "eval" / "demo" / "models"))
    parser.add_argument("--epochs", default=DEMO_OVERRIDES["epochs"])
    parser.add_argument("--fresh", action="store_true", help="delete the previous demo checkpoints and outputs")
    args, extra = parser.parse_known_args(argv)

    data_dir, out, ckpt = Path(args.data).absolute(), Path(args.output_dir).absolute(), Path(args.ckpt_dir).absolute()
    if args.fresh:
        for folder in (out, ckpt):
            if folder.is_dir():
                shutil.rmtree(folder)
    start = time.time()
    prepare_phantom(data_dir)

    overrides = {**DEMO_OVERRIDES, "epochs": str(args.epochs)}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "train_evaluate",
           "--config_file", "['configs/train.yaml','configs/evaluate.yaml']",
           "--dataset_dir", str(data_dir), "--fold", "0",
           "--output_dir", str(out), "--ckpt_dir", str(ckpt), "--run_name", "demo-fold0",
           "--tracking", "configs/mlflow.yaml"]
    for key, value in overrides.items():
        cmd += [f"--{key}", value]
    cmd += extra
    print(f"[demo] training + evaluation of fold 0:\n    {shlex.join(cmd)}", flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(BUNDLE_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    code = subprocess.run(cmd, cwd=str(BUNDLE_ROOT), env=env).returncode
    if code != 0:
        print(f"[demo] the bundle run failed (exit code {code}); rerun to resume from the last checkpoint.")
        return code

    metrics = out / "metrics.json"
    _print_metrics(metrics)

    # serving: the shipped weights (models/model.pt), paths only -- the network comes from the checkpoint
    served = out / "served"
    image = sorted((data_dir / "images").glob("*.png"))[0]
    serve = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
             "--input_path", str(image), "--output_dir", str(served)]
    print(f"[demo] serving the shipped weights:\n    {shlex.join(serve)}", flush=True)
    code = subprocess.run(serve, cwd=str(BUNDLE_ROOT), env=env).returncode
    if code != 0:
        print(f"[demo] serving failed (exit code {code})")
        return code
    db = out / "mlruns.db"
    print(f"[demo] done in {time.time() - start:.0f} s. Outputs:")
    print(f"    metrics      {metrics}  (+ metrics.csv, metrics_per_case.json/.csv)")
    print(f"    figure       {out / 'figure_fold0.png'}")
    print(f"    predictions  {out / 'predictions'}  (<case>_alpha.png/.npy, <case>_uncertainty.png/.npy)")
    print(f"    model        {ckpt / 'model.pt'}")
    print(f"    served       {served}  (models/model.pt on {image.name})")
    print(f"    MLflow       experiment 'medical_matting', run 'demo-fold0' in sqlite:///{db}")
    print(f"                 view: mlflow ui --backend-store-uri sqlite:///{db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
