"""``python -m tools.release``: re-create the shipped weights ``models/model.pt``.

Trains the bundle's default recipe (``configs/train.yaml`` as it is) on all 39 Brain-growth cases
(``--fold null``: no test fold; the cross-validated numbers of the same recipe are in
``docs/results/brain_growth.md``), then copies the final ``model.pt`` atomically to
``models/model.pt`` and writes ``runs/release/release.json`` (command, commit, wall time, machine,
sha256, size). Training resumes from its newest checkpoint if the command is run again.

The published file stores the floating-point weights as float16 (``--store_dtype``), half the
bytes of the trained float32 file, so that the full-width network fits the repository's 10 MB limit
for its one binary. Loading casts them back: ``load_state_dict`` copies into the float32 parameters.
The largest rounding error is recorded in ``release.json``; its effect on the cross-validated
metrics is measured in ``models/README.md``.

Example::

    python -m tools.release                       # ~8 min on the 2-core CPU machine, 1 thread (60 bf16 epochs)
    python -m tools.release --epochs 2 --out runs/release-smoke --no_publish   # a quick check
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

import torch

from scripts import BUNDLE_ROOT
from scripts.atomic import atomic_write, write_text_atomic
from scripts.digest import sha256_file
from tools.processes import bundle_env
from tools.provenance import git_commit, library_versions, machine_info
from tools.reproduce import prepare_brain_growth

#: ``--store_dtype`` choices
STORE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def stored_state_dict(state: Mapping[str, Any], dtype: torch.dtype = torch.float16) -> Dict[str, Any]:
    """``state`` with its floating-point tensors stored as ``dtype``; everything else unchanged.

    Example::

        stored_state_dict({"w": torch.ones(2), "step": torch.tensor(3)})["w"].dtype  # torch.float16
    """
    if not dtype.is_floating_point:
        raise ValueError(f"store dtype must be a floating-point dtype, got {dtype}")
    out: Dict[str, Any] = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point():
            finite_max = torch.finfo(dtype).max
            if value.numel() and value.abs().max().item() > finite_max:
                raise ValueError(f"weight {key} exceeds the range of {dtype} ({finite_max}); publish with --store_dtype float32")
            value = value.to(dtype)
        out[key] = value
    return out


def max_rounding_error(state: Mapping[str, Any], stored: Mapping[str, Any]) -> float:
    """Largest absolute difference between the floating-point tensors of two state dicts."""
    errors = [(state[k].float() - stored[k].float()).abs().max().item() for k, v in state.items()
              if torch.is_tensor(v) and v.is_floating_point() and v.numel()]
    return max(errors, default=0.0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(BUNDLE_ROOT / "data" / "brain-growth"))
    p.add_argument("--source", default=None, help="brain_growth_alpha.zip (default: ../shared/data/brain-growth)")
    p.add_argument("--trimaps", default=None, help="trimap_brain.zip (default: ../shared/data/brain-growth)")
    p.add_argument("--out", default=str(BUNDLE_ROOT / "runs" / "release"), help="training folder (checkpoints)")
    p.add_argument("--epochs", type=int, default=None, help="default: train.yaml's")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training (1: reproducible timing)")
    p.add_argument("--store_dtype", choices=sorted(STORE_DTYPES), default="float16",
                   help="dtype of the published weights (float16: half the bytes; float32: the trained file as it is)")
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
    env = bundle_env(args.threads)
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
        trained = torch.load(weights, map_location="cpu", weights_only=True)
        stored = stored_state_dict(trained, STORE_DTYPES[args.store_dtype])
        atomic_write(target, lambda f: torch.save(stored, f))
        record.update(published=str(target.relative_to(BUNDLE_ROOT)), store_dtype=args.store_dtype,
                      published_sha256=sha256_file(target), published_bytes=target.stat().st_size,
                      max_rounding_error=max_rounding_error(trained, stored))
    write_text_atomic(out / "release.json", json.dumps(record, indent=2) + "\n")
    print(f"[release] {json.dumps({k: record[k] for k in ('sha256', 'bytes', 'published_sha256', 'published_bytes', 'wall_seconds', 'commit') if k in record})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
