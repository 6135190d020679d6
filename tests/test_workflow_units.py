"""Unit tests of the workflow parts: transforms, splits, engines, checkpoint, metric writer, MLflow handler, crossval."""

from __future__ import annotations

import json
import time
import os
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ignite.engine import Engine, Events
from PIL import Image

from scripts import BUNDLE_ROOT
from scripts.data.transforms import (
    CheckMattingSampled,
    matting_augment_transforms,
    matting_eval_transforms,
    matting_train_transforms,
)
from scripts.handlers.checkpoint import TrainingCheckpointHandler, find_checkpoints, latest_checkpoint, save_atomic
from scripts.handlers.metrics_writer import MattingMetricsWriter, summarize_values
from scripts.handlers.mlflow_run import FoldMLFlowHandler, executed_config_path, flatten_params
from scripts.workflows.engines import MattingEvaluator, MattingTrainer, loss_averages, output_scalar
from scripts.workflows.splits import fold_split
from scripts.workflows.inference import MattingInferer
from tools.crossval import aggregate_folds, fold_command, write_aggregate

KEYS = ("image", "alpha", "masks", "trimap")


# ----------------------------------------------------------------------------------- data
def _write_case(root: Path, case: str, raters: int = 3, size: int = 32, shift: int = 0) -> dict:
    yy, xx = np.mgrid[:size, :size]
    disk = ((yy - size / 2 - shift) ** 2 + (xx - size / 2) ** 2) < (size / 4) ** 2
    alpha = (disk * 255).astype(np.uint8)
    alpha[0, :] = 128  # a soft row to check scaling
    image = (np.clip(disk * 180 + xx * 2, 0, 255)).astype(np.uint8)
    trimap = np.where(disk, 255, 0).astype(np.uint8)
    trimap[size // 2, :] = 128
    for sub in ("images", "alpha", "masks", "trimaps"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{case}.png")
    Image.fromarray(alpha).save(root / "alpha" / f"{case}.png")
    Image.fromarray(trimap).save(root / "trimaps" / f"{case}.png")
    masks = []
    for k in range(raters):
        m = np.roll(disk, k, axis=1).astype(np.uint8)
        Image.fromarray(m).save(root / "masks" / f"{case}_r{k}.png")
        masks.append(str(root / "masks" / f"{case}_r{k}.png"))
    return {"case": case, "fold": 0, "image": str(root / "images" / f"{case}.png"),
            "alpha": str(root / "alpha" / f"{case}.png"), "masks": masks,
            "trimap": str(root / "trimaps" / f"{case}.png"), "_arrays": (image, alpha, trimap, disk)}


def test_eval_transforms_load_scale_and_stack_raters(tmp_path):
    item = _write_case(tmp_path, "c1", raters=3)
    image, alpha, trimap, disk = item.pop("_arrays")
    d = matting_eval_transforms(image_channels=1)(item)
    assert d["image"].shape == (1, 32, 32) and d["alpha"].shape == (1, 32, 32)
    assert d["masks"].shape == (3, 32, 32) and d["trimap"].shape == (1, 32, 32)
    assert all(d[k].dtype == torch.float32 for k in KEYS)
    np.testing.assert_allclose(d["image"][0].numpy(), image / 255.0, atol=1e-6)  # no transpose
    np.testing.assert_allclose(d["alpha"][0].numpy(), alpha / 255.0, atol=1e-6)
    for k in range(3):
        np.testing.assert_array_equal(d["masks"][k].numpy(), np.roll(disk, k, axis=1).astype(np.float32))
    np.testing.assert_array_equal(d["trimap"][0].numpy(), trimap.astype(np.float32))
    assert d["case"] == "c1"


def test_check_sample_names_the_case(tmp_path):
    item = _write_case(tmp_path, "bad_case")
    item.pop("_arrays")
    with pytest.raises(RuntimeError) as info:  # MONAI's Compose wraps the error, the cause is ours
        matting_eval_transforms(image_channels=3)(item)
    assert isinstance(info.value.__cause__, ValueError)
    assert "case bad_case: expected 3 image channel(s)" in str(info.value.__cause__)
    sample = {"case": "c9", "image": torch.zeros(1, 8, 8), "alpha": torch.zeros(1, 8, 9),
              "masks": torch.zeros(2, 8, 8), "trimap": torch.zeros(1, 8, 8)}
    with pytest.raises(ValueError, match="c9.*differ in size"):
        CheckMattingSampled()(sample)
    with pytest.raises(ValueError, match="c9.*no 'trimap'"):
        CheckMattingSampled()({k: v for k, v in sample.items() if k != "trimap"})


def test_augmentation_is_joint_and_keeps_label_values(tmp_path):
    item = _write_case(tmp_path, "c1", raters=2, size=64)
    item.pop("_arrays")
    d = matting_eval_transforms()(item)
    d["image"] = d["alpha"].clone()  # same content, same (bilinear) interpolation -> must stay identical
    d["masks"] = (d["alpha"] > 0.5).float().repeat(2, 1, 1)
    aug = matting_train_transforms(deform_prob=1.0, flip_prob=0.5, rotate_degrees=30.0)
    aug = type(aug)(aug.transforms[len(matting_eval_transforms().transforms):])
    changed = 0
    for seed in range(6):
        aug.set_random_state(seed)
        out = aug(dict(d))
        assert all(out[k].shape == d[k].shape for k in KEYS)
        torch.testing.assert_close(out["image"], out["alpha"])
        assert set(out["masks"].unique().tolist()) <= {0.0, 1.0}
        assert set(out["trimap"].unique().tolist()) <= {0.0, 128.0, 255.0}
        # masks (nearest) follow the alpha matte (bilinear): they agree away from the border pixels
        agree = ((out["alpha"] > 0.5).float() == out["masks"][:1]).float().mean()
        assert agree > 0.97
        changed += int(not torch.equal(out["alpha"], d["alpha"]))
    assert changed >= 4
    assert matting_augment_transforms(flip_prob=0.0, deform_prob=0.0) == []
    with pytest.raises(ValueError):
        matting_augment_transforms(deform_prob=1.5)


def test_fold_split_never_validates_on_the_test_fold():
    datalist = {"num_folds": 4, "training": [{"case": f"c{i}", "fold": i % 4} for i in range(12)]}
    split = fold_split(datalist, fold=1)
    assert {i["fold"] for i in split["test"]} == {1} and {i["fold"] for i in split["train"]} == {0, 2, 3}
    assert split["val"] == split["train"]
    split = fold_split(datalist, fold=1, val_fold=2)
    assert {i["fold"] for i in split["val"]} == {2} and {i["fold"] for i in split["train"]} == {0, 3}
    with pytest.raises(ValueError, match="differ from the test fold"):
        fold_split(datalist, fold=1, val_fold=1)
    with pytest.raises(ValueError):
        fold_split(datalist, fold=4)


def test_the_network_is_defined_once():
    train = yaml.safe_load((BUNDLE_ROOT / "configs" / "train.yaml").read_text())
    evaluate = yaml.safe_load((BUNDLE_ROOT / "configs" / "evaluate.yaml").read_text())
    infer = yaml.safe_load((BUNDLE_ROOT / "configs" / "inference.yaml").read_text())
    assert train["network_def"]["_target_"] == "scripts.networks.MedicalMattingNet"
    assert "network_def" not in evaluate  # merged over train.yaml
    # inference builds the network from the checkpoint (train.yaml's network_def for untrained smoke runs)
    assert "load_trained_network" in infer["network_def"] and "configs/train.yaml" in infer["network_def"]
    for key in ("prob_filters", "matting_filters", "norm", "latent_dim", "upsampling"):
        assert key not in infer, key


# ----------------------------------------------------------------------------------- engines
class _TinyMattingNet(torch.nn.Module):
    """Two 1x1 convolutions with the MedicalMattingNet API (forward_train / predict), for engine tests."""

    def __init__(self) -> None:
        super().__init__()
        self.seg = torch.nn.Conv2d(1, 1, 1)
        self.mat = torch.nn.Conv2d(1, 1, 1)
        self.seen_targets: list = []

    def forward_train(self, image, seg_target):
        self.seen_targets.append(seg_target.detach().clone())
        logits = self.seg(image)
        return {"alpha": torch.sigmoid(self.mat(image)), "uncertainty": torch.zeros_like(image),
                "seg_logits": logits, "kl": torch.zeros(image.shape[0]), "sample_probs": torch.sigmoid(logits)}

    def predict(self, image, output_size=None, num_samples=None):
        n = num_samples or 3
        probs = torch.sigmoid(self.seg(image)).repeat(1, n, 1, 1)
        return {"alpha": torch.sigmoid(self.mat(image)), "uncertainty": torch.full_like(image, 0.5),
                "sample_probs": probs}


def _batches(n: int = 2, b: int = 2, k: int = 3):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        masks = (torch.rand(b, k, 8, 8, generator=g) > 0.5).float()
        trimap = torch.zeros(b, 1, 8, 8)
        trimap[..., 2:6, 2:6] = 128
        out.append({"image": torch.rand(b, 1, 8, 8, generator=g), "alpha": torch.rand(b, 1, 8, 8, generator=g),
                    "masks": masks, "trimap": trimap, "case": [f"c{i}{j}" for j in range(b)]})
    return out


def test_trainer_draws_pseudo_ground_truth_and_averages_losses():
    from scripts.losses import MedicalMattingLoss

    net, loss = _TinyMattingNet(), MedicalMattingLoss()
    opt = torch.optim.Adam(list(net.parameters()) + list(loss.parameters()), lr=1e-2)
    data = _batches()
    trainer = MattingTrainer(device="cpu", max_epochs=2, train_data_loader=data, network=net, optimizer=opt,
                             loss_function=loss, pseudo_gt="rater", seed=0,
                             key_train_metric=loss_averages(["loss"]), additional_metrics=loss_averages(["l1"]))
    before = loss.log_var_seg.detach().clone()
    trainer.run()
    assert set(trainer.state.metrics) == {"train_epoch_loss", "train_epoch_l1"}
    assert math.isfinite(trainer.state.metrics["train_epoch_loss"])
    assert not torch.equal(loss.log_var_seg.detach(), before), "the learned loss weights must be optimised"
    # option 1: every pseudo ground truth is exactly one of the raters' masks of its sample
    for it, target in enumerate(net.seen_targets):
        masks = data[it % 2]["masks"]
        for j in range(target.shape[0]):
            assert any(torch.equal(target[j, 0], masks[j, r]) for r in range(masks.shape[1]))
    out = trainer.state.output
    assert isinstance(out, list) and output_scalar("loss")(out) == pytest.approx(float(out[0]["loss"]))

    net2 = _TinyMattingNet()
    opt2 = torch.optim.Adam(net2.parameters())
    MattingTrainer(device="cpu", max_epochs=1, train_data_loader=data, network=net2, optimizer=opt2,
                   loss_function=MedicalMattingLoss(), pseudo_gt="threshold", seed=0).run()
    for it, target in enumerate(net2.seen_targets):  # option 2: alpha >= t for one t per sample
        alpha = data[it]["alpha"]
        for j in range(target.shape[0]):
            on, off = alpha[j][target[j] > 0.5], alpha[j][target[j] < 0.5]
            assert on.numel() == 0 or off.numel() == 0 or on.min() >= off.max()
    with pytest.raises(ValueError, match="pseudo_gt"):
        MattingTrainer(device="cpu", max_epochs=1, train_data_loader=data, network=net2, optimizer=opt2,
                       loss_function=MedicalMattingLoss(), pseudo_gt="bogus")


def test_trainer_conditions_the_posterior_on_alpha_when_asked():
    """posterior_target="alpha": the network's posterior sees the true matte, the loss still gets a rater's mask."""
    from scripts.losses import MedicalMattingLoss

    seen_by_loss = []

    class RecordingLoss(MedicalMattingLoss):
        def forward(self, out, alpha_gt, seg_target):
            seen_by_loss.append(seg_target.detach().clone())
            return super().forward(out, alpha_gt, seg_target)

    data = _batches()
    net, loss = _TinyMattingNet(), RecordingLoss()
    opt = torch.optim.Adam(list(net.parameters()) + list(loss.parameters()), lr=1e-2)
    MattingTrainer(device="cpu", max_epochs=1, train_data_loader=data, network=net, optimizer=opt,
                   loss_function=loss, pseudo_gt="rater", seed=0, posterior_target="alpha").run()
    assert len(net.seen_targets) == len(seen_by_loss) == len(data)
    for batch, posterior_input, ce_target in zip(data, net.seen_targets, seen_by_loss):
        assert torch.equal(posterior_input, batch["alpha"])
        for j in range(ce_target.shape[0]):
            assert any(torch.equal(ce_target[j, 0], batch["masks"][j, r]) for r in range(batch["masks"].shape[1]))
    with pytest.raises(ValueError, match="posterior_target"):
        MattingTrainer(device="cpu", max_epochs=1, train_data_loader=data, network=net, optimizer=opt,
                       loss_function=loss, posterior_target="trimap")


def test_evaluator_output_feeds_the_metric_handlers():
    from monai.handlers import IgniteMetricHandler, from_engine

    from scripts.metrics import MattingMetric, compute_sad

    data = _batches()
    net = _TinyMattingNet()
    evaluator = MattingEvaluator(
        device="cpu", val_data_loader=data, network=net, inferer=MattingInferer(num_samples=4),
        key_val_metric={"sad": IgniteMetricHandler(MattingMetric("sad"), output_transform=from_engine(["pred", "label"]),
                                                   save_details=True)},
    )
    evaluator.run()
    out = evaluator.state.output
    assert out["sample_probs"].shape == (2, 4, 8, 8) and out["label"].shape == (2, 2, 8, 8)
    assert out["case"] == ["c10", "c11"]
    with torch.no_grad():
        expected = torch.cat([compute_sad(torch.sigmoid(net.mat(b["image"])), b["alpha"], b["trimap"] == 128)
                              for b in data])
    np.testing.assert_allclose(evaluator.state.metric_details["sad"].reshape(-1).numpy(), expected.numpy())
    assert evaluator.state.metrics["sad"] == pytest.approx(float(expected.mean()))


# ----------------------------------------------------------------------------------- checkpoints
def _toy_training(ckpt_dir: Path, epochs: int, fingerprint=None, fail_after: int | None = None):
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    seen = []

    def step(engine, batch):
        if fail_after is not None and engine.state.iteration >= fail_after:
            raise KeyboardInterrupt("simulated interruption")
        opt.zero_grad()
        loss = net(batch).pow(2).mean()
        loss.backward()
        opt.step()
        seen.append(engine.state.epoch)
        return loss.item()

    engine = Engine(step)
    handler = TrainingCheckpointHandler(ckpt_dir, {"network": net, "optimizer": opt}, fingerprint=fingerprint)
    handler.attach(engine)
    data = [torch.ones(1, 2) * i for i in range(3)]
    return engine, handler, net, data, seen


def test_checkpoint_resume_continues_at_the_next_epoch(tmp_path):
    engine, handler, net, data, seen = _toy_training(tmp_path, 4, fail_after=7)
    with pytest.raises(KeyboardInterrupt):
        engine.run(data, max_epochs=4)
    assert [e for e, _ in find_checkpoints(tmp_path)] == [2]  # epochs 1, 2 done; epoch 3 interrupted
    assert not (tmp_path / "model.pt").exists()
    engine, handler, net, data, seen = _toy_training(tmp_path, 4)
    engine.run(data, max_epochs=4)
    assert handler.resumed_from == tmp_path / "checkpoint_epoch=2.pt"
    assert seen == [3, 3, 3, 4, 4, 4] and engine.state.iteration == 12
    assert [e for e, _ in find_checkpoints(tmp_path)] == [4]
    final = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(final[k], v) for k, v in net.state_dict().items())
    # rerunning a finished training changes nothing
    engine, handler, net2, data, seen = _toy_training(tmp_path, 4)
    engine.run(data, max_epochs=4)
    assert seen == [] and all(torch.equal(final[k], v) for k, v in net2.state_dict().items())


def test_checkpoint_refuses_other_runs_and_too_few_epochs(tmp_path):
    engine, *_ = _toy_training(tmp_path, 2, fingerprint={"fold": 0})
    engine.run([torch.ones(1, 2)], max_epochs=2)
    engine, *_ = _toy_training(tmp_path, 2, fingerprint={"fold": 1})
    with pytest.raises(ValueError, match=r"checkpoint_epoch=2\.pt belongs to another run.*fold: 0 there, 1 now"):
        engine.run([torch.ones(1, 2)], max_epochs=2)
    # an entry the checkpoint does not have (written by an earlier version) is a difference too
    engine, *_ = _toy_training(tmp_path, 2, fingerprint={"fold": 0, "learning_rate": 3e-4})
    with pytest.raises(ValueError, match=r"learning_rate: absent there, 0\.0003 now"):
        engine.run([torch.ones(1, 2)], max_epochs=2)
    engine, *_ = _toy_training(tmp_path, 1, fingerprint={"fold": 0})
    with pytest.raises(ValueError, match="beyond epochs=1"):
        engine.run([torch.ones(1, 2)], max_epochs=1)


def test_atomic_save_keeps_the_previous_file_when_writing_fails(tmp_path, monkeypatch):
    path = save_atomic({"a": torch.ones(2)}, tmp_path / "checkpoint_epoch=1.pt")

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]
    assert latest_checkpoint(tmp_path) == path and latest_checkpoint(tmp_path / "none") is None
    with pytest.raises(ValueError, match="lacks"):  # not a training checkpoint: a clear error naming it
        _toy_training(tmp_path, 1)[0].run([torch.ones(1, 2)], max_epochs=1)
    # a temporary file left by a killed process is removed at the next start
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # a writer whose process is gone (pid above the kernel's maximum), and an older-style name from before this process
    for name in (f".checkpoint_epoch=2.pt.99999999-{'a' * 32}.tmp", f".model.pt.{'b' * 32}.tmp"):
        (run_dir / name).write_bytes(b"x")
        os.utime(run_dir / name, (time.time() - 3600, time.time() - 3600))
    _toy_training(run_dir, 1)[0].run([torch.ones(1, 2)], max_epochs=1)
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint_epoch=1.pt", "model.pt"]


# ----------------------------------------------------------------------------------- metric tables, MLflow
def test_metrics_writer_writes_per_case_and_summary(tmp_path):
    writer = MattingMetricsWriter(tmp_path, metric_names=["sad", "mse"], info={"fold": 2})
    engine = Engine(lambda e, b: {"case": b})
    writer.attach(engine)

    @engine.on(Events.EPOCH_COMPLETED)
    def _details(e):
        e.state.metric_details = {"sad": torch.tensor([[1.0], [2.0], [6.0]]), "mse": torch.tensor([[0.1], [0.2], [0.3]])}

    engine.run([["a", "b"], ["c"]], max_epochs=1)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["fold"] == 2 and summary["num_cases"] == 3
    assert summary["metrics"]["sad"] == {"mean": 3.0, "std": pytest.approx(math.sqrt(14 / 3)), "min": 1.0,
                                         "max": 6.0, "n": 3}
    rows = json.loads((tmp_path / "metrics_per_case.json").read_text())
    assert [r["case"] for r in rows] == ["a", "b", "c"] and rows[2]["mse"] == pytest.approx(0.3)
    assert (tmp_path / "metrics_per_case.csv").read_text().splitlines()[0] == "case,sad,mse"
    assert summarize_values([float("nan")])["n"] == 0


def test_flatten_params_and_the_executed_config_path(tmp_path):
    assert flatten_params({"a": {"b": 1, "c": (1, 2)}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}
    config = tmp_path / "config_20261125_120000.json"
    config.write_text("{}")
    # MONAI's text for a plain --output_dir, and the path it gives for an expression
    assert executed_config_path(f"{tmp_path} + '/config_20261125_120000.json'", tmp_path) == [str(config)]
    assert executed_config_path(str(config), "/elsewhere") == [str(config)]
    assert executed_config_path(None, tmp_path) == [] and executed_config_path(False, tmp_path) == []


# ----------------------------------------------------------------------------------- crossval
def test_crossval_aggregate_and_fold_command(tmp_path):
    for k, (sad, cases) in enumerate([(1.0, [0.5, 1.5]), (3.0, [3.0])]):
        fold = tmp_path / f"fold{k}"
        fold.mkdir()
        (fold / "metrics.json").write_text(json.dumps(
            {"fold": k, "num_cases": len(cases), "metrics": {"sad_unknown": {"mean": sad}, "ged": {"mean": None}}}))
        (fold / "metrics_per_case.json").write_text(json.dumps(
            [{"case": f"c{k}{i}", "sad_unknown": v, "ged": None} for i, v in enumerate(cases)]))
    agg = aggregate_folds(tmp_path, [0, 1, 2])
    assert agg["finished"] == [0, 1] and agg["missing"] == [2]
    assert agg["mean"]["sad_unknown"] == 2.0 and agg["std"]["sad_unknown"] == 1.0
    assert agg["pooled_mean"]["sad_unknown"] == pytest.approx(5.0 / 3)
    assert agg["mean"]["ged"] is None
    paths = write_aggregate(tmp_path, agg, {"command": "x"})
    assert "| mean +/- std | | 2.0000 +/- 1.0000 | n/a +/- n/a |" in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["command"] == "x"
    cmd = fold_command(1, tmp_path, tmp_path / "fold1", ["a.yaml", "b.yaml"], ["--epochs", "5"], tracking="mlflow")
    assert cmd[3:5] == ["run", "train_evaluate"] and cmd[cmd.index("--fold") + 1] == "1"
    assert cmd[cmd.index("--ckpt_dir") + 1] == str(tmp_path / "fold1" / "models")
    assert cmd[-2:] == ["--tracking", str(BUNDLE_ROOT / "configs" / "mlflow.yaml")] and "--epochs" in cmd


def test_fold_mlflow_handler_reuses_the_fold_run_and_can_drop_iteration_logging(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    artifact = tmp_path / "figure.png"
    artifact.write_bytes(b"png")

    def run_once(run_key: str, params: dict, iteration_log: bool) -> FoldMLFlowHandler:
        engine = Engine(lambda e, b: {"loss": torch.tensor(float(b))})
        handler = FoldMLFlowHandler(
            run_key=run_key, params=params, tags={"fold": 0}, tracking_uri=uri, experiment_name="exp",
            run_name="fold0", close_on_complete=True, iteration_log=iteration_log,
            output_transform=lambda out: out["loss"], artifacts=[[str(artifact)]],
        )
        handler.attach(engine)
        engine.run([1, 2], max_epochs=1)
        return handler

    first = run_once("/out/a", {"lr": 0.1, "net": {"filters": [4, 8]}}, iteration_log=False)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["run_key"] == "/out/a" and run.data.tags["fold"] == "0"
    assert run.data.params["lr"] == "0.1" and run.data.params["net.filters"] == "[4, 8]"
    assert run.data.params["max_epochs"] == "1"  # MONAI's own parameters as well
    assert "Loss" not in run.data.metrics  # no per-iteration logging
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["figure.png"]
    second = run_once("/out/a", {"lr": 0.2}, iteration_log=True)  # same fold again: same run, re-opened
    assert second.run_id == first.run_id
    run = client.get_run(first.run_id)
    assert run.data.params["lr"] == "0.1" and "lr: 0.1 -> 0.2" in run.data.tags["changed_params"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "Loss")] == [1, 2]
    third = run_once("/out/b", {}, iteration_log=True)  # another output folder: another run
    assert third.run_id != first.run_id


def test_fold_mlflow_handler_marks_a_failed_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlruns.db"

    def boom(engine, batch):
        raise RuntimeError("boom")

    engine = Engine(boom)
    handler = FoldMLFlowHandler(run_key="/out/x", tracking_uri=uri, experiment_name="exp", run_name="fold1")
    handler.attach(engine)
    with pytest.raises(RuntimeError, match="boom"):
        engine.run([1], max_epochs=1)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["run_key"] == "/out/x"


def test_the_bundle_fingerprint_holds_the_training_recipe(bundle_root, tmp_path):
    """train.yaml's fingerprint: a checkpoint of another recipe (here: learning rate) is not resumed."""
    from monai.bundle import ConfigParser

    from scripts.data.prepare import prepare_dataset

    data = prepare_dataset("phantom", tmp_path / "ph", num_cases=4, folds=2, seed=0)
    train = yaml.safe_load((bundle_root / "configs" / "train.yaml").read_text())
    recipe = ("seed", "learning_rate", "warmup_epochs", "ema_decay", "drop_last", "flip_prob",
              "deform_prob", "rotate_degrees", "elastic_spacing", "elastic_magnitude", "pseudo_gt", "threshold_range",
              "posterior_target", "weighting", "kl_weight", "grad_weight", "grad_threshold", "seg_weight",
              "mat_weight", "l1_transition_weight")

    def fingerprint(**overrides):
        parser = ConfigParser()
        parser.read_config(str(bundle_root / "configs" / "train.yaml"))
        parser.update({"bundle_root": str(bundle_root), "dataset_dir": str(data), **overrides})
        return parser.get_parsed_content("fingerprint")

    default = fingerprint()
    assert {k: default[k] for k in recipe} == {k: train[k] for k in recipe}
    assert default["precision"] in ("float32", "bfloat16")  # what amp / cpu_bf16 resolve to on this CPU
    assert "epochs" not in default  # a finished run may be extended
    engine, *_ = _toy_training(tmp_path / "ckpt", 1, fingerprint=default)
    engine.run([torch.ones(1, 2)], max_epochs=1)
    engine, *_ = _toy_training(tmp_path / "ckpt", 1, fingerprint=fingerprint(learning_rate=1e-3))
    with pytest.raises(ValueError, match=r"differs in \['learning_rate'\]"):
        engine.run([torch.ones(1, 2)], max_epochs=1)


def test_fingerprint_differences_tell_a_missing_entry_from_none_and_cut_long_values():
    from scripts.handlers.checkpoint import fingerprint_differences

    assert fingerprint_differences({"fold": 0, "val_fold": None}, {"fold": 0, "val_fold": None}) == {}
    assert fingerprint_differences({"fold": 0}, {"fold": 0, "val_fold": None}) == {
        "val_fold": "val_fold: absent there, None now"}
    long = fingerprint_differences({"cases": ["case%02d" % i for i in range(30)]}, {"cases": []})["cases"]
    assert long.startswith("cases: ['case00', ") and "...  there" not in long and "... there, [] now" in long
