"""Load benchmark of the MONAI Label server: many concurrent inference requests, latency and memory.

Usage::

    OMP_NUM_THREADS=1 python -m tools.benchmarks.server_load --requests 200 --concurrency 8 \\
        --json server_load.json [--network tiny|default]

Starts the real server (``monailabel start_server``, 127.0.0.1 only) on a temporary studies folder
of ``--images`` 128 x 128 phantom PNGs (the training size), serving the **untrained** network
(``--conf allow_untrained true``): ``default`` is ``network_def`` of configs/train.yaml as it is,
``tiny`` the unit tests' tiny network. It sends ``--requests`` ``POST /infer/medical_matting``
requests (``output=json``) from ``--concurrency`` client threads, then stops the server. Reported:
failures (non-200 answers and client errors, with their status), latency p50 / p95 / max, the
request rate, and the server's peak RSS (``VmHWM`` of the server process, sampled until it
stops). Nothing is timed against a threshold: it is a measurement (docs/reliability.md, "Load").

Hand-written: the benchmark drives this app's own server; no load-testing tool is a dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

from tools import provenance
from tools.processes import stop_process

__all__ = ["NETWORKS", "run_load", "main"]

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
#: ``network_overrides`` of the server per ``--network``
NETWORKS: Dict[str, Dict[str, Any]] = {
    "default": {},
    "tiny": {"network_def#prob_filters": [4, 8, 8, 8], "network_def#matting_filters": [4, 8, 8],
             "network_def#implicit_hidden": 8, "num_samples": 2},
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status_kib(pid: int, key: str) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _percentile(values: List[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


def run_load(requests_total: int = 200, concurrency: int = 8, network: str = "default", images: int = 8,
             startup_timeout_s: float = 240.0, request_timeout_s: float = 120.0, workdir: Optional[Path] = None) -> Dict[str, Any]:
    """Start the server, send the requests, stop the server; the measurements as a dict."""
    import numpy as np
    import requests
    from PIL import Image

    from scripts.data.phantom import make_phantom_dataset

    root = Path(workdir or tempfile.mkdtemp(prefix="server_load_"))
    studies = root / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    ids = []
    for case, arrays in make_phantom_dataset(images, seed=3).items():
        Image.fromarray(np.asarray(arrays["image"])).save(studies / f"{case}.png")
        ids.append(case)
    port = _free_port()
    env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(root / "sessions"), "PYTHONUNBUFFERED": "1"}
    env.pop("MONAI_LABEL_AUTH_ENABLE", None)
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(BUNDLE_ROOT / "scripts" / "monailabel_app"),
           "--studies", str(studies), "--conf", "models", "medical_matting", "--conf", "allow_untrained", "true",
           "--host", "127.0.0.1", "--port", str(port)]
    if NETWORKS[network]:
        cmd += ["--conf", "network_overrides", json.dumps(NETWORKS[network])]
    log_path = root / "server.log"
    url = f"http://127.0.0.1:{port}"
    peak = {"kib": 0}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=str(BUNDLE_ROOT), stdout=log, stderr=subprocess.STDOUT, env=env)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set() and proc.poll() is None:
                peak["kib"] = max(peak["kib"], _status_kib(proc.pid, "VmHWM") or 0)
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            deadline = time.time() + startup_timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited with {proc.returncode}; log: {log_path}")
                try:
                    if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"the server did not answer within {startup_timeout_s} s; log: {log_path}")
                time.sleep(1.0)
            # one warm-up request (first model load), not counted
            requests.post(f"{url}/infer/medical_matting?image={ids[0]}&output=json", timeout=request_timeout_s)

            def one(i: int) -> Dict[str, Any]:
                start = time.perf_counter()
                try:
                    res = requests.post(f"{url}/infer/medical_matting?image={ids[i % len(ids)]}&output=json",
                                        timeout=request_timeout_s)
                    status: Any = res.status_code
                except requests.RequestException as e:
                    status = type(e).__name__
                return {"status": status, "seconds": time.perf_counter() - start}

            load_before = provenance.load_average()
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                results = list(pool.map(one, range(requests_total)))
            wall = time.perf_counter() - started
            load_after = provenance.load_average()
        finally:
            stop.set()
            stop_process(proc, timeout=30)
            sampler.join(timeout=5)
    ok = [r["seconds"] for r in results if r["status"] == 200]
    failures: Dict[str, int] = {}
    for r in results:
        if r["status"] != 200:
            failures[str(r["status"])] = failures.get(str(r["status"]), 0) + 1
    if workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "requests": requests_total, "concurrency": concurrency, "network": network, "image_size": [128, 128],
        "failures": sum(failures.values()), "failures_by_status": failures,
        "latency_s": {"p50": _percentile(ok, 0.5), "p95": _percentile(ok, 0.95), "max": max(ok) if ok else None,
                      "mean": statistics.fmean(ok) if ok else None},
        "wall_s": wall, "requests_per_s": requests_total / wall if wall else None,
        "server_peak_rss_mib": peak["kib"] / 1024.0,
        "load_average_before": load_before, "load_average_after": load_after,
        "machine": {**provenance.machine_info(), "commit": provenance.git_commit()},
        "command": " ".join(["python -m tools.benchmarks.server_load", *sys.argv[1:]]),
    }


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="inference requests in all (default 200)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--network", choices=sorted(NETWORKS), default="default", help="served network (default: default)")
    parser.add_argument("--images", type=int, default=8, help="128 x 128 study images (default 8)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    result = run_load(args.requests, args.concurrency, args.network, args.images)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
