"""Data-parallel training with torchrun and ``configs/multi_gpu_train.yaml``, on the CPU: gloo, 2 processes, one node.

- two ranks with batch 2 train like one process with batch 4 (the same global batch and sample
  order): every rank holds the same weights after every epoch, the first epoch's losses agree to
  1e-6 and later epochs within rounding grown by the steps (5 %); outputs (checkpoints,
  ``model.pt``, the MLflow run) are written once, by rank 0, and ``model.pt`` is the plain
  network's state dict that inference loads;
- a rank killed mid-training stops the whole job (torchrun exits non-zero, no hang), and the rerun
  resumes every rank from the last checkpoint and finishes;
- the merged config passes ``check_properties()`` and trains in one process (world size 1);
- unit checks of the pieces (train step module, rank-0-only reporting handlers, the torchrun check).

Not tested here (no machine for it): NCCL on several GPUs and several nodes (docs/scaling.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import TINY_OVERRIDES, bundle_env, cli_args, free_port, run_bundle

from scripts import BUNDLE_ROOT
from scripts.data.prepare import prepare_dataset
from training_probes import read_epoch_metrics, read_parameter_sums

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                       reason="this PyTorch build has no torch.distributed with gloo"),
]

TRAIN, MULTI = "configs/train.yaml", "configs/multi_gpu_train.yaml"
TINY = [*cli_args(TINY_OVERRIDES), "--progress_bar", "False"]
TESTS_DIR = Path(__file__).resolve().parent  # training_probes.py, for the bundle runs


def _env() -> dict[str, str]:
    env = bundle_env(OMP_NUM_THREADS="1")  # two ranks on the two cores
    env["PYTHONPATH"] += os.pathsep + str(TESTS_DIR)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _torchrun(configs: list[str], log_dir: Path, *args: str) -> list[str]:
    """torchrun with 2 CPU processes on this node (c10d rendezvous on a free port), each rank's output in log_dir."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--log-dir", str(log_dir), "--redirects", "3",
            "-m", "monai.bundle", "run", "training", "--config_file", str(configs), *args]


def _rank_logs(log_dir: Path) -> dict[int, str]:
    """stdout + stderr of every rank (torchrun --log-dir DIR: DIR/<run>/attempt_<n>/<rank>/std*.log)."""
    logs: dict[int, str] = {}
    for path in sorted(log_dir.glob("*/attempt_*/*/std*.log")):
        logs[int(path.parent.name)] = logs.get(int(path.parent.name), "") + path.read_text(errors="replace")
    return logs


def _failure(proc: subprocess.CompletedProcess, log_dir: Path) -> str:
    logs = _rank_logs(log_dir)
    return proc.stdout[-2000:] + proc.stderr[-3000:] + "".join(f"\n--- rank {r}\n{t[-3000:]}" for r, t in logs.items())


def _history(output_dir: Path, name: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{output_dir}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name("medical_matting").experiment_id])
    assert len(runs) == 1, f"one MLflow run expected in {output_dir}, found {len(runs)}"
    return sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, name))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """8 phantom cases in 4 folds: fold 0 leaves 6 training cases, 3 per rank."""
    return prepare_dataset("phantom", tmp_path_factory.mktemp("data") / "phantom", num_cases=8, folds=4)


def test_two_ranks_train_like_one_process_with_the_global_batch_and_write_once(phantom, tmp_path):
    # Same global batch (2 ranks x 2 = 1 process x 4) and the same sample order: DistributedSampler
    # permutes the cases with seed + epoch and deals them out rank by rank (rank r takes every 2nd
    # case from r), so a global step sees the cases a one-process DistributedSampler(num_replicas=1)
    # with the same seed puts into one batch. What no one-process run can reproduce is switched
    # off in both runs: augmentation, the random pseudo ground truth (threshold fixed at 0.5) and
    # the model's random samples (tests/training_probes.py); the gradient loss covers all pixels
    # (grad_threshold -1), as its mean over a mask that depends on the batch is not the mean of the
    # two half-batches' means. What is left to differ is the floating-point summation order of the
    # batch reductions and of the gradient all-reduce.
    probes = tmp_path / "probes.yaml"
    probes.write_text("+imports:\n  - $import training_probes\n+initialize:\n  - $training_probes.patch_random_draws()\n"
                      "  - $training_probes.print_epoch_metrics(@train#trainer, @validate#evaluator)\n"
                      "  - $training_probes.print_parameter_sums(@train#trainer, @network, @loss)\n")
    same_order = tmp_path / "one_process_order.yaml"
    same_order.write_text("train#dataloader#shuffle: false\ntrain#dataloader#sampler: \"$monai.data.DistributedSampler("
                          "@train#dataset, num_replicas=1, rank=0, shuffle=True, seed=@seed)\"\n")
    common = ["--dataset_dir", str(phantom), "--fold", "0", "--epochs", "3", "--val_interval", "3",
              "--learning_rate", "0.002", "--pseudo_gt", "threshold", "--threshold_range", "[0.5, 0.5]",
              "--flip_prob", "0", "--deform_prob", "0", "--grad_threshold", "-1",
              # float32: bfloat16 rounding differs between a batch of 2 and a batch of 4, far above the tolerances
              "--cpu_bf16", "False", *TINY,
              # the probes replace the prior noise by a Python function that TorchScript cannot compile
              "--mlflow_log_model", "False"]
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    proc = subprocess.run(
        _torchrun([TRAIN, MULTI, str(probes)], ddp / "logs", *common, "--batch_size", "2",
                  "--ckpt_dir", str(ddp / "models"), "--output_dir", str(ddp / "eval"), "--tracking", "configs/mlflow.yaml"),
        cwd=BUNDLE_ROOT, env=_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, _failure(proc, ddp / "logs")
    proc = run_bundle("training", "--config_file", str([TRAIN, str(same_order), str(probes)]), *common,
                      "--batch_size", "4", "--ckpt_dir", str(one / "models"), "--output_dir", str(one / "eval"),
                      timeout=240, OMP_NUM_THREADS="1", PYTHONPATH=str(TESTS_DIR))
    assert proc.returncode == 0, proc.stderr[-4000:]

    # both ranks trained every epoch; rank 0 alone wrote and reported
    logs = _rank_logs(ddp / "logs")
    assert sorted(logs) == [0, 1]
    for rank in (0, 1):
        assert "Epoch[3] Complete" in logs[rank] and "Engine run finished" in logs[rank], logs[rank][-3000:]
    assert "saved the final weights to" in logs[0] and "saved the final weights" not in logs[1]
    assert "Epoch[1] Metrics" in logs[0] and "Epoch[1] Metrics" not in logs[1]  # StatsHandler on rank 0 only
    assert sorted(p.name for p in (ddp / "models").iterdir()) == ["checkpoint_epoch=3.pt", "model.pt"]
    ddp_ckpt = torch.load(ddp / "models" / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)
    one_ckpt = torch.load(one / "models" / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)
    assert ddp_ckpt["fingerprint"]["world_size"] == 2 and ddp_ckpt["fingerprint"]["batch_size"] == 2
    # 3 cases per rank, batch 2: 2 steps per epoch, as the one process with 6 cases and batch 4
    assert ddp_ckpt["trainer"]["iteration"] == one_ckpt["trainer"]["iteration"] == 6
    # the epoch means are over both ranks' steps (Ignite's metrics all-reduce): the same on every rank
    ddp_metrics, rank1_metrics = read_epoch_metrics(logs[0]), read_epoch_metrics(logs[1])
    one_metrics = read_epoch_metrics(proc.stdout)
    assert sorted(ddp_metrics) == sorted(one_metrics) == [1, 2, 3] and rank1_metrics == ddp_metrics
    # one MLflow run, written by rank 0, one value per epoch
    assert _history(ddp / "eval", "train_epoch_loss") == [(e, pytest.approx(ddp_metrics[e]["train_epoch_loss"]))
                                                          for e in (1, 2, 3)]

    # Every rank holds the same weights (network and learned loss weights) after every epoch, to the
    # last bit: the gradients are averaged at every step (each rank stepping with its own half-batch's
    # gradient would move the ranks apart from the first step).
    sums = [read_parameter_sums(logs[rank]) for rank in (0, 1)]
    assert sorted(sums[0]) == [1, 2, 3] and sums[0] == sums[1]
    # The same training as one process. Epoch 1 (one step on the initial weights, one after the
    # first averaged update) agrees to 1e-6 absolute (measured: at most 6e-8). Later epochs are only
    # compared loosely: a batch of 4 and two batches of 2 round differently, and in this tiny network
    # the difference grows ~10x per Adam step (an element whose gradient is zero up to rounding, a
    # convolution bias before instance normalisation for one, takes learning-rate sized steps of
    # random sign): batch 4 against two averaged halves, 6 Adam steps in one process from the same
    # weights, differ in the loss by up to ~4e-4, and this test's epoch 2 by up to ~5e-2 with every
    # rank in sync (the kernels' rounding decides how much). Without gradient averaging epoch 2's loss
    # differs by ~2e-2, and with each rank's own initial weights epoch 1's by ~1.5.
    train = [name for name in one_metrics[1] if name.startswith("train_")]
    assert len(train) == 9
    assert {k: ddp_metrics[1][k] for k in train} == pytest.approx({k: one_metrics[1][k] for k in train}, rel=0, abs=1e-6)
    for epoch in (2, 3):
        assert {k: ddp_metrics[epoch][k] for k in train} == pytest.approx(
            {k: one_metrics[epoch][k] for k in train}, rel=0.05, abs=1e-3), epoch
    assert ddp_metrics[3]["val_sad_unknown"] == pytest.approx(one_metrics[3]["val_sad_unknown"], rel=0.05)
    assert ddp_ckpt["loss"]["log_var_seg"] != 0.0 and ddp_ckpt["loss"]["log_var_mat"] != 0.0  # learned
    for key in ("log_var_seg", "log_var_mat"):  # the loss's own parameters train like in one process
        assert float(ddp_ckpt["loss"][key]) == pytest.approx(float(one_ckpt["loss"][key]), rel=0.05, abs=1e-3), key

    # model.pt is the plain network's state dict, served like a one-process model
    from scripts.workflows.inference import load_trained_network

    weights = torch.load(ddp / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert weights.keys() == torch.load(one / "models" / "model.pt", map_location="cpu", weights_only=True).keys()
    assert not any(k.startswith("module.") for k in weights)
    served = load_trained_network(ddp / "models" / "model.pt")
    assert all(torch.equal(v, weights[k]) for k, v in served.state_dict().items() if torch.is_tensor(v))
    assert served.config["prob_filters"] == TINY_OVERRIDES["prob_filters"]


def test_a_killed_rank_stops_the_job_and_the_rerun_resumes_every_rank(phantom, tmp_path):
    import psutil

    ckpt = tmp_path / "models"
    args = ["--dataset_dir", str(phantom), "--fold", "0", "--epochs", "4", "--batch_size", "2", "--ckpt_dir", str(ckpt),
            "--output_dir", str(tmp_path / "eval"), *TINY]
    configs = [TRAIN, MULTI]
    with open(tmp_path / "first.out", "w") as out:
        proc = subprocess.Popen(_torchrun(configs, tmp_path / "logs1", *args), cwd=BUNDLE_ROOT, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT)
    killed_at, deadline = None, time.time() + 200
    try:
        while time.time() < deadline and proc.poll() is None:
            if list(ckpt.glob("checkpoint_epoch=*.pt")):
                ranks = {int(p.environ().get("RANK", -1)): p for p in psutil.Process(proc.pid).children()}
                os.kill(ranks[1].pid, signal.SIGKILL)
                killed_at = max(int(p.stem.split("=")[1]) for p in ckpt.glob("checkpoint_epoch=*.pt"))
                break
            time.sleep(0.02)
        assert killed_at is not None, "no checkpoint was written in time"
        start = time.time()
        code = proc.wait(timeout=60)  # bounded: a hanging rank 0 fails the test here
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"torchrun stopped {time.time() - start:.1f} s after rank 1 was killed")
    assert code != 0, "torchrun must report the failed rank"
    assert killed_at < 4, "the run finished before it could be interrupted"
    assert not (ckpt / "model.pt").exists(), "an interrupted run must not write the final model"
    assert "Signal 9 (SIGKILL) received" in (tmp_path / "first.out").read_text()  # torchrun names the failed rank

    proc = subprocess.run(_torchrun(configs, tmp_path / "logs2", *args), cwd=BUNDLE_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, _failure(proc, tmp_path / "logs2")
    logs = _rank_logs(tmp_path / "logs2")
    for rank in (0, 1):  # every rank continued from the checkpoint, none from scratch
        assert f"resumed training from {ckpt}/checkpoint_epoch={killed_at}.pt (epoch {killed_at} of 4)" in logs[rank]
        assert "Epoch[4] Complete" in logs[rank] and f"Epoch[{killed_at}] Complete" not in logs[rank]
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint_epoch=4.pt", "model.pt"]
    state = torch.load(ckpt / "checkpoint_epoch=4.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["epoch_length"] == 2 and state["trainer"]["iteration"] == 8  # nothing repeated or skipped
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {8}


def test_multi_gpu_config_passes_check_properties_and_trains_as_one_rank(phantom, tmp_path, monkeypatch):
    from monai.bundle import ConfigWorkflow

    for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    workflow = ConfigWorkflow(
        config_file=[str(BUNDLE_ROOT / TRAIN), str(BUNDLE_ROOT / MULTI)], workflow_type="train",
        bundle_root=str(BUNDLE_ROOT), dataset_dir=str(phantom), ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"), epochs=1, progress_bar=False, **TINY_OVERRIDES,
    )  # fmt: skip
    workflow.initialize()
    try:
        assert dist.is_initialized() and dist.get_backend() == "gloo" and dist.get_world_size() == 1
        assert workflow.check_properties() == []
        assert isinstance(workflow.parser.get_parsed_content("train#step"), torch.nn.parallel.DistributedDataParallel)
        workflow.run()
    finally:
        workflow.finalize()
    assert not dist.is_initialized()
    weights = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert weights and not any(k.startswith("module.") for k in weights)


# ----------------------------------------------------------------------------------------- units
@pytest.mark.parametrize("options", [dict(), dict(upsampling="local_ensemble", scales=1), dict(upsampling="bilinear")])
@pytest.mark.parametrize("weighting", ["uncertainty", "fixed"])
def test_every_parameter_gets_a_gradient_in_the_train_step(make_tiny_net, options, weighting):
    # why multi_gpu_train.yaml keeps find_unused_parameters false
    from scripts.losses import MedicalMattingLoss
    from scripts.workflows.distributed import MattingTrainStep

    step = MattingTrainStep(make_tiny_net(**options), MedicalMattingLoss(weighting=weighting)).train()
    image, alpha = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    out, losses = step(image, (alpha > 0.5).float(), alpha)
    assert out["alpha"].shape == (2, 1, 32, 32)
    losses["loss"].backward()
    assert [n for n, p in step.named_parameters() if p.grad is None] == []
    assert weighting == "fixed" or {n for n, _ in step.named_parameters()} >= {"loss_function.log_var_seg"}
    with pytest.raises(TypeError, match="forward_train"):
        MattingTrainStep(torch.nn.Linear(2, 2), MedicalMattingLoss())


def test_reporting_handlers_run_on_rank_0_only():
    from monai.handlers import LrScheduleHandler, StatsHandler, ValidationHandler

    from scripts.handlers.checkpoint import TrainingCheckpointHandler
    from scripts.handlers.progress import ProgressBarHandler
    from scripts.workflows.distributed import handlers_of_this_rank

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    keep = [TrainingCheckpointHandler("x", {"network": torch.nn.Linear(1, 1)}),
            LrScheduleHandler(torch.optim.lr_scheduler.StepLR(opt, 1)), ValidationHandler(1, validator=None)]
    report = [StatsHandler(), ProgressBarHandler()]
    handlers = [keep[0], report[0], keep[1], report[1], keep[2]]
    assert handlers_of_this_rank(handlers, is_main=lambda: True) == handlers
    assert handlers_of_this_rank(handlers, is_main=lambda: False) == keep
    assert handlers_of_this_rank(None, is_main=lambda: False) is None


def test_the_multi_gpu_config_outside_torchrun_says_how_to_start_it(monkeypatch):
    from scripts.workflows.distributed import init_distributed, is_main_process, local_device, rank

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match=r"must be started by torchrun \(RANK, LOCAL_RANK, WORLD_SIZE unset\)"):
            init_distributed()
    assert rank() == 0 and is_main_process()
    assert local_device() == (torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu"))
