"""Serving under load, against one real MONAI Label server (docs/reliability.md, "Concurrent requests", "Volumes").

One server for the module, on 127.0.0.1, on a copy of the bundle, with the tiny network with
instance normalisation (whose band decoding collects whole-grid statistics), untrained and seeded,
the default two inference slots, and its own temporary folder (``TMPDIR``):

- mixed-size requests sent at once each get the bytes of their solo answer (large ones are decoded
  in bands of rows while small ones run);
- the same content as 8-bit PNG, 16-bit PNG, 16-bit TIFF and RGB PNG gets the same matte;
- a NIfTI volume is answered slice by slice with the input's geometry, its slices equal the 2-D
  answers, and the server's peak memory does not grow with the depth;
- while volumes run, a small request gets a slot within seconds;
- refused uploads leave nothing in the temporary folder and no answer names a server path;
- synchronous batch inference runs off the event loop and never replaces a final label unless asked.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import io
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="monailabel is not installed (pip install --no-deps -r requirements-nodeps.txt)")
requests = pytest.importorskip("requests")
nib = pytest.importorskip("nibabel")
psutil = pytest.importorskip("psutil")
from PIL import Image  # noqa: E402

from conftest import TINY_APP_NETWORK, copy_bundle_code, smooth_image, tiny_app_server  # noqa: E402

TINY = {**TINY_APP_NETWORK, "network_def#norm": "INSTANCE"}
#: the served copy's max_internal_size: larger outputs are decoded in bands of rows, larger work takes the large slot
INTERNAL = 128
#: seconds a small request may wait for a slot while volumes run
QUICK_S = 5.0

pytestmark = pytest.mark.timeout(600)


def _nifti_bytes(array: np.ndarray, affine=np.eye(4)) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, affine).to_bytes())


def _from_nifti_bytes(content: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(content))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlserving")
    bundle = copy_bundle_code(root / "bundle")
    # this copy's inference settings: one view and a small internal grid, so large work is cheap to make
    config = (bundle / "configs" / "inference.yaml").read_text()
    config = re.sub(r"(?m)^test_time_flips: .*$", "test_time_flips: none", config)
    config = re.sub(r"(?m)^max_internal_size: .*$", f"max_internal_size: {INTERNAL}", config)
    (bundle / "configs" / "inference.yaml").write_text(config)
    studies, tmp = root / "studies", root / "tmp"
    studies.mkdir()
    tmp.mkdir()
    rng = np.random.default_rng(0)
    large = smooth_image(300, 320)
    nib.save(nib.Nifti1Image(large.astype(np.float32) / 255.0, np.eye(4)), str(studies / "large.nii.gz"))
    for i in range(3):
        small = np.clip(smooth_image(64, 64).astype(np.float32) / 255.0 + rng.normal(0, 0.05, (64, 64)), 0, 1)
        nib.save(nib.Nifti1Image(small.astype(np.float32), np.eye(4)), str(studies / f"small{i}.nii.gz"))
    Image.fromarray(smooth_image(64, 64)).save(studies / "tiny.png")
    with tiny_app_server(bundle, studies, root, TINY, tmp=tmp) as running:
        yield {**running, "studies": studies, "tmp": tmp, "root": root}


def _infer(server, image: str = "", files=None, output: str = "image", params=None, timeout: float = 300):
    query = f"?image={image}&output={output}" if image else f"?output={output}"
    return requests.post(f"{server['url']}/infer/medical_matting{query}", files=files,
                         data={"params": json.dumps(params or {})}, timeout=timeout)


def _upload(name: str, content: bytes):
    return {"file": (name, content, "application/octet-stream")}


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _map(response) -> np.ndarray:
    assert response.status_code == 200, response.text[:500]
    return np.asarray(_from_nifti_bytes(response.content).dataobj)


# ----------------------------------------------------------------------------------- memory (first: a fresh heap)
def _peak_rss_during(server, call) -> tuple[float, object]:
    """(peak RSS of the server process in MB while ``call()`` runs, what ``call`` returned)."""
    process = psutil.Process(server["proc"].pid)
    peak, done = [process.memory_info().rss], threading.Event()

    def sample():
        while not done.is_set():
            peak.append(process.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = call()
    finally:
        done.set()
        sampler.join()
    return max(peak) / 2**20, result


def test_peak_memory_of_a_volume_does_not_grow_with_its_depth(server, tmp_path):
    """A 512 x 512 x 24 volume costs no more peak memory than a 512 x 512 x 3 one (the old server held
    every slice as float32, and batches of 8 full slices)."""
    peaks = {}
    for depth in (3, 24):
        volume = np.stack([smooth_image(512, 512)] * depth, axis=-1)
        content = _nifti_bytes(volume)
        peak, res = _peak_rss_during(server, lambda: _infer(server, files=_upload(f"d{depth}.nii.gz", content),
                                                            output="json"))
        assert res.status_code == 200, res.text[:300]
        assert res.json()["shape"] == [512, 512, depth]
        peaks[depth] = peak
    assert peaks[24] < peaks[3] + 64, peaks  # 21 more slices of float32 maps alone would be +44 MB, input +22 MB
    print(f"server peak RSS: {peaks}")


# ----------------------------------------------------------------------------------- concurrency
def test_concurrent_mixed_size_requests_get_their_solo_answers(server):
    names = ["large", "small0", "small1", "small2"]
    solo = {name: _map(_infer(server, name)) for name in names}
    assert solo["large"].shape == (300, 320)
    requests_at_once = ["large", "small0", "large", "small1", "small2", "small0", "small1", "small2"]
    with concurrent.futures.ThreadPoolExecutor(len(requests_at_once)) as pool:
        answers = list(pool.map(lambda name: (name, _infer(server, name)), requests_at_once))
    codes = [(name, r.status_code, r.text[:200] if r.status_code != 200 else "") for name, r in answers]
    assert all(code == 200 for _, code, _ in codes), codes
    for name, response in answers:
        assert np.array_equal(_map(response), solo[name]), f"{name}: differs from its solo answer"


# ----------------------------------------------------------------------------------- input types
def test_the_same_content_in_every_raster_type_gets_the_same_matte(server):
    grey = smooth_image(48, 56)
    variants = {
        "grey8.png": _png(grey),
        "grey16.png": _png(grey.astype(np.uint16) * 257),
        "rgb8.png": _png(np.repeat(grey[..., None], 3, axis=-1)),
    }
    buf = io.BytesIO()
    Image.fromarray(grey.astype(np.uint16) * 257).save(buf, format="TIFF")
    variants["grey16.tif"] = buf.getvalue()
    answers = {}
    for name, content in variants.items():
        res = _infer(server, files=_upload(name, content), output="json")
        assert res.status_code == 200, (name, res.text[:300])
        answers[name] = res.json()
    reference = answers["grey8.png"]["alpha"]
    for name, answer in answers.items():
        for key in ("mean", "min", "max"):
            assert abs(answer["alpha"][key] - reference[key]) < 1e-5, (name, answer["alpha"], reference)
    assert answers["grey16.png"]["image_scaling"] == "uint16 range [0, 65535]"


# ----------------------------------------------------------------------------------- volumes
def test_a_volume_is_answered_slice_by_slice_with_its_geometry(server):
    affine = np.array([[0.0, -0.8, 0.0, 12.5], [1.2, 0.0, 0.0, -30.0], [0.0, 0.0, 2.5, 4.0], [0, 0, 0, 1]])
    volume = np.stack([smooth_image(40, 36) // (1 + k % 3) for k in range(7)], axis=-1).astype(np.uint8)
    res = _infer(server, files=_upload("vol.nii.gz", _nifti_bytes(volume, affine)))
    answer = _from_nifti_bytes(res.content) if res.status_code == 200 else None
    assert answer is not None, res.text[:300]
    assert answer.shape == volume.shape and np.allclose(answer.affine, affine)
    for k in (0, 4, 6):
        plane = _map(_infer(server, files=_upload(f"s{k}.nii.gz", _nifti_bytes(volume[:, :, k].copy(), affine))))
        np.testing.assert_allclose(np.asarray(answer.dataobj)[:, :, k], plane, atol=1e-5)  # batched slices: float rounding
    series = _infer(server, files=_upload("series.nii.gz", _nifti_bytes(np.zeros((8, 8, 4, 3), np.uint8))))
    assert series.status_code == 415 and "not one 3-D volume" in series.json()["detail"], series.text


def test_a_small_request_gets_a_slot_within_seconds_while_volumes_run(server):
    volume = _nifti_bytes(np.stack([smooth_image(384, 384)] * 40, axis=-1))
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        volumes = [pool.submit(_infer, server, "", _upload(f"v{i}.nii.gz", volume), "json") for i in range(2)]
        time.sleep(2.0)
        assert not all(f.done() for f in volumes), "the volumes ended too early to test the slots"
        waits = []
        for name in ("small0", "tiny"):
            start = time.perf_counter()
            res = _infer(server, name, output="json", timeout=60)
            waits.append(time.perf_counter() - start)
            assert res.status_code == 200, res.text[:300]
        running = not all(f.done() for f in volumes)
        results = [f.result() for f in volumes]
    assert all(r.status_code == 200 for r in results), [r.text[:200] for r in results]
    assert running, f"the volumes ended before the small requests ({time.perf_counter() - started:.0f} s)"
    assert max(waits) < QUICK_S, waits


# ----------------------------------------------------------------------------------- uploads and batches
def _leftovers(server) -> list[str]:
    return sorted(p.name for p in server["tmp"].iterdir() if not p.name.startswith("medical_matting_configs_"))


def _settled_leftovers(server) -> list[str]:
    """The temporary folder once earlier answers' results are removed (background tasks after each answer)."""
    deadline = time.time() + 10.0
    while any(n.startswith("medical_matting_") for n in _leftovers(server)) and time.time() < deadline:
        time.sleep(0.2)
    return _leftovers(server)


def test_refused_uploads_leave_nothing_behind_and_answers_name_no_server_path(server):
    before = _settled_leftovers(server)
    big = b"\x00" * (2 << 20)
    truncated = _png(smooth_image(64, 64))[:80]
    for files in (_upload("a.png", big), _upload("b.png", truncated), _upload("c.nii.gz", big)):
        res = _infer(server, files=files, output="json")
        detail = res.json().get("detail", "")
        assert res.status_code == 415, res.text[:300]
        assert str(server["root"]) not in detail and "/tmp" not in detail and "medical_matting_upload" not in detail
    res = requests.put(f"{server['url']}/datastore/image", params={"image": "bad"}, files=_upload("bad.png", truncated),
                       timeout=60)
    assert res.status_code == 415, res.text[:300]
    res = requests.put(f"{server['url']}/datastore/label", params={"image": "tiny", "tag": "final"},
                       files={"label": ("l.png", truncated, "application/octet-stream")}, timeout=60)
    assert res.status_code in (400, 415), res.text[:300]
    assert _infer(server, files=_upload("ok.png", _png(smooth_image(32, 32))), output="json").status_code == 200
    assert _settled_leftovers(server) == before


def test_sync_batch_inference_keeps_final_labels_and_the_event_loop_free(server):
    studies = server["studies"]
    human = np.zeros((64, 64), np.uint8)
    human[10:30, 10:40] = 255
    res = requests.put(f"{server['url']}/datastore/label", params={"image": "tiny", "tag": "final"},
                       files={"label": ("tiny.png", _png(human), "image/png")}, timeout=60)
    assert res.status_code == 200, res.text[:300]
    final = next((studies / "labels" / "final").glob("tiny.*"))
    kept = final.read_bytes()
    result, waits = {}, []

    def batch():
        result["response"] = requests.post(
            f"{server['url']}/batch/infer/medical_matting", params={"run_sync": "true", "images": "all"},
            json={"label_tag": "final", "device": "cpu", "max_workers": 1, "logging": "WARNING"}, timeout=580)

    worker = threading.Thread(target=batch)
    worker.start()
    time.sleep(1.0)
    while worker.is_alive() and len(waits) < 3:
        start = time.perf_counter()
        assert requests.get(f"{server['url']}/info/", timeout=60).status_code == 200
        waits.append(time.perf_counter() - start)
        time.sleep(0.5)
    worker.join(timeout=580)
    res = result["response"]
    assert res.status_code == 200, res.text[:500]
    answer = res.json()
    assert "overwrite_final" in answer["tiny"]["skipped"] and answer["tiny"]["label_tag"] == "final"
    assert final.read_bytes() == kept  # the human label is untouched
    written = [v for k, v in answer.items() if k != "tiny" and v]
    assert written and all(v.get("label_tag") == "final" for v in written), answer
    assert all(w < QUICK_S for w in waits), waits
