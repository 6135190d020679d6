"""Memory and time bounds of the MONAI Label app, against one real server (docs/reliability.md).

One server for the module, on a copy of the bundle, with the tiny network untrained and a studies
folder holding a small image, a 4000 x 4000 image, a 30000 x 30000 PNG bomb and a truncated PNG:

- too large images (by their header) are refused with 413 and the reason, uploaded or in the
  datastore; unreadable ones with 415; never 500, and the server keeps serving;
- while a 4000 x 4000 inference runs, ``/info/`` and a small inference answer within seconds
  (inference runs in the thread pool, bounded, with a slot kept for small images).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from tools.processes import stop_process

pytest.importorskip("monailabel", reason="monailabel is not installed (pip install --no-deps -r requirements-nodeps.txt)")
requests = pytest.importorskip("requests")
from PIL import Image  # noqa: E402

from conftest import BUNDLE_ROOT, free_port, smooth_image, wait_until_serving, write_png_bomb  # noqa: E402

TINY = {"network_def#prob_filters": [4, 8, 8, 8], "network_def#matting_filters": [4, 8, 8],
        "network_def#implicit_hidden": 8, "network_def#norm": None, "num_samples": 2}
LARGE = 4000
#: seconds a small request may wait while a large one runs
QUICK_S = 5.0

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlbounds")
    bundle = root / "bundle"
    ignore = shutil.ignore_patterns("__pycache__", "model", "logs", "bin", "*.pyc")
    shutil.copytree(BUNDLE_ROOT / "configs", bundle / "configs", ignore=ignore)
    shutil.copytree(BUNDLE_ROOT / "scripts", bundle / "scripts", ignore=ignore)
    studies = root / "studies"
    studies.mkdir()
    Image.fromarray(smooth_image(64, 64)).save(studies / "small.png")
    Image.fromarray(smooth_image(LARGE, LARGE)).save(studies / "large.png")
    write_png_bomb(studies / "bomb.png", 30000, 30000)
    (studies / "broken.png").write_bytes((studies / "small.png").read_bytes()[:70])
    port = free_port()
    log_path = root / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MONAI_LABEL_SESSION_PATH": str(root / "sessions"),
           "PYTHONUNBUFFERED": "1"}
    env.pop("MONAI_LABEL_AUTH_ENABLE", None)
    env.pop("MEDICAL_MATTING_CONFIG_SNAPSHOT", None)
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(bundle / "scripts" / "monailabel_app"),
           "--studies", str(studies), "--conf", "models", "medical_matting", "--conf", "allow_untrained", "true",
           "--conf", "network_overrides", json.dumps(TINY), "--host", "127.0.0.1", "--port", str(port)]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=str(bundle), stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    def tail() -> str:
        log.flush()
        return log_path.read_text(errors="replace")[-4000:]

    try:
        wait_until_serving(proc, f"{url}/info/", 180, tail, "MONAI Label server")
        yield {"url": url, "studies": studies, "proc": proc, "tail": tail}
    finally:
        stop_process(proc)
        log.close()


def _infer(server, image: str = "", files=None, timeout: float = 60):
    query = f"?image={image}&output=json" if image else "?output=json"
    return requests.post(f"{server['url']}/infer/medical_matting{query}", files=files, timeout=timeout)


def _upload(name: str, content: bytes):
    return {"file": (name, content, "application/octet-stream")}


def test_too_large_images_get_413_with_the_reason(server, tmp_path):
    res = _infer(server, "bomb")
    assert res.status_code == 413 and "decompression bomb" in res.json()["detail"], res.text
    bomb = write_png_bomb(tmp_path / "x.png", 30000, 30000).read_bytes()
    res = _infer(server, files=_upload("x.png", bomb))
    assert res.status_code == 413 and "decompression bomb" in res.json()["detail"], res.text
    big = write_png_bomb(tmp_path / "big.png", 9000, 9000).read_bytes()  # Pillow opens it; our limit refuses
    res = _infer(server, files=_upload("big.png", big))
    detail = res.json()["detail"]
    assert res.status_code == 413 and "9000 x 9000 pixels" in detail and "above the maximum" in detail, res.text
    assert str(tmp_path) not in detail and "/tmp" not in detail  # no server paths in answers
    res = requests.put(f"{server['url']}/datastore/image", params={"image": "big2"}, files=_upload("big2.png", big),
                       timeout=60)
    assert res.status_code == 413, res.text
    assert not (server["studies"] / "big2.png").exists()


def test_unreadable_images_get_415_with_the_reason_never_500(server):
    small = (server["studies"] / "small.png").read_bytes()
    for name, content in [("t.png", small[:70]), ("g.png", b"garbage" * 20), ("e.png", b""),
                          ("n.nii.gz", b"\x1f\x8b not really gzip")]:
        res = _infer(server, files=_upload(name, content))
        assert res.status_code == 415 and res.json()["detail"], (name, res.status_code, res.text)
    res = _infer(server, "broken")  # a truncated study in the datastore
    assert res.status_code == 415 and "cannot be read" in res.json()["detail"], res.text
    assert _infer(server, "small").status_code == 200  # still serving


def test_a_large_inference_does_not_stall_other_requests(server):
    result = {}

    def large():
        start = time.perf_counter()
        result["response"] = _infer(server, "large", timeout=580)
        result["seconds"] = time.perf_counter() - start

    worker = threading.Thread(target=large)
    worker.start()
    time.sleep(3.0)  # the large inference is running
    assert worker.is_alive(), "the large inference ended too early to test concurrency"
    waits = []
    for _ in range(2):
        start = time.perf_counter()
        assert requests.get(f"{server['url']}/info/", timeout=60).status_code == 200
        waits.append(("info", time.perf_counter() - start))
        start = time.perf_counter()
        res = _infer(server, "small", timeout=60)
        assert res.status_code == 200, res.text
        waits.append(("small infer", time.perf_counter() - start))
    still_running = worker.is_alive()
    worker.join(timeout=580)
    assert all(seconds < QUICK_S for _, seconds in waits), waits
    assert still_running, f"the large inference ended before the small requests ({result.get('seconds')} s)"
    res = result["response"]
    assert res.status_code == 200, res.text
    assert res.json()["shape"] == [LARGE, LARGE]
    print(f"large inference {result['seconds']:.0f} s; small requests meanwhile: {waits}")
