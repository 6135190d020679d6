"""``python -m tools.release``: re-create the shipped weights ``models/model.pt``.

Trains the bundle's default recipe (``configs/train.yaml`` as it is) on all 39 Brain-growth cases
(``--fold null``: no test fold; the cross-validated numbers of the same recipe are in
``docs/results/brain_growth.md``), then copies the final ``model.pt`` atomically to
``models/model.pt`` and writes ``runs/release/release.json`` (command, commit, wall time, machine,
sha256, size). Training resumes from its newest checkpoint if the command is run again.

Example::

    python -m tools.release                       # ~8 min on the 2-core CPU machine, 1 thread (60 bf16 epochs)
    python -m tools.release --epochs 2 --out runs/release-smoke --no_publish   # a quick check
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
from pathlib import Path
from typing import Sequence

from scripts import BUNDLE_ROOT
from scripts.atomic import atomic_write, write_text_atomic
from scripts.digest import sha256_file
from tools.provenance import git_commit, library_versions, machine_info
from tools.reproduce import prepare_brain_growth


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(BUNDLE_ROOT / "data" / "brain-growth"))
    p.add_argument("--source", default=None, help="brain_growth_alpha.zip (default: ../shared/data/brain-growth)")
    p.add_argument("--trimaps", default=None, help="trimap_brain.zip (default: ../shared/data/brain-growth)")
    p.add_argument("--out", default=str(BUNDLE_ROOT / "runs" / "release"), help="training folder (checkpoints)")
    p.add_argument("--epochs", type=int, default=None, help="default: train.yaml's")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training (1: reproducible timing)")
    p.add_argument("--no_publish", action="store_true", help="do not copy the weights to models/model.pt")
    args = p.parse_args(argv)

    start = time.time()
    command = shlex.join([Path(sys.executable).name, "-m", "tools.release", *(argv if argv is not None else sys.argv[1:])])
    commit = git_commit()
    data_dir = prepare_brain_growth(Path(args.data_dir), args.source, args.trimaps, seed=0)
    out = Path(args.out)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml",
           "--dataset_dir", str(data_dir.resolve()), "--fold", "null", "--ckpt_dir", str((out / "models").resolve()),
           "--output_dir", str((out / "eval").resolve()), "--progress_bar", "false"]
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join([str(BUNDLE_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    print(f"[release] {shlex.join(cmd)}", flush=True)
    code = subprocess.run(cmd, cwd=str(BUNDLE_ROOT), env=env).returncode
    if code != 0:
        print(f"error: training failed (exit {code}); run the same command again to resume", file=sys.stderr)
        return code
    weights = out / "models" / "model.pt"
    record = {
        "command": command, "training_command": shlex.join(cmd[1:]), "commit": commit,
        "wall_seconds": round(time.time() - start, 1), "threads": args.threads, "machine": machine_info(),
        "versions": library_versions(), "sha256": sha256_file(weights), "bytes": weights.stat().st_size,
        "num_cases": len(json.loads((data_dir / "datalist.json").read_text())["training"]),
    }
    if not args.no_publish:
        target = BUNDLE_ROOT / "models" / "model.pt"
        with open(weights, "rb") as source:
            atomic_write(target, lambda f: shutil.copyfileobj(source, f))
        record["published"] = str(target.relative_to(BUNDLE_ROOT))
    write_text_atomic(out / "release.json", json.dumps(record, indent=2) + "\n")
    print(f"[release] {json.dumps({k: record[k] for k in ('sha256', 'bytes', 'wall_seconds', 'commit')})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
