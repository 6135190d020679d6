"""``python -m tools.studies.stored_weights_check``: what storing the weights as float16 does to the metrics.

``tools.release`` publishes ``models/model.pt`` with its floating-point weights stored as float16
(:func:`tools.release.stored_state_dict`). This check measures the cost on the cross-validation
protocol: each fold model of a ``tools.reproduce`` run is stored the same way and evaluated on its
test fold exactly as ``tools.reproduce`` evaluates it (``configs/evaluate.yaml``), and the metrics
are compared with the run's own float32 evaluation (``fold<k>/metrics.json``).

Example::

    python -m tools.studies.stored_weights_check --run runs/brain-growth/ours --out runs/stored_weights_check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import torch

from scripts import BUNDLE_ROOT
from scripts.atomic import atomic_write, write_text_atomic
from tools.crossval import DEFAULT_CONFIG_FILES, fold_command
from tools.provenance import git_commit, load_average, machine_info
from tools.release import STORE_DTYPES, max_rounding_error, stored_state_dict

METRICS = ("sad_unknown", "mse_unknown", "grad_unknown", "conn_unknown", "ged", "dice", "unc_corr")


def _mean(metrics_json: Path) -> dict[str, float]:
    metrics = json.loads(metrics_json.read_text())["metrics"]
    return {m: metrics[m]["mean"] for m in METRICS if m in metrics}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a tools.reproduce run folder (fold<k>/models/model.pt, fold<k>/metrics.json)")
    p.add_argument("--data_dir", default=str(BUNDLE_ROOT / "data" / "brain-growth"))
    p.add_argument("--out", default=str(BUNDLE_ROOT / "runs" / "stored_weights_check"))
    p.add_argument("--store_dtype", choices=sorted(STORE_DTYPES), default="float16")
    p.add_argument("--json", default=None, help="also write the summary here")
    args = p.parse_args(argv)

    run, out = Path(args.run), Path(args.out)
    folds = sorted(int(d.name[4:]) for d in run.glob("fold*") if (d / "models" / "model.pt").is_file())
    if not folds:
        print(f"error: no fold<k>/models/model.pt under {run}", file=sys.stderr)
        return 2
    summary = {"command": " ".join(["python -m tools.studies.stored_weights_check", *(argv if argv is not None else sys.argv[1:])]),
               "commit": git_commit(), "machine": machine_info(), "load_average_before": load_average(),
               "store_dtype": args.store_dtype, "run": str(run), "folds": {}}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(BUNDLE_ROOT)}
    for k in folds:
        reference = run / f"fold{k}" / "metrics.json"
        if not reference.is_file():
            print(f"error: {reference} not found (the run's float32 evaluation)", file=sys.stderr)
            return 2
        trained = torch.load(run / f"fold{k}" / "models" / "model.pt", map_location="cpu", weights_only=True)
        stored = stored_state_dict(trained, STORE_DTYPES[args.store_dtype])
        fold_out = out / f"fold{k}"
        (fold_out / "models").mkdir(parents=True, exist_ok=True)
        atomic_write(fold_out / "models" / "model.pt", lambda f: torch.save(stored, f))
        cmd = fold_command(k, args.data_dir, fold_out, [str(BUNDLE_ROOT / c) for c in DEFAULT_CONFIG_FILES],
                           run_id="evaluating")
        with open(fold_out / "log.txt", "w") as log:
            code = subprocess.run(cmd, cwd=BUNDLE_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if code != 0:
            print(f"error: evaluation of fold {k} failed (exit {code}); see {fold_out / 'log.txt'}", file=sys.stderr)
            return code
        before, after = _mean(reference), _mean(fold_out / "metrics.json")
        summary["folds"][str(k)] = {"max_rounding_error": max_rounding_error(trained, stored), "float32": before,
                                    args.store_dtype: after, "difference": {m: after[m] - before[m] for m in before if m in after}}
        print(f"[stored_weights_check] fold {k}: " + ", ".join(f"{m} {before[m]:.4f} -> {after[m]:.4f}" for m in before if m in after), flush=True)
    diffs = [abs(d) for f in summary["folds"].values() for d in f["difference"].values()]
    summary["max_abs_metric_difference"] = max(diffs, default=0.0)
    summary["load_average_after"] = load_average()
    text = json.dumps(summary, indent=1) + "\n"
    write_text_atomic(out / "summary.json", text)
    if args.json:
        write_text_atomic(Path(args.json), text)
    print(f"[stored_weights_check] largest metric difference {summary['max_abs_metric_difference']:.2e}; {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
