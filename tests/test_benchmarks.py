"""Smoke tests of the speed benchmarks (tools/benchmarks): they run and write their JSON.

Tiny networks and 1-2 iterations; no timing is asserted (timings belong in docs/benchmarks.md).
"""

import json

import pytest
import torch
import yaml

from scripts import BUNDLE_ROOT
from tools.benchmarks import ab, training_speed


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
    # one view instead of the default four: the FLOP count and the timings need only one forward per call
    for key, value in {**tiny, "test_time_flips": "none"}.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    training_speed.main(argv)
    result = json.loads(out.read_text())
    assert result["training"]["iterations"] == 2 and len(result["training"]["wall_s"]) == 3
    assert result["training"]["images_per_s"] > 0 and result["inference"]["num_samples"] == 2
    assert result["flops"]["train_per_image"] > 0 and result["flops"]["inference_per_image"] > 0
    assert result["augmentation"]["mean_s"] > 0 and result["peak_rss_mib"] > 0
    assert result["bf16_check"]["all_finite"] and result["bf16_check"]["predict_alpha_max_abs_diff"] < 0.1
    assert result["machine"]["commit"] and result["machine"]["torch"] == torch.__version__
    assert result["network_args"]["convs_per_block"] == 1


def test_ab_variant_spec_and_round_order():
    v = ab.parse_variant("fp32=HEAD~1 MALLOC_MMAP_MAX_=0 --set cpu_bf16=false --batch 4")
    assert (v.name, v.ref, v.env, v.args) == ("fp32", "HEAD~1", {"MALLOC_MMAP_MAX_": "0"}, ("--set", "cpu_bf16=false", "--batch", "4"))
    assert ab.parse_variant("head=.") == ab.Variant("head", ".")
    for bad in ("no_ref=", "bad name=.", "=."):
        with pytest.raises(ValueError, match="NAME=REF"):
            ab.parse_variant(bad)
    a, b, c = (ab.Variant(n) for n in "abc")
    assert ab.round_order([a, b, c], 0) == [a, b, c] and ab.round_order([a, b, c], 1) == [c, b, a]


@pytest.mark.timeout(300)
def test_ab_runs_each_variant_in_its_own_process_and_reports_ratios(tmp_path, tiny):
    sets = " ".join(f"--set {key}={json.dumps(value, separators=(',', ':'))}" for key, value in tiny.items())
    base = "--iterations 1 --warmup 0 --skip_flops --inference_runs 1 --reference_runs 0 --augment_images 0"
    summary = ab.main(["--variant", f"one=. {sets}", "--variant", f"two=. OMP_PROC_BIND=false {sets} --set num_samples=1",
                       "--rounds", "1", "--out", str(tmp_path), "--base_args", base])
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    two = summary["variants"]["two"]
    assert two["env"] == {"OMP_PROC_BIND": "false"} and len(two["step_wall_median_s"]) == 1
    assert two["step_ratio"] == [round(two["step_wall_median_s"][0] / summary["variants"]["one"]["step_wall_median_s"][0], 3)]
    assert json.loads((tmp_path / "two_1.json").read_text())["inference"]["num_samples"] == 1


def test_inference_latency_times_the_default_inference_path(tmp_path):
    from tools.benchmarks.inference_latency import main, markdown

    out = tmp_path / "latency.json"
    result = main(["--ckpt_path", "none", "--threads", "1", "--flips", "default", "none", "--rounds", "1",
                   "--calls", "1", "--batch", "2", "--json", str(out)])
    rows = {r["flips"]: r for r in result["rows"]}
    assert set(rows) == {"hv", "none"} and rows["hv"]["default_flips"] and not rows["none"]["default_flips"]
    assert all(r["latency_ms_median"] > 0 and r["throughput_ms_per_image_median"] > 0 and r["calls"] == 1
               for r in result["rows"])
    assert result["default_num_samples"] == 8 and result["network"]["test_time_flips"] == "hv"
    assert {r["num_samples"] for r in result["rows"]} == {8}
    assert json.loads(out.read_text())["rows"] == result["rows"]
    assert "| 1 | hv (default) | 8 |" in markdown(result)
    # the FLOP floor: counted FLOPs over the reference convolution's rate, timed in the same run
    result = main(["--ckpt_path", "none", "--threads", "1", "--flips", "none", "--rounds", "1", "--calls", "1",
                   "--batch", "1", "--floor"])
    (row,) = result["rows"]
    # one view of the default network: the Prob. U-Net, 8 fcomb passes and the Matting U-Net, ~7 GFLOP
    assert 3 < row["gflop"] < 15 and row["reference_gflops"] > 0
    assert row["floor_ms"] == pytest.approx(row["gflop"] / row["reference_gflops"] * 1000)
    assert row["latency_over_floor"] == pytest.approx(row["latency_ms_median"] / row["floor_ms"])
    assert f"| {row['latency_over_floor']:.2f}x |" in markdown(result)
    # the fast setting: one view and fewer prior samples, timed beside the default
    result = main(["--ckpt_path", "none", "--threads", "1", "--flips", "none", "--num_samples", "4", "8",
                   "--rounds", "1", "--calls", "1", "--batch", "2"])
    assert [(r["flips"], r["num_samples"]) for r in result["rows"]] == [("none", 4), ("none", 8)]
