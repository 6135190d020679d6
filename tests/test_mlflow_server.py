"""Training with ``--tracking mlflow`` against a real MLflow tracking server on 127.0.0.1.

Starts ``mlflow server`` with a SQLite backend and served artifacts in a temporary folder, runs a
tiny fold (``train_evaluate`` of configs/train.yaml + configs/evaluate.yaml, the bundle's own
command) with ``--tracking_uri`` pointing at it, then checks with ``MlflowClient`` (over HTTP) that
the run, its parameters, its per-epoch training metrics, the fold's test metrics and the figure /
metric-table artifacts arrived -- the artifacts in the server's artifact store, uploaded through
the server -- and stops the server (docs/monailabel.md, "MLflow tracking server").
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BUNDLE_ROOT, free_port, run_bundle, wait_until_serving

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed")
pytest.importorskip("requests")

CONFIGS = "['configs/train.yaml','configs/evaluate.yaml']"
STARTUP_TIMEOUT_S = 150
EPOCHS = 2

pytestmark = [
    pytest.mark.timeout(480),
    pytest.mark.skipif(not (BUNDLE_ROOT / "configs" / "evaluate.yaml").is_file(),
                       reason="configs/evaluate.yaml not present"),
]


def _mlflow_command() -> list:
    script = Path(sys.executable).parent / "mlflow"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mlflow"]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / "server.log"
    cmd = _mlflow_command() + [
        "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(log_path, "w")
    # its own process group: the server runs its web workers as child processes. Without MLflow's job
    # execution (a job-runner process with periodic tasks, which tracking does not use): one process less
    # to start, run beside the training and stop.
    proc = subprocess.Popen(cmd, cwd=str(root), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        wait_until_serving(proc, f"{url}/health", STARTUP_TIMEOUT_S, lambda: log_path.read_text()[-3000:],
                           name="mlflow server")
        yield {"url": url, "root": root, "artifacts": root / "artifacts", "proc": proc}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def test_training_logs_params_metrics_and_figures_to_the_tracking_server(mlflow_server, tmp_path, tiny_cli_args):
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from scripts.data.prepare import prepare_dataset

    dataset = prepare_dataset("phantom", tmp_path / "phantom", num_cases=6, folds=3)
    out = tmp_path / "fold0"
    run = run_bundle("train_evaluate", "--config_file", CONFIGS, "--bundle_root", str(BUNDLE_ROOT),
                     "--dataset_dir", str(dataset), "--fold", "0", "--epochs", str(EPOCHS), "--ckpt_dir", str(out / "ckpt"), "--output_dir", str(out / "eval"),
                     "--progress_bar", "false", "--tracking", "configs/mlflow.yaml", "--tracking_uri", mlflow_server["url"],
                     *tiny_cli_args, "--batch_size", "2", timeout=360, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI="")
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    # the tracking_uri override took effect: nothing went to the default local store in output_dir
    assert not (out / "eval" / "mlruns.db").exists() and not (out / "eval" / "mlruns").exists()

    client = MlflowClient(tracking_uri=mlflow_server["url"])
    experiment = client.get_experiment_by_name("medical_matting")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # training and evaluation share the fold's run
    info, data = runs[0].info, runs[0].data
    assert info.status == "FINISHED" and info.run_name == "fold0"

    # parameters of training and of the evaluation
    assert data.params["fold"] == "0" and data.params["epochs"] == str(EPOCHS)
    assert data.params["prob_filters"] == "[4, 8, 8, 8]"
    assert data.params["eval_checkpoint"] == str(out / "ckpt" / "model.pt")

    # training metrics, one value per epoch (step = epoch), named train_epoch_* so that they do not
    # mix with the per-iteration "train_loss" that MONAI's default MLflow settings log.
    for name in ("train_epoch_loss", "train_epoch_l1", "train_epoch_ce", "train_epoch_kl", "train_epoch_grad"):
        history = client.get_metric_history(info.run_id, name)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), (name, [(m.step, m.value) for m in history])
        assert all(0 <= m.value < float("inf") for m in history), name
    assert "train_loss" in data.metrics
    # final fold (test) metrics
    for name in ("sad_unknown", "mse_unknown", "grad_unknown", "conn_unknown", "ged"):
        assert name in data.metrics, sorted(data.metrics)

    # artifacts: listed by the server, stored in its artifact destination, downloadable over HTTP
    names = {a.path for a in client.list_artifacts(info.run_id)}
    assert {"figure_fold0.png", "metrics.json", "metrics.csv", "metrics_per_case.csv"} <= names, names
    stored = list(mlflow_server["artifacts"].rglob("figure_fold0.png"))
    assert len(stored) == 1 and info.run_id in str(stored[0])
    local = client.download_artifacts(info.run_id, "figure_fold0.png", str(tmp_path))
    with Image.open(local) as figure:
        assert figure.format == "PNG" and figure.size[0] > 100 and figure.size[1] > 100
    assert Path(local).read_bytes() == (out / "eval" / "figure_fold0.png").read_bytes()
    metrics_json = client.download_artifacts(info.run_id, "metrics.json", str(tmp_path))
    assert "sad_unknown" in io.open(metrics_json).read()

    # the trained network, logged as the run's MLflow model and served back by the tracking server
    _check_logged_model(client, mlflow_server["url"], experiment.experiment_id, info.run_id, out / "ckpt" / "model.pt")
    assert mlflow_server["proc"].poll() is None


def _check_logged_model(client, url: str, experiment_id: str, run_id: str, weights: Path) -> None:
    import numpy as np
    import torch

    from scripts.handlers.mlflow_run import fluent_tracking_uri
    from scripts.networks import MedicalMattingNet

    (model,) = client.search_logged_models(experiment_ids=[experiment_id])
    assert model.source_run_id == run_id and model.name == "model"
    state = torch.load(weights, map_location="cpu", weights_only=True)
    network = MedicalMattingNet(**MedicalMattingNet.checkpoint_config(state))
    network.load_state_dict(state)
    network.eval()
    with fluent_tracking_uri(url):
        loaded = mlflow.pytorch.load_model(f"models:/{model.model_id}")
        pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert isinstance(loaded, torch.jit.ScriptModule)  # no bundle code needed to run it
    assert pyfunc.metadata.metadata["network_args"] == MedicalMattingNet.checkpoint_config(state)
    for h, w in [(40, 24), (72, 56)]:
        image = torch.rand(2, 1, h, w)
        with torch.no_grad():
            expected = network.predict(image)
            served = loaded.predict(image)
            assert (loaded(image) - expected["alpha"]).abs().max() <= 1e-5
        assert (served["uncertainty"] - expected["uncertainty"]).abs().max() <= 1e-5
        alpha = pyfunc.predict(image.numpy())
        assert alpha.shape == (2, 1, h, w) and np.abs(alpha - expected["alpha"].numpy()).max() <= 1e-5
