"""The real MONAI Label server with the bundle's app (scripts/monailabel_app), on 127.0.0.1.

One server per module (``python -m monailabel.main start_server``, what the ``monailabel`` command
runs) with a temporary studies folder of phantom images (PNG, one of them not square, and a NIfTI
volume with a non-trivial affine), a tiny network (``network_overrides``) and a checkpoint written
here. The served mattes are compared with the same network run in this process, so shape,
orientation, scaling and the loaded weights are all checked. Skipped when monailabel is not
installed (CI installs it: requirements-nodeps.txt).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_APP_NETWORK, free_port, wait_until_serving
from tools.processes import stop_process
import torch

pytest.importorskip("monailabel", reason="monailabel is not installed (pip install --no-deps -r requirements-nodeps.txt)")
requests = pytest.importorskip("requests")
nib = pytest.importorskip("nibabel")
from PIL import Image  # noqa: E402

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
APP_DIR = BUNDLE_ROOT / "scripts" / "monailabel_app"
TINY = TINY_APP_NETWORK
STARTUP_TIMEOUT_S = 150
NIFTI_AFFINE = np.array([[0.0, -0.8, 0.0, 12.5], [1.2, 0.0, 0.0, -30.0], [0.0, 0.0, 2.5, 4.0], [0, 0, 0, 1]])

pytestmark = pytest.mark.timeout(420)


def _tiny_network() -> torch.nn.Module:
    """The tiny ``network_def`` of configs/train.yaml (the network the app serves from its checkpoint), built here independently of the app."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.yaml"))
    parser["bundle_root"] = str(BUNDLE_ROOT)
    parser.update(TINY)
    torch.manual_seed(123)
    return parser.get_parsed_content("network_def").eval()


def _predict(network: torch.nn.Module, image01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """alpha and uncertainty (H, W) of a (H, W) image in [0, 1]."""
    with torch.no_grad():
        out = network.predict(torch.from_numpy(image01.astype(np.float32))[None, None])
    return out["alpha"][0, 0].numpy(), out["uncertainty"][0, 0].numpy()


class Server:
    """A running ``monailabel start_server`` and what the tests need to talk to it.

    ``auto_scoring``: MONAI Label's background scoring jobs (at start-up, after each training and
    proposal) on or off; off where no test reads the scores, so that no extra process loads the app
    while the tests run.
    """

    def __init__(self, root: Path, auto_scoring: bool = True):
        from scripts.data.phantom import make_phantom_dataset

        self.root = root
        self.studies = root / "studies"
        self.studies.mkdir()
        cases = make_phantom_dataset(4, seed=3)
        self.images, self.alphas = {}, {}
        for i, (case, arrays) in enumerate(cases.items()):
            image = arrays["image"]
            alpha = arrays["alpha"]
            if i == 0:  # not square: a transposed result could not have the right shape
                image, alpha = image[:96], alpha[:96]
            Image.fromarray(image).save(self.studies / f"{case}.png")
            self.images[case], self.alphas[case] = image, alpha
        # a NIfTI volume: two slices, CT-like intensities (min-max scaling), oblique-ish affine
        first = next(iter(cases.values()))["image"].astype(np.float32)
        volume = np.stack([first, first[::-1, :]], axis=-1) * 8.0 - 1000.0
        nib.save(nib.Nifti1Image(volume, NIFTI_AFFINE), self.studies / "vol001.nii.gz")
        self.volume = volume

        self.network = _tiny_network()
        self.weights = root / "models" / "model.pt"
        self.weights.parent.mkdir()
        torch.save(self.network.state_dict(), self.weights)

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MONAI_LABEL_SESSION_PATH": str(root / "sessions"),
               "PYTHONUNBUFFERED": "1", "MONAI_LABEL_AUTO_UPDATE_SCORING": str(auto_scoring).lower()}
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR),
               "--studies", str(self.studies), "--conf", "models", "medical_matting",
               "--conf", "model_path", str(self.weights), "--conf", "network_overrides", json.dumps(TINY),
               "--conf", "train_dir", str(root / "train_runs"), "--conf", "allow_training", "true",
               "--host", "127.0.0.1", "--port", str(self.port)]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(BUNDLE_ROOT), stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def log_tail(self, n: int = 4000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def wait_ready(self) -> None:
        wait_until_serving(self.proc, f"{self.url}/info/", STARTUP_TIMEOUT_S, self.log_tail, "monailabel server")

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()

    def infer(self, image: str, params: dict | None = None, output: str = "image") -> requests.Response:
        return requests.post(f"{self.url}/infer/medical_matting", params={"image": image, "output": output},
                             data={"params": json.dumps(params or {})}, timeout=120)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # no test here reads the uncertainty scores (tests/test_monailabel_activelearning.py does)
    srv = Server(tmp_path_factory.mktemp("monailabel"), auto_scoring=False)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def _png(response) -> np.ndarray:
    assert response.status_code == 200, response.text[:500]
    with Image.open(io.BytesIO(response.content)) as img:
        assert img.format == "PNG" and img.mode == "L"
        return np.array(img)


def test_info_lists_the_model_and_its_weights(server):
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    model = info["models"]["medical_matting"]
    assert model["dimension"] == 2
    assert model["trained"] is True and model["weights_path"] == str(server.weights)
    assert "map_type" in model["config"]
    assert "medical_matting" in info["trainers"]
    assert info["datastore"]["total"] == 5  # 4 PNG + 1 NIfTI
    sample = requests.post(f"{server.url}/activelearning/random", json={}, timeout=30).json()  # "Next Sample"
    assert sample["id"] in {*server.images, "vol001"}


def test_infer_png_returns_the_networks_alpha_matte_with_the_input_geometry(server):
    for case, image in list(server.images.items())[:2]:
        served = _png(server.infer(case))
        assert served.shape == image.shape  # (96, 128) for the first case: no transpose
        alpha, _ = _predict(server.network, image / 255.0)
        expected = np.rint(alpha * 255.0)
        diff = np.abs(served.astype(np.float64) - expected)
        assert diff.max() <= 1 and diff.mean() < 0.05, (case, diff.max(), diff.mean())

    params = server.infer(next(iter(server.images)), output="json").json()
    assert params["map_type"] == "alpha" and params["trained"] is True
    assert params["weights"] == str(server.weights) and "warning" not in params
    assert params["shape"] == [96, 128] and params["image_scaling"] == "uint8 range [0, 255]"


def test_infer_uncertainty_and_mask_maps(server):
    case, image = next(iter(server.images.items()))
    alpha, uncertainty = _predict(server.network, image / 255.0)
    served_u = _png(server.infer(case, {"map_type": "uncertainty"}))
    assert served_u.shape == image.shape
    assert np.abs(served_u - np.rint(uncertainty * 255.0)).max() <= 1

    served_m = _png(server.infer(case, {"map_type": "mask", "mask_threshold": 0.5}))
    assert set(np.unique(served_m)) <= {0, 1}
    agree = (served_m == (alpha >= 0.5)).mean()
    assert agree > 0.99, agree


def test_infer_nifti_keeps_shape_and_affine(server):
    response = server.infer("vol001")
    assert response.status_code == 200, response.text[:500]
    path = server.root / "result.nii.gz"
    path.write_bytes(response.content)
    result = nib.load(str(path))
    assert result.shape == server.volume.shape
    np.testing.assert_allclose(result.affine, NIFTI_AFFINE, atol=1e-5)
    data = result.get_fdata()
    assert 0.0 <= data.min() and data.max() <= 1.0
    unit = (server.volume - server.volume.min()) / (server.volume.max() - server.volume.min())
    for k in range(server.volume.shape[-1]):
        alpha, _ = _predict(server.network, unit[..., k])
        assert np.abs(data[..., k] - alpha).max() < 2e-3

    params = server.infer("vol001", output="json").json()
    assert params["image_scaling"].startswith("min-max")


def test_missing_image_is_a_404_and_the_server_stays_up(server):
    response = server.infer("no_such_case")
    assert response.status_code == 404
    assert "no_such_case" in response.json()["detail"]
    response = server.infer(next(iter(server.images)), {"map_type": "bogus"})
    assert response.status_code == 400 and "bogus" in response.json()["detail"]
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200
    assert server.proc.poll() is None


def test_without_weights_inference_is_refused_and_a_new_checkpoint_is_picked_up(server):
    case, image = next(iter(server.images.items()))
    moved = server.weights.with_suffix(".moved")
    os.replace(server.weights, moved)
    try:
        response = server.infer(case)
        assert response.status_code == 409
        assert "NO TRAINED WEIGHTS" in response.json()["detail"] and str(server.weights) in response.json()["detail"]
        info = requests.get(f"{server.url}/info/", timeout=30).json()["models"]["medical_matting"]
        assert info["trained"] is False and "NO TRAINED WEIGHTS" in info["description"]
    finally:
        # a different checkpoint appears: the server must serve it without a restart
        other = _tiny_network()
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.05 * torch.randn_like(p))
        torch.save(other.state_dict(), server.weights)
    served = _png(server.infer(case))
    alpha, _ = _predict(other, image / 255.0)
    assert np.abs(served - np.rint(alpha * 255.0)).max() <= 1
    os.replace(moved, server.weights)  # back to the module's network
    served = _png(server.infer(case))
    alpha, _ = _predict(server.network, image / 255.0)
    assert np.abs(served - np.rint(alpha * 255.0)).max() <= 1


@pytest.mark.skipif(not (BUNDLE_ROOT / "configs" / "train.yaml").is_file(), reason="configs/train.yaml not present")
def test_training_on_labels_saved_through_the_server_publishes_the_model(server):
    before = server.weights.read_bytes()
    for case in list(server.images)[1:4]:  # same-size cases; the labels are the phantoms' alpha mattes
        buf = io.BytesIO()
        Image.fromarray(server.alphas[case]).save(buf, format="PNG")
        response = requests.put(f"{server.url}/datastore/label", params={"image": case, "tag": "final"},
                                files={"label": (f"{case}.png", buf.getvalue(), "image/png")}, timeout=60)
        assert response.status_code == 200, response.text[:500]

    # the default (asynchronous) mode, as viewers use it: MONAI Label runs the app's train task in a
    # background process that instantiates the app again
    response = requests.post(f"{server.url}/train/medical_matting", json={"epochs": 1, "num_folds": 3}, timeout=60)
    assert response.status_code == 200, response.text[-2000:]
    deadline = time.time() + 300
    while True:
        task = requests.get(f"{server.url}/train/", timeout=30).json()
        if task["status"] not in ("SUBMITTED", "RUNNING") or time.time() > deadline:
            break
        time.sleep(0.5)
    assert task["status"] == "DONE", (task, server.log_tail())
    stats = requests.get(f"{server.url}/info/", timeout=30).json()["train_stats"]["medical_matting"]
    assert stats["status"] == "published" and stats["cases"] == 3 and stats["epochs"] == 1, stats
    run_dir = Path(stats["run_dir"])
    datalist = json.loads((run_dir / "dataset" / "datalist.json").read_text())
    assert datalist["num_folds"] == 3 and len(datalist["training"]) == 3
    assert server.weights.read_bytes() != before  # the trained model was published
    state = torch.load(server.weights, map_location="cpu", weights_only=True)
    assert set(state) == set(server.network.state_dict())
    params = server.infer(list(server.images)[1], output="json").json()
    assert params["trained"] is True
    shutil.rmtree(run_dir, ignore_errors=True)
