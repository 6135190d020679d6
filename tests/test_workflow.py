"""End-to-end tests of the training / evaluation / cross-validation workflows through the bundle CLI.

A tiny phantom dataset (8 cases, 4 folds) and a tiny network (overridden on the command line) keep
each ``python -m monai.bundle run`` to a few seconds on 2 CPU cores.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_OVERRIDES, cli_args

from scripts.metric_names import METRIC_NAMES
import torch
import yaml
from PIL import Image

BUNDLE_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(300)

CONFIGS = "['configs/train.yaml','configs/evaluate.yaml']"
TINY = [*cli_args(TINY_OVERRIDES), "--progress_bar", "False"]
METRICS = list(METRIC_NAMES)
#: epochs of the kill / resume trainings: the run is killed after epoch 1, the resumed run trains the rest
EPOCHS = 2


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(BUNDLE_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "2")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _bundle(run_id: str, *args: str, config: str = "configs/train.yaml", check: bool = True):
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config, *args]
    proc = subprocess.run(cmd, cwd=BUNDLE_ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "phantom"
    subprocess.run([sys.executable, "-m", "scripts.prepare_data", "--dataset", "phantom", "--num-cases", "8",
                    "--out", str(out)], cwd=BUNDLE_ROOT, env=_env(), check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def trained(phantom, tmp_path_factory) -> dict:
    """Train fold 0 for ``EPOCHS`` epochs, killed (SIGKILL) after the first checkpoint and resumed."""
    root = tmp_path_factory.mktemp("fold0")
    ckpt, out = root / "models", root / "eval"
    args = ["--dataset_dir", str(phantom), "--fold", "0", "--ckpt_dir", str(ckpt), "--output_dir", str(out),
            "--epochs", str(EPOCHS), "--tracking", "configs/mlflow.yaml", *TINY]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml", *args]
    proc = subprocess.Popen(cmd, cwd=BUNDLE_ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = None
    deadline = time.time() + 200
    while time.time() < deadline and proc.poll() is None:
        found = sorted(ckpt.glob("checkpoint_epoch=*.pt")) if ckpt.is_dir() else []
        if found:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_at = max(int(p.stem.split("=")[1]) for p in ckpt.glob("checkpoint_epoch=*.pt"))
            break
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        pytest.fail("training wrote no checkpoint in time")
    assert killed_at is not None and killed_at < EPOCHS, "the first run finished before it could be interrupted"
    assert not (ckpt / "model.pt").exists(), "an interrupted run must not write the final model"
    resumed = _bundle("training", *args)
    return {"root": root, "ckpt": ckpt, "out": out, "killed_at": killed_at, "log": resumed.stdout + resumed.stderr,
            "phantom": phantom}


def test_training_resumes_after_kill_without_repeating_or_skipping_epochs(trained):
    ckpt = trained["ckpt"]
    assert f"resumed training from {ckpt}/checkpoint_epoch={trained['killed_at']}.pt" in trained["log"]
    assert sorted(p.name for p in ckpt.glob("checkpoint_epoch=*.pt")) == [f"checkpoint_epoch={EPOCHS}.pt"]
    assert not list(ckpt.glob(".checkpoint_*")), "temporary checkpoint files left behind"
    state = torch.load(ckpt / f"checkpoint_epoch={EPOCHS}.pt", map_location="cpu", weights_only=True)
    iterations = state["trainer"]["epoch_length"] * EPOCHS  # Ignite stores the iteration count (epoch = it / length)
    batch_size = yaml.safe_load((BUNDLE_ROOT / "configs" / "train.yaml").read_text())["batch_size"]
    assert state["trainer"]["epoch_length"] == math.ceil(6 / batch_size) and state["trainer"]["iteration"] == iterations
    # Adam counted exactly one step per iteration across the two processes: nothing repeated or skipped
    steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {iterations}
    assert state["lr_scheduler"]["last_epoch"] == iterations
    assert state["fingerprint"]["fold"] == 0 and len(state["fingerprint"]["train_cases"]) == 6
    final = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)
    assert set(final) == set(state["network"])
    assert final.pop("_extra_state") == state["network"].pop("_extra_state")  # the network's config
    assert all(torch.equal(final[k], state["network"][k]) for k in final)


def test_a_killed_and_resumed_training_ends_with_the_weights_of_an_uninterrupted_run(trained, tmp_path):
    """The random states (shuffling, augmentation, samples) are in the checkpoint: resuming changes nothing."""
    ckpt = tmp_path / "models"
    _bundle("training", "--dataset_dir", str(trained["phantom"]), "--fold", "0", "--ckpt_dir", str(ckpt),
            "--output_dir", str(tmp_path / "eval"), "--epochs", str(EPOCHS), "--tracking", "configs/mlflow.yaml", *TINY)
    resumed = torch.load(trained["ckpt"] / "model.pt", map_location="cpu", weights_only=True)
    uninterrupted = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)
    differing = [k for k in uninterrupted if torch.is_tensor(uninterrupted[k]) and not torch.equal(uninterrupted[k], resumed[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


def test_mlflow_run_holds_parameters_and_one_value_per_epoch(trained):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{trained['out']}/mlruns.db")
    experiment = client.get_experiment_by_name("medical_matting")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "the resumed training must continue the interrupted run"
    run = runs[0]
    assert run.info.run_name == "fold0" and run.info.status == "FINISHED"
    assert run.data.params["fold"] == "0" and run.data.params["epochs"] == str(EPOCHS)
    learning_rate = yaml.safe_load((BUNDLE_ROOT / "configs" / "train.yaml").read_text())["learning_rate"]
    assert run.data.params["pseudo_gt"] == "rater" and float(run.data.params["learning_rate"]) == learning_rate
    assert run.data.tags["fold"] == "0"
    history = client.get_metric_history(run.info.run_id, "train_epoch_loss")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
    assert all(np.isfinite(m.value) for m in history)
    for name in ("train_epoch_l1", "train_epoch_ce", "train_epoch_kl", "train_epoch_w_seg"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == list(range(1, EPOCHS + 1)), name


def test_evaluation_writes_predictions_metrics_figure_and_tracks_them(trained):
    out, ckpt, phantom = trained["out"], trained["ckpt"], trained["phantom"]
    _bundle("evaluating", "--dataset_dir", str(phantom), "--fold", "0", "--ckpt_dir", str(ckpt),
            "--output_dir", str(out), "--tracking", "configs/mlflow.yaml", *TINY, config=CONFIGS)
    test_cases = sorted(item["case"] for item in json.loads((phantom / "datalist.json").read_text())["training"]
                        if item["fold"] == 0)
    assert len(test_cases) == 2
    for case in test_cases:
        for kind in ("alpha", "uncertainty"):
            png = np.asarray(Image.open(out / "predictions" / f"{case}_{kind}.png"))
            npy = np.load(out / "predictions" / f"{case}_{kind}.npy", allow_pickle=False)
            assert png.shape == npy.shape == (128, 128) and png.dtype == np.uint8 and npy.dtype == np.float32
            assert 0.0 <= npy.min() and npy.max() <= 1.0
            assert np.array_equal(png, np.clip(np.rint(npy.astype(np.float64) * 255), 0, 255).astype(np.uint8))

    summary = json.loads((out / "metrics.json").read_text())
    assert summary["fold"] == 0 and summary["num_cases"] == 2 and list(summary["metrics"]) == METRICS
    per_case = json.loads((out / "metrics_per_case.json").read_text())
    assert sorted(row["case"] for row in per_case) == test_cases
    for name in METRICS:
        values = [row[name] for row in per_case]
        assert summary["metrics"][name]["mean"] == pytest.approx(float(np.mean(values)))
        assert summary["metrics"][name]["n"] == 2
    assert all(0.0 <= row["dice"] <= 1.0 and row["ged"] >= 0.0 and row["sad_image"] >= row["sad_unknown"] - 1e-9
               for row in per_case)
    with open(out / "metrics_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == [r["case"] for r in per_case]
    assert float(rows[0]["sad_unknown"]) == pytest.approx(per_case[0]["sad_unknown"])
    with open(out / "metrics.csv") as f:
        assert [r["metric"] for r in csv.DictReader(f)] == METRICS

    figure = Image.open(out / "figure_fold0.png")
    assert figure.size[0] > 500 and figure.size[1] > 300

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name("medical_matting").experiment_id])
    assert len(runs) == 1, "evaluation must log into the fold's training run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["sad_unknown"] == pytest.approx(summary["metrics"]["sad_unknown"]["mean"], rel=1e-5)
    assert "train_epoch_loss" in run.data.metrics and run.data.params["eval_checkpoint"] == str(ckpt / "model.pt")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"figure_fold0.png", "metrics.json", "metrics_per_case.csv"} <= artifacts
    # the executed configs of training and evaluation, although --output_dir was a plain path
    executed = sorted(a for a in artifacts if a.startswith("config_") and a.endswith(".json"))
    assert executed and all((out / name).is_file() for name in executed)
    assert '"dataset_dir"' in Path(client.download_artifacts(run.info.run_id, executed[-1], str(out))).read_text()
