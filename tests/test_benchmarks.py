"""Smoke tests of the speed benchmarks (tools/benchmarks): they run and write their JSON.

Tiny networks and 1-2 iterations; no timing is asserted (timings belong in docs/benchmarks.md).
"""

import json

import pytest
import torch
import yaml

from scripts import BUNDLE_ROOT
from tools.benchmarks import levers, training_speed


@pytest.fixture
def tiny(tiny_overrides):
    """The tiny network with one convolution per U-Net level, as config id -> value."""
    return {**tiny_overrides, "network_def#convs_per_block": 1}


def test_parse_overrides_reads_yaml_values():
    assert training_speed.parse_overrides(["num_samples=4", "prob_filters=[16, 32]", "network_def#norm=null"]) == {
        "num_samples": 4,
        "prob_filters": [16, 32],
        "network_def#norm": None,
    }
    with pytest.raises(ValueError, match="ID=VALUE"):
        training_speed.parse_overrides(["num_samples"])


def test_build_from_config_applies_overrides(tiny):
    parts = training_speed.build_from_config(overrides=tiny)
    net = parts["network"]
    assert net.num_samples == 2 and parts["network_args"]["implicit_hidden"] == 8
    config = yaml.safe_load((BUNDLE_ROOT / "configs" / "train.yaml").read_text())
    assert parts["batch_size"] == config["batch_size"] and parts["augment"]["deform_prob"] == config["deform_prob"]
    # Adam's other arguments come from the config, and the benchmark's trainer uses them
    assert parts["optimizer_args"] == {k: v for k, v in config["optimizer"].items() if k not in ("_target_", "params", "lr")}
    trainer, _ = training_speed.make_trainer(parts, training_speed.synthetic_batches(1, 1))
    assert trainer.optimizer.defaults["fused"] is config["optimizer"].get("fused", None)
    parts = training_speed.build_from_config(overrides={**tiny, "optimizer#fused": False})
    assert training_speed.make_trainer(parts, training_speed.synthetic_batches(1, 1))[0].optimizer.defaults["fused"] is False


@pytest.mark.timeout(300)
def test_training_speed_writes_json(tmp_path, tiny):
    out = tmp_path / "speed.json"
    argv = ["--iterations", "2", "--warmup", "1", "--inference_runs", "1", "--augment_images", "2",
            "--reference-runs", "0", "--batch", "2", "--bf16", "--json", str(out)]  # dashed spellings still work
    for key, value in tiny.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    training_speed.main(argv)
    result = json.loads(out.read_text())
    assert result["training"]["iterations"] == 2 and len(result["training"]["wall_s"]) == 3
    assert result["training"]["images_per_s"] > 0 and result["inference"]["num_samples"] == 2
    # inference runs the default test-time flips (4 views), so it may cost more than a training step
    assert result["flops"]["train_per_image"] > 0 and result["flops"]["inference_per_image"] > 0
    assert result["augmentation"]["mean_s"] > 0 and result["peak_rss_mib"] > 0
    assert result["bf16_check"]["all_finite"] and result["bf16_check"]["predict_alpha_max_abs_diff"] < 0.1
    assert result["machine"]["commit"] and result["machine"]["torch"] == torch.__version__
    assert result["network_args"]["convs_per_block"] == 1


@pytest.mark.timeout(300)
def test_lever_comparison_interleaves(tmp_path, monkeypatch, tiny):
    monkeypatch.setitem(
        levers.LEVERS, "tiny:num_samples", (levers._v(tiny), levers._v({**tiny, "num_samples": 1}, threads=1))
    )
    out = tmp_path / "levers.json"
    result = levers.main(["--levers", "tiny:num_samples", "--rounds", "2", "--iterations", "1", "--warmup", "0",
                          "--json", str(out)])
    row = json.loads(out.read_text())["levers"]["tiny:num_samples"]
    assert len(row["per_round"]["wall_a"]) == 2 and len(row["per_round"]["wall_b"]) == 2
    assert row["wall"]["ratio_min"] <= row["wall"]["ratio_median"] <= row["wall"]["ratio_max"]
    assert result["levers"]["tiny:num_samples"]["b"]["threads"] == 1
    assert "| tiny:num_samples |" in levers.markdown_table(result)


def test_inference_latency_times_the_default_inference_path(tmp_path):
    from tools.benchmarks.inference_latency import main, markdown

    out = tmp_path / "latency.json"
    result = main(["--ckpt_path", "none", "--threads", "1", "--flips", "default", "none", "--rounds", "1",
                   "--calls", "1", "--batch", "2", "--json", str(out)])
    rows = {r["flips"]: r for r in result["rows"]}
    assert set(rows) == {"hv", "none"} and rows["hv"]["default_flips"] and not rows["none"]["default_flips"]
    assert all(r["latency_ms_median"] > 0 and r["throughput_ms_per_image_median"] > 0 and r["calls"] == 1
               for r in result["rows"])
    assert result["num_samples"] == 8 and result["network"]["test_time_flips"] == "hv"
    assert json.loads(out.read_text())["rows"] == result["rows"]
    assert "hv (default)" in markdown(result)


def test_instance_norm_layouts_checks_gradients_and_times_both_norms(tmp_path):
    """The norm benchmark finds PyTorch's wrong one-image gradient, ours right, and times both in rounds."""
    from tools.benchmarks import instance_norm_layouts

    out = tmp_path / "norm.json"
    threads = torch.get_num_threads()
    result = instance_norm_layouts.main(["--small", "--rounds", "2", "--reps", "1", "--threads", str(threads + 1),
                                         "--json", str(out)])
    assert torch.get_num_threads() == threads  # the caller's thread count is restored
    assert result["threads"] == threads + 1
    errors = result["gradient_max_abs_error"]
    assert errors["batch=1"]["per_image"] < 1e-5 and errors["batch=4"]["per_image"] < 1e-5
    assert errors["batch=4"]["pytorch"] < 1e-5
    # PyTorch 2.13 (pinned): wrong for one channels-last image; if a later PyTorch fixes it, this says so
    assert errors["batch=1"]["pytorch"] > 0.1
    saved = json.loads(out.read_text())
    assert [row["block"]["size"] for row in saved["blocks"]] == [16, 8]
    assert all(len(row["seconds"]["pytorch"]) == 2 and len(row["seconds"]["per_image"]) == 2 for row in saved["blocks"])
    assert all(row["ratio_per_image_to_pytorch"] > 0 for row in saved["blocks"])
