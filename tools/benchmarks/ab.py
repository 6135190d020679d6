"""``python -m tools.benchmarks.ab``: the one A/B (/C...) timing of the training step and ``predict``.

Each variant is a git ref (``.`` = this working tree), optional environment assignments and
``tools.benchmarks.training_speed`` arguments, written as one string::

    python -m tools.benchmarks.ab --rounds 3 --out runs/ab \\
        --variant "before=77fcd98" \\
        --variant "allocator=77fcd98 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824" \\
        --variant "head=." \\
        --variant "head_fp32=. --set cpu_bf16=false" \\
        --variant "small=. --set prob_filters=[16,32,64,96] --set network_def#latent_filters=[8,16,32,48]"

Every run is its own process (settings that act on the whole process, such as the allocator or the
thread count, cannot be toggled inside one), with ``--threads`` threads; round ``r`` runs every
variant once, in the given order on even rounds and reversed on odd ones, so that a drift of the
machine's speed hits all variants alike. A commit other than ``.`` runs in a temporary ``git
worktree`` (removed at the end). Writes ``OUT/<variant>_<round>.json`` (the training_speed result)
and ``OUT/summary.json``: per variant the per-round medians of the step and ``predict`` wall time
and their ratios to the first variant (per round and the median over rounds), the load averages
and the CPU. Run it on an otherwise idle machine and record the load average beside the numbers.

Hand-written: no library runs interleaved A/B timings of commits and process settings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts import BUNDLE_ROOT
from scripts.atomic import write_text_atomic

__all__ = ["Variant", "parse_variant", "round_order", "summarize", "main"]

#: training_speed arguments of every run: a short timing without the FLOP count and the reference kernels
BASE_ARGS = ("--iterations", "12", "--warmup", "3", "--skip_flops", "--inference_runs", "10",
             "--reference_runs", "0", "--augment_images", "0")
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Variant:
    """One side of the comparison.

    Args:
        name: file-name-safe label (``OUT/<name>_<round>.json``).
        ref: a git ref, or ``.`` for the working tree as it is.
        env: environment assignments for the run's process.
        args: ``tools.benchmarks.training_speed`` arguments.
    """

    name: str
    ref: str = "."
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


def parse_variant(text: str) -> Variant:
    """``"NAME=REF [VAR=VALUE ...] [training_speed args ...]"`` -> :class:`Variant`.

    Example::

        parse_variant("fp32=. OMP_PROC_BIND=close --set cpu_bf16=false")
        # Variant(name='fp32', ref='.', env={'OMP_PROC_BIND': 'close'}, args=('--set', 'cpu_bf16=false'))
    """
    head, _, rest = text.strip().partition("=")
    tokens = shlex.split(rest)
    if not _NAME.match(head) or not tokens:
        raise ValueError(f"variant {text!r}: write it as NAME=REF [VAR=VALUE ...] [training_speed arguments]")
    ref, env, args = tokens[0], {}, []
    for token in tokens[1:]:
        if not args and _ENV.match(token):
            key, _, value = token.partition("=")
            env[key] = value
        else:
            args.append(token)
    return Variant(head, ref, env, tuple(args))


def round_order(variants: Sequence[Variant], round_index: int) -> list[Variant]:
    """The variants in the given order on even rounds, reversed on odd ones."""
    return list(variants) if round_index % 2 == 0 else list(reversed(variants))


def _ratio(values: Sequence[float], reference: Sequence[float]) -> list[float]:
    return [round(x / y, 3) for x, y in zip(values, reference)]


def summarize(runs: dict[str, list[dict[str, Any]]], variants: Sequence[Variant], threads: int) -> dict[str, Any]:
    """Per-round medians and their ratios to the first variant, from the training_speed results."""
    summary: dict[str, Any] = {"variants": {}, "threads": threads, "rounds": len(runs[variants[0].name])}
    for v in variants:
        results = runs[v.name]
        summary["variants"][v.name] = {
            "ref": v.ref, "env": v.env, "args": list(v.args),
            "step_wall_median_s": [r["training"]["step_wall_median_s"] for r in results],
            "inference_wall_median_s": [r["inference"]["wall_median_s"] for r in results],
            "load_average": [r["machine"].get("load_average") for r in results],
            "cpu": results[0]["machine"].get("cpu"),
        }
    first = summary["variants"][variants[0].name]
    for v in variants[1:]:
        s = summary["variants"][v.name]
        for key, label in (("step_wall_median_s", "step"), ("inference_wall_median_s", "inference")):
            s[f"{label}_ratio"] = _ratio(s[key], first[key])
            s[f"{label}_ratio_median"] = statistics.median(s[f"{label}_ratio"])
    return summary


def _checkouts(variants: Sequence[Variant], tmp: Path) -> tuple[dict[str, Path], Callable[[], None]]:
    """A folder per ref: the bundle root for ``.``, a detached worktree for any other ref."""
    folders: dict[str, Path] = {}
    added: list[Path] = []
    for v in variants:
        if v.ref in folders:
            continue
        if v.ref == ".":
            folders[v.ref] = BUNDLE_ROOT
            continue
        sha = subprocess.run(["git", "rev-parse", "--short", v.ref], cwd=BUNDLE_ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
        folder = tmp / sha
        subprocess.run(["git", "worktree", "add", "--detach", str(folder), sha], cwd=BUNDLE_ROOT, check=True,
                       capture_output=True)
        folders[v.ref] = folder
        added.append(folder)

    def remove() -> None:
        for folder in added:
            subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=BUNDLE_ROOT, capture_output=True)

    return folders, remove


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m tools.benchmarks.ab", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=REF [VAR=VALUE] [ARGS]",
                        help="one side of the comparison (repeat; the first is the reference)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads of every run (OMP_NUM_THREADS and --threads)")
    parser.add_argument("--out", type=Path, default=BUNDLE_ROOT / "runs" / "ab")
    parser.add_argument("--base_args", default=shlex.join(BASE_ARGS), help="training_speed arguments of every run")
    args = parser.parse_args(argv)
    variants = [parse_variant(text) for text in args.variant]
    names = [v.name for v in variants]
    if len(variants) < 2 or len(set(names)) != len(names):
        parser.error(f"give at least two variants with distinct names, got {names}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    python = os.path.abspath(sys.executable)  # not resolved: a virtual environment's link must stay a link
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        folders, remove = _checkouts(variants, Path(tmp))
        try:
            for r in range(args.rounds):
                for v in round_order(variants, r):
                    path = out / f"{v.name}_{r + 1}.json"
                    cmd = [python, "-m", "tools.benchmarks.training_speed", *shlex.split(args.base_args),
                           "--threads", str(args.threads), *v.args, "--json", str(path)]
                    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), **v.env}
                    env["PYTHONPATH"] = str(folders[v.ref])
                    print(f"[ab] round {r + 1}/{args.rounds} {v.name}", flush=True)
                    subprocess.run(cmd, cwd=folders[v.ref], env=env, check=True, stdout=subprocess.DEVNULL)
                    runs[v.name].append(json.loads(path.read_text()))
        finally:
            remove()
    summary = summarize(runs, variants, args.threads)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    for name, s in summary["variants"].items():
        print(f"{name:<16} step {s['step_wall_median_s']} predict {s['inference_wall_median_s']}"
              f" ratios {s.get('step_ratio_median', 1.0)} / {s.get('inference_ratio_median', 1.0)}")
    return summary


if __name__ == "__main__":
    main()
