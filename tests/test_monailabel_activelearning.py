"""Uncertainty-driven active learning on the real MONAI Label server, through ``MONAILabelClient``.

The server of ``tests/test_monailabel_server.py`` (phantom PNG studies and a NIfTI volume, a tiny
network whose weights are written here) in a module of its own: the scores are compared with the
same network run in this process, studies are labelled one by one through the client, and the
strategy must propose the unlabeled study with the largest uncertainty each time.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="monailabel is not installed (pip install --no-deps -r requirements-nodeps.txt)")
requests = pytest.importorskip("requests")
from PIL import Image  # noqa: E402
from test_monailabel_server import Server, _predict  # noqa: E402

from monailabel.client import MONAILabelClient  # noqa: E402
from monailabel.client.client import MONAILabelClientException  # noqa: E402

pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("monailabel_al"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def _status(call) -> int:
    with pytest.raises(MONAILabelClientException) as refused:
        call()
    return refused.value.status_code


def _score(server, **params) -> requests.Response:
    return requests.post(f"{server.url}/scoring/uncertainty", params={"run_sync": "true"}, json=params or None,
                         timeout=300)


def _wait_for_scoring_job(server, timeout_s: float = 240) -> dict:
    """The last scoring job once it has ended (bounded wait)."""
    deadline = time.time() + timeout_s
    while True:
        task = requests.get(f"{server.url}/scoring/", timeout=30).json()
        if task["status"] not in ("SUBMITTED", "RUNNING") or time.time() > deadline:
            return task
        time.sleep(0.5)


def test_the_server_scores_the_studies_when_it_starts(server):
    # MONAI Label runs every scoring method in a background job once the app is up (and after training)
    task = _wait_for_scoring_job(server)
    assert task["status"] == "DONE", (task, server.log_tail())
    objects = MONAILabelClient(server.url).datastore()["objects"]
    for case in [*server.images, "vol001"]:
        stored = objects[case]["image"]["info"]["uncertainty"]
        assert 0.0 <= stored["mean"] <= 1.0 and 0.0 <= stored["area"] <= 1.0, (case, stored)


def test_unknown_names_and_options_are_4xx(server):
    client = MONAILabelClient(server.url)
    _wait_for_scoring_job(server)
    info = client.info()
    assert set(info["strategies"]) == {"random", "uncertainty"} and set(info["scoring"]) == {"uncertainty"}
    for name in ("first", "epistemic", "no-such-strategy"):
        assert _status(lambda: client.next_sample(name, {})) == 404, name
    assert _status(lambda: client.next_sample("uncertainty", {"score": "median"})) == 400
    assert _status(lambda: client.next_sample("uncertainty", {"max_epochs": 3})) == 400
    response = requests.post(f"{server.url}/scoring/epistemic", timeout=30)
    assert response.status_code == 404 and "uncertainty" in response.json()["detail"]
    assert _score(server, threshold=1.5).status_code == 400
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200  # the server is still up


def test_annotation_loop_proposes_the_least_certain_study_first(server):
    client = MONAILabelClient(server.url)
    _wait_for_scoring_job(server)
    response = _score(server)
    assert response.status_code == 200, response.text[-2000:]
    result = response.json()
    assert not result["failed"] and set(result["scores"]) == set(server.images) | {"vol001"}
    assert result["computed"] == []  # the startup job scored them with these weights: nothing to recompute
    for case, image in server.images.items():  # the served model's uncertainty, as run here
        _, uncertainty = _predict(server.network, image / 255.0)
        assert abs(result["scores"][case]["mean"] - float(uncertainty.mean())) <= 1e-4, case
        assert abs(result["scores"][case]["area"] - float((uncertainty > 0.5).mean())) <= 1e-3, case
    info = client.datastore()["objects"][next(iter(server.images))]["image"]["info"]["uncertainty"]
    assert set(info) >= {"mean", "area", "threshold", "weights", "weights_mtime", "trained"} and info["trained"] is True
    assert info["weights"] == str(server.weights)

    scores = {case: s["mean"] for case, s in result["scores"].items()}
    assert len(set(scores.values())) == len(scores)  # a strict order to check
    expected = sorted(scores, key=scores.get, reverse=True)
    proposed = []
    for _ in range(3):  # label the proposed study, ask again
        case = client.next_sample("uncertainty", {})["id"]
        proposed.append(case)
        label = server.root / f"label_{case}.png"
        Image.fromarray(server.alphas.get(case, next(iter(server.alphas.values())))).save(label)
        if case == "vol001":  # a label of the volume's geometry
            import nibabel as nib

            label = server.root / "label_vol001.nii.gz"
            nib.save(nib.Nifti1Image((server.volume > server.volume.mean()).astype(np.uint8), np.eye(4)), label)
        client.save_label(case, str(label), tag="final")
    assert proposed == expected[:3]
    by_area = client.next_sample("uncertainty", {"score": "area"})["id"]
    areas = {case: s["area"] for case, s in result["scores"].items() if case not in proposed}
    assert areas[by_area] == max(areas.values())


def test_a_failed_scoring_job_reads_error(server):
    _wait_for_scoring_job(server)
    moved = server.weights.with_suffix(".moved")
    os.replace(server.weights, moved)
    try:
        refused = _score(server)  # synchronous: the reason, as a 4xx
        assert refused.status_code == 409 and "NO TRAINED WEIGHTS" in refused.json()["detail"]
        started = requests.post(f"{server.url}/scoring/uncertainty", timeout=60)  # a background job
        assert started.status_code == 200, started.text[-2000:]
        task = _wait_for_scoring_job(server)
        assert task["status"] == "ERROR", (task, server.log_tail())
        assert any("NO TRAINED WEIGHTS" in line for line in task["details"]), task["details"]
    finally:
        os.replace(moved, server.weights)


def test_the_server_sees_what_a_job_process_wrote_to_the_datastore(tmp_path):
    # the server's datastore and a background job's (a process of its own) on one studies folder, the
    # server's file watch off: every read and write of the server starts from the file's current content
    from scripts.monailabel_app.lib.datastore import SecureLocalDatastore

    for name in ("a", "b"):
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / f"{name}.png")
    server = SecureLocalDatastore(str(tmp_path), auto_reload=False)
    job = SecureLocalDatastore(str(tmp_path), auto_reload=False)
    job.update_image_info("a", {"uncertainty": {"mean": 0.3}})
    assert server.get_image_info("a")["uncertainty"] == {"mean": 0.3}
    assert server.json()["objects"]["a"]["image"]["info"]["uncertainty"] == {"mean": 0.3}
    job.update_image_info("b", {"uncertainty": {"mean": 0.2}})
    server.save_label("a", str(tmp_path / "a.png"), "final", {})  # a write of the server keeps the job's results
    assert server.get_unlabeled_images() == ["b"]
    fresh = SecureLocalDatastore(str(tmp_path), auto_reload=False)
    assert fresh.get_image_info("a")["uncertainty"] == {"mean": 0.3} and fresh.get_image_info("b")["uncertainty"] == {"mean": 0.2}
    assert fresh.get_labels_by_image_id("a") == {"final": "a"}


def test_strategy_ranks_the_scored_studies_and_refuses_without_scores(tmp_path):
    from monailabel.datastore.local import LocalDatastore

    from scripts.monailabel_app.lib.activelearning import MostUncertain, NoUncertaintyScoresError

    for name in ("a", "b", "c", "d"):
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / f"{name}.png")
    store = LocalDatastore(str(tmp_path), extensions=["*.png"], auto_reload=False)
    strategy = MostUncertain()
    with pytest.raises(NoUncertaintyScoresError, match="POST /scoring/uncertainty") as refused:
        strategy({"strategy": "uncertainty"}, store)
    assert refused.value.status_code == 409
    store.update_image_info("a", {"uncertainty": {"error": "the image cannot be read"}})  # no score: never ranked
    store.update_image_info("b", {"uncertainty": {"mean": 0.30, "area": 0.10}})
    store.update_image_info("c", {"uncertainty": {"mean": 0.20, "area": 0.50}})
    assert strategy({"strategy": "uncertainty"}, store)["id"] == "b"
    assert strategy({"strategy": "uncertainty", "score": "area"}, store)["id"] == "c"
    store.save_label("b", str(tmp_path / "b.png"), "final", {})
    assert strategy({"strategy": "uncertainty"}, store)["id"] == "c"  # labelled studies are never proposed
