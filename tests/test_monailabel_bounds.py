"""Memory and time bounds of the MONAI Label app, against one real server (docs/reliability.md).

One server for the module, on a copy of the bundle, with the tiny network untrained and a studies
folder holding a small image, a 4000 x 4000 image, a 30000 x 30000 PNG bomb and a truncated PNG:

- too large images (by their header) are refused with 413 and the reason, uploaded or in the
  datastore; unreadable ones with 415; never 500, and the server keeps serving;
- while a 4000 x 4000 inference runs, ``/info/`` and a small inference answer within seconds
  (inference runs in the thread pool, bounded, with a slot kept for small images);
- a volume inference whose client disconnects stops between slices, frees its slot for the next
  large request and leaves no file behind;
- background batch inference (without ``run_sync=true``) is refused with 400.
"""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="monailabel is not installed (pip install --no-deps -r requirements-nodeps.txt)")
requests = pytest.importorskip("requests")
from PIL import Image  # noqa: E402

from conftest import copy_bundle_code, smooth_image, tiny_app_server, write_png_bomb  # noqa: E402

TINY = {"network_def#prob_filters": [4, 8, 8, 8], "network_def#matting_filters": [4, 8, 8],
        "network_def#implicit_hidden": 8, "network_def#norm": None, "num_samples": 2}
LARGE = 4000
#: seconds a small request may wait while a large one runs
QUICK_S = 5.0
#: a volume whose inference takes far longer than the test waits before disconnecting: 512 x 512 x 60
DEEP = (512, 512, 60)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlbounds")
    bundle = copy_bundle_code(root / "bundle")
    studies = root / "studies"
    studies.mkdir()
    Image.fromarray(smooth_image(64, 64)).save(studies / "small.png")
    Image.fromarray(smooth_image(LARGE, LARGE)).save(studies / "large.png")
    write_png_bomb(studies / "bomb.png", 30000, 30000)
    (studies / "broken.png").write_bytes((studies / "small.png").read_bytes()[:70])
    import nibabel as nib

    plane = smooth_image(DEEP[0], DEEP[1])
    nib.save(nib.Nifti1Image(np.repeat(plane[:, :, None], DEEP[2], axis=2), np.eye(4)), str(studies / "deep.nii.gz"))
    nib.save(nib.Nifti1Image(np.repeat(plane[::2, ::2, None], 5, axis=2), np.eye(4)), str(studies / "mid.nii.gz"))
    (root / "tmp").mkdir()
    with tiny_app_server(bundle, studies, root, TINY, tmp=root / "tmp") as running:
        yield {**running, "studies": studies, "tmp": root / "tmp"}


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


def test_an_abandoned_volume_inference_stops_between_slices_and_frees_its_slot(server):
    """The client of a volume request disconnects: the work stops at the next batch of slices, the
    large slot is free for the next volume at once, and no result file is left."""
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=30) as client:
        client.sendall(b"POST /infer/medical_matting?image=deep&output=json HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        deadline = time.time() + 60
        while not list(server["tmp"].glob("medical_matting_result_*")):  # the volume's map is being written
            assert time.time() < deadline, server["tail"]()
            time.sleep(0.2)
        time.sleep(2.0)
    start = time.perf_counter()
    res = _infer(server, "mid", timeout=120)  # large work too (256 x 256 x 5): needs the large slot
    waited = time.perf_counter() - start
    assert res.status_code == 200 and res.json()["shape"] == [256, 256, 5], res.text
    log = server["log_path"].read_text(errors="replace")
    stopped = re.search(r"inference cancelled, the client disconnected: .*stopped after (\d+) of (\d+) slices", log)
    assert stopped, server["tail"]()
    done, total = int(stopped.group(1)), int(stopped.group(2))
    assert total == DEEP[2] and done < total / 2, stopped.group(0)
    deadline = time.time() + 10  # the answered request's file is removed by a task after its answer
    while list(server["tmp"].glob("medical_matting_result_*")) and time.time() < deadline:
        time.sleep(0.2)
    assert not list(server["tmp"].glob("medical_matting_result_*")), list(server["tmp"].iterdir())
    print(f"cancelled after {done} of {total} slices; the next volume answered in {waited:.1f} s")
    assert waited < 6 * QUICK_S, waited


def test_background_batch_inference_is_refused_and_points_to_run_sync(server):
    res = requests.post(f"{server['url']}/batch/infer/medical_matting", timeout=60)
    assert res.status_code == 400 and "run_sync=true" in res.json()["detail"], res.text
    res = requests.post(f"{server['url']}/batch/infer/medical_matting?run_sync=false", timeout=60)
    assert res.status_code == 400, res.text
    labels = server["studies"] / "labels" / "original"
    assert not labels.exists() or not any(labels.iterdir())
