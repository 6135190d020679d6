"""Shared test fixtures, paths and helpers: the tiny network, the tiny config overrides, servers.

Fixtures are used by name; the plain helpers (``free_port``, ``wait_until_serving``, ``smooth_image``, ``write_png_bomb``,
``bundle_env``, ``run_bundle``, ``cli_args``) are imported with ``from conftest import ...``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from scripts import BUNDLE_ROOT  # the bundle root is on sys.path through pytest.ini's pythonpath

SHARED = Path(os.environ.get("MEDICAL_MATTING_SHARED", BUNDLE_ROOT.parent / "shared"))
BRAIN_GROWTH_DIR = SHARED / "data" / "brain-growth"

# Threads: the suite's worker processes (run.sh: one per core) share the cores, and so do the
# processes their tests start (inherit these defaults unless a test sets its own). One thread each
# under two or more workers, two in a single process; a waiting OpenMP thread sleeps at once instead
# of spinning (the default spins, which costs the cores' other processes their time); the suite's
# time with and without these settings: docs/benchmarks.md, "The test suite".
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", "1" if _WORKERS > 1 else "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# pymatting (the classic baselines' reference) compiles its numba kernels at import, ~40 s in a fresh
# environment; the tests' images are tiny, so its functions run as plain Python (same arithmetic)
os.environ.setdefault("NUMBA_DISABLE_JIT", "1")

#: constructor arguments of the tiny MedicalMattingNet of the unit tests (a forward pass in milliseconds)
TINY_NET_ARGS: dict[str, Any] = dict(prob_filters=(4, 8, 8, 8), matting_filters=(4, 8, 8), implicit_hidden=8,
                                     num_samples=2, sample_seed=0)
#: the same network as config overrides (top-level keys of configs/train.yaml)
TINY_OVERRIDES: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v
                                  for k, v in TINY_NET_ARGS.items() if k != "sample_seed"}

#: the tiny network of the MONAI Label server tests, as the app's ``network_overrides`` (train.yaml's network_def)
TINY_APP_NETWORK: dict[str, Any] = {("num_samples" if k == "num_samples" else f"network_def#{k}"): v
                                    for k, v in TINY_OVERRIDES.items()}


def cli_args(overrides: Mapping[str, Any]) -> list[str]:
    """``{"prob_filters": [4, 8]}`` -> ``["--prob_filters", "[4, 8]"]`` (``monai.bundle run`` style)."""
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args


def bundle_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess that runs bundle code: the bundle root first on ``PYTHONPATH``."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(BUNDLE_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_bundle(run_id: str, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run RUN_ID ARGS...`` from the bundle root; output captured as text.

    Example::

        proc = run_bundle("training", "--config_file", "configs/train.yaml", *tiny_cli_args, OMP_NUM_THREADS="1")
        assert proc.returncode == 0, proc.stderr[-4000:]
    """
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, *args]
    return subprocess.run(cmd, cwd=str(BUNDLE_ROOT), env=bundle_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(proc: subprocess.Popen, url: str, timeout_s: float, log_tail: Callable[[], str],
                       name: str = "server") -> None:
    """Poll ``url`` until it answers 200; fail the test with the log's tail when the server exits or times out."""
    import requests

    deadline = time.time() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode}:\n{log_tail()}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.time() > deadline:
            pytest.fail(f"{name} did not answer {url} within {timeout_s} s:\n{log_tail()}")
        time.sleep(0.25)


def copy_bundle_code(dest: Path) -> Path:
    """A copy of the bundle's ``configs/`` and ``scripts/`` in ``dest`` (created; no caches, models or logs):
    a bundle a server test may change without touching the repository."""
    ignore = shutil.ignore_patterns("__pycache__", "model", "logs", "bin", "*.pyc")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(BUNDLE_ROOT / "configs", dest / "configs", ignore=ignore)
    shutil.copytree(BUNDLE_ROOT / "scripts", dest / "scripts", ignore=ignore)
    return dest


@contextlib.contextmanager
def tiny_app_server(bundle: Path, studies: Path, root: Path, network: Mapping[str, Any],
                    tmp: Path | None = None) -> Iterator[dict[str, Any]]:
    """``monailabel start_server`` on 127.0.0.1 with the bundle copy ``bundle``'s app, an untrained network
    of the app's ``network_overrides`` ``network`` and ``studies``; yields ``url``, ``port``, ``proc``, ``tail`` (the log's end), ``log_path``.
    ``tmp`` becomes the server's ``TMPDIR`` (uploads and results land there). MONAI Label's background
    scoring job at start-up is off: with untrained weights it can only fail, and it would load the app in
    one more process while the tests run (scoring is tested in tests/test_monailabel_activelearning.py).
    Stopped on exit."""
    from tools.processes import stop_process

    port = free_port()
    log_path = root / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MONAI_LABEL_SESSION_PATH": str(root / "sessions"),
           "PYTHONUNBUFFERED": "1", "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
           **({"TMPDIR": str(tmp)} if tmp is not None else {})}
    env.pop("MONAI_LABEL_AUTH_ENABLE", None)
    env.pop("MEDICAL_MATTING_CONFIG_SNAPSHOT", None)
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(bundle / "scripts" / "monailabel_app"),
           "--studies", str(studies), "--conf", "models", "medical_matting", "--conf", "allow_untrained", "true",
           "--conf", "network_overrides", json.dumps(dict(network)), "--host", "127.0.0.1", "--port", str(port)]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=str(bundle), stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    def tail() -> str:
        log.flush()
        return log_path.read_text(errors="replace")[-4000:]

    try:
        wait_until_serving(proc, f"{url}/info/", 180, tail, "MONAI Label server")
        yield {"url": url, "port": port, "proc": proc, "tail": tail, "log_path": log_path}
    finally:
        stop_process(proc)
        log.close()


#: test files that take longest (their summed test time on the 2-core machines, ``--durations``), slowest
#: first. run.sh hands whole files to the two workers (``--dist loadfile --no-loadscope-reorder``) in
#: collection order, which this list leads: the long files start first and the short ones fill the
#: end, so that both workers finish together. Files not listed follow in their usual order.
SLOWEST_FILES = (
    "test_workflow.py", "test_bounds.py", "test_distributed.py", "test_monailabel_security.py",
    "test_bundle_workflows.py", "test_crossval_jobs.py", "test_monailabel_activelearning.py",
    "test_inference_workflow.py", "test_monailabel_serving.py", "test_monailabel_bounds.py",
    "test_prepare_data.py", "test_monailabel_server.py", "test_benchmarks.py", "test_mlflow_server.py",
    "test_export.py", "test_import_own_data.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slowest files first (``SLOWEST_FILES``); a stable sort keeps the order inside every file."""
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def bundle_root() -> Path:
    return BUNDLE_ROOT


@pytest.fixture(scope="session")
def brain_growth_dir() -> Path:
    if not (BRAIN_GROWTH_DIR / "brain_growth_alpha.zip").is_file():
        pytest.skip(f"shared Brain-growth data not found at {BRAIN_GROWTH_DIR} (../shared is absent)")
    return BRAIN_GROWTH_DIR


@pytest.fixture
def make_tiny_net() -> Callable[..., Any]:
    """``make_tiny_net(**overrides)``: the tiny ``MedicalMattingNet`` (weights seeded with 0), arguments overridable.

    Example::

        net = make_tiny_net(num_samples=4, test_time_flips="hv").eval()
    """
    import torch

    from scripts.networks import MedicalMattingNet

    def make(**overrides: Any) -> MedicalMattingNet:
        torch.manual_seed(0)
        return MedicalMattingNet(**{**TINY_NET_ARGS, **overrides})

    return make


@pytest.fixture
def tiny_net(make_tiny_net) -> Any:
    """The tiny ``MedicalMattingNet`` with the default tiny arguments, in eval mode."""
    return make_tiny_net().eval()


@pytest.fixture(scope="session")
def tiny_overrides() -> dict[str, Any]:
    """The tiny network as config overrides (``{"prob_filters": [4, 8, 8, 8], ...}``); a fresh copy per session."""
    return json.loads(json.dumps(TINY_OVERRIDES))


@pytest.fixture(scope="session")
def tiny_cli_args(tiny_overrides) -> list[str]:
    """The tiny network as ``monai.bundle run`` arguments (``["--prob_filters", "[4, 8, 8, 8]", ...]``)."""
    return cli_args(tiny_overrides)


# --- TorchScript export of a tiny network (tests/test_export.py, tests/test_model_zoo_checks.py) ---------
#: config and top-level overrides of the export tests: the one place to repoint when the configs change
EXPORT_CONFIG = BUNDLE_ROOT / "configs" / "train.yaml"
TINY_NETWORK = {**TINY_OVERRIDES, "latent_dim": 3, "num_samples": 4, "sample_seed": 5, "network_def#test_time_flips": "h"}


def export_tiny_torchscript(directory: Path, **overrides):
    """Write a tiny network's checkpoint into ``directory`` and export it with ``monai.bundle ckpt_export``.

    Returns ``(path of the .ts file, the eager network in eval mode with the same weights)``.
    """
    import torch
    from monai.bundle import ConfigParser, ckpt_export

    overrides = {**TINY_NETWORK, **overrides}
    parser = ConfigParser()
    parser.read_config(str(EXPORT_CONFIG))
    parser.update(overrides)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():  # non-zero offsets so the learned deformable sampling is exercised
        for module in net.modules():
            if getattr(module, "offset_conv", None) is not None:
                module.offset_conv.weight.normal_(0, 0.1)
    ckpt, ts = Path(directory) / "model.pt", Path(directory) / "model.ts"
    torch.save(net.state_dict(), ckpt)
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(ckpt),
                meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"), config_file=str(EXPORT_CONFIG),
                bundle_root=str(BUNDLE_ROOT), **overrides)
    return ts, net.eval()


@pytest.fixture(scope="session")
def tiny_torchscript(tmp_path_factory):
    """``(model.ts path, eager network)`` of :func:`export_tiny_torchscript`, exported once per session."""
    return export_tiny_torchscript(tmp_path_factory.mktemp("export"))


@pytest.fixture
def dead_pid() -> int:
    """The id of a process that has exited (its temporaries count as stale), as left by a killed run."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- large and malformed images (tests/test_bounds.py, tests/test_monailabel_bounds.py) ----------------
def smooth_image(h: int, w: int):
    """uint8 (h, w) grey image of smooth waves: compresses well as PNG, so large test images stay small."""
    import numpy as np

    yy, xx = np.mgrid[0:h, 0:w]
    return (128 + 100 * np.sin(yy / (0.08 * h)) * np.cos(xx / (0.05 * w))).astype(np.uint8)


def write_png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid grey 8-bit PNG of zeros (a small file, a huge image), written without holding the image."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp, rows = zlib.compressobj(9), bytes(width + 1) * 64
    body = b"".join(comp.compress(rows) for _ in range(height // 64)) + comp.compress(bytes(width + 1) * (height % 64))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body + comp.flush()) + chunk(b"IEND", b""))
    return path
