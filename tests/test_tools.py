"""The tools package: recipe table of the reproduction, shared metric tables, command-line spellings."""

import os

import pytest
import yaml

from scripts import BUNDLE_ROOT
from scripts.handlers.metric_tables import summarize_values, write_csv_atomic
from tools.crossval import DEFAULT_CONFIG_FILES
from tools.reproduce import RECIPES, recipe_config_files


def test_recipe_ours_is_the_bundle_defaults_and_paper_adds_its_file(bundle_root):
    assert recipe_config_files("ours") == list(DEFAULT_CONFIG_FILES)  # no recipe file, existing or not
    assert recipe_config_files("quick") == [*DEFAULT_CONFIG_FILES, "configs/recipes/quick.yaml"]
    paper = recipe_config_files("paper")
    assert paper == [*DEFAULT_CONFIG_FILES, "configs/recipes/brain_growth_paper.yaml"]
    assert (bundle_root / paper[-1]).is_file()
    # the paper's variants are merged after the paper's file, in order
    for name, extra in (("paper_bn", "brain_growth_paper_bn.yaml"), ("paper_mm_code", "brain_growth_medical_matting_code.yaml")):
        files = recipe_config_files(name)
        assert files == [*paper, f"configs/recipes/{extra}"] and all((bundle_root / f).is_file() for f in files)
    with pytest.raises(ValueError, match="unknown recipe 'mine'"):
        recipe_config_files("mine")


def test_summarize_values_and_csv(tmp_path):
    stats = summarize_values([1.0, None, 3.0, float("nan")])
    assert stats == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 2}
    path = write_csv_atomic(tmp_path / "t.csv", ["name", "value", "n"], [["a", 0.1, 2], ["b", None, 0]])
    assert path.read_text().splitlines() == ["name,value,n", "a,0.1,2", "b,,0"]


def _run_entry(recipe, seed, sad, folds):
    from scripts.metric_names import METRIC_NAMES

    mean = {c: 0.01 for c in METRIC_NAMES} | {"sad_unknown": sad, "mse_unknown": 0.02, "grad_unknown": 0.3}
    return {"recipe": recipe, "train_seed": seed, "mean": mean, "std": {c: 0.0 for c in METRIC_NAMES},
            "folds": folds, "total_seconds": 600.0 + seed}


def test_goal_check_and_seed_summary(tmp_path):
    from tools.reproduce import PAPER_TABLE1, PAPER_ROW, goal_check, run_name, seed_summary, write_markdown

    assert run_name("ours", 0) == "ours" and run_name("ours", 2) == "ours_seed2"
    good_fold = {"sad_unknown": 0.29, "mse_unknown": 0.02, "grad_unknown": 0.3}
    bad_fold = {"sad_unknown": PAPER_TABLE1[PAPER_ROW]["sad_unknown"] + 0.01, "mse_unknown": 0.02, "grad_unknown": 0.3}
    ok = goal_check(_run_entry("ours", 0, 0.29, {"0": good_fold}))
    assert ok["goal_met"] and ok["folds_worse_than_paper"] == []
    bad = goal_check(_run_entry("ours", 0, 0.31, {"0": good_fold, "1": bad_fold}))
    assert not bad["goal_met"] and not bad["goal_per_metric"]["sad_unknown"]
    assert bad["folds_worse_than_paper"] == ["fold 1 sad_unknown"]

    results = {"recipes": {"ours": _run_entry("ours", 0, 0.30, {"0": good_fold}),
                           "ours_seed1": _run_entry("ours", 1, 0.32, {"0": good_fold}),
                           "paper": _run_entry("paper", 0, 1.1, {"0": bad_fold})}}
    summary = seed_summary(results, "ours")
    assert summary["seeds"] == [0, 1] and summary["runs"] == ["ours", "ours_seed1"]
    assert summary["mean"]["sad_unknown"] == pytest.approx(0.31) and summary["std"]["sad_unknown"] == pytest.approx(0.01)
    assert seed_summary(results, "paper") is None  # one seed: no summary
    for run in results["recipes"].values():
        run.update(command="python -m tools.reproduce", config_files=["configs/train.yaml"], commit="abc",
                   machine={"cpu": "cpu", "logical_cpus": 2, "platform": "linux"}, versions={"torch": "x"},
                   num_cases={"0": 10}, fold_seconds={"0": 1.0}, figures=[])
    results["seed_summaries"] = {"ours": summary}
    write_markdown(results, tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert "over training seeds [0, 1]" in text and "0.3100 +/- 0.0100" in text
    assert "unc. corr." in text and "goal (mean SAD <= 0.3" in text
    assert "folds worse than the paper's row: fold 0 sad_unknown" in text  # the paper recipe's bad fold


def test_only_fold_0s_figure_goes_next_to_the_report(tmp_path):
    from tools.reproduce import fold_figures

    cv_dir = tmp_path / "runs" / "ours"
    for k in range(4):
        (cv_dir / f"fold{k}").mkdir(parents=True)
        (cv_dir / f"fold{k}" / f"figure_fold{k}.png").write_bytes(bytes([k]))
    results = tmp_path / "results"
    assert fold_figures(cv_dir, "ours", results) == ["figures/brain_growth_ours_fold0.png"]
    assert [p.name for p in (results / "figures").iterdir()] == ["brain_growth_ours_fold0.png"]
    assert (results / "figures" / "brain_growth_ours_fold0.png").read_bytes() == bytes([0])
    assert fold_figures(tmp_path / "empty", "ours", results) == []


def test_release_stores_half_precision_weights_that_load_into_the_float32_network(tmp_path):
    import torch

    from scripts.networks import MedicalMattingNet
    from scripts.workflows.inference import load_trained_network
    from tests.conftest import TINY_NET_ARGS
    from tools.release import max_rounding_error, stored_state_dict

    torch.manual_seed(0)
    net = MedicalMattingNet(**dict(TINY_NET_ARGS, test_time_flips="none")).eval()
    state = net.state_dict()
    stored = stored_state_dict(state)
    floats = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()]
    assert floats and all(stored[k].dtype == torch.float16 for k in floats)
    assert stored["_extra_state"] == state["_extra_state"]  # the network's arguments travel unchanged
    error = max_rounding_error(state, stored)
    assert 0 < error < 1e-3

    fp32, fp16 = tmp_path / "fp32.pt", tmp_path / "fp16.pt"
    torch.save(state, fp32)
    torch.save(stored, fp16)
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size
    loaded = load_trained_network(fp16).eval()  # strict load, weights_only=True
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    image = torch.rand(1, TINY_NET_ARGS.get("in_channels", 1), 32, 32)
    with torch.no_grad():
        a, b = net(image), load_trained_network(fp32).eval()(image)
        c = loaded(image)
    a, b, c = (x[0] if isinstance(x, (tuple, list)) else x for x in (a, b, c))
    assert torch.equal(a, b)
    assert (a - c).abs().max() < 1e-2

    with pytest.raises(ValueError, match="exceeds the range"):
        stored_state_dict({"w": torch.tensor([1e6])})
    ints = stored_state_dict({"n": torch.tensor([3])})
    assert ints["n"].dtype == torch.int64


def test_the_quick_recipe_names_only_train_yaml_settings(bundle_root):
    """configs/recipes/quick.yaml overrides train.yaml settings only (a misspelt key would add a new one)."""
    train = yaml.safe_load((bundle_root / "configs" / "train.yaml").read_text())
    quick = yaml.safe_load((bundle_root / "configs" / "recipes" / "quick.yaml").read_text())
    assert {"epochs", "batch_size", "learning_rate", "cpu_bf16"} <= set(quick) <= set(train)


def test_demo_recipe_leaves_the_precision_to_the_bundle():
    from tools.demo import DEMO_OVERRIDES, demo_overrides

    assert demo_overrides(12) == {**DEMO_OVERRIDES, "epochs": "12", "cpu_bf16": "auto"}
    assert demo_overrides(cpu_bf16="false")["cpu_bf16"] == "false"


def test_demo_names_every_metric_outside_its_expected_range():
    from tools.demo import EXPECTED, check_metrics

    good = {name: {"mean": bound + (0.01 if kind == "min" else -0.01)} for name, kind, bound in EXPECTED}
    assert check_metrics(good) == []
    bad = {**good, "dice": {"mean": 0.0}, "unc_corr": {"mean": None}}
    lines = check_metrics(bad)
    assert len(lines) == 2 and lines[0].startswith("dice = 0.0 (at least") and lines[1].startswith("unc_corr = None")


def test_known_library_warnings_are_filtered_and_others_still_show():
    import logging
    import warnings

    from scripts.known_warnings import silence_known_warnings
    from tools.processes import bundle_env

    silence_known_warnings()
    silence_known_warnings()  # idempotent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        silence_known_warnings()
        warnings.warn("NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully. x")
        warnings.warn("The given NumPy array is not writable, and PyTorch does not support non-writable tensors.")
        warnings.warn("another warning")
    assert [str(w.message) for w in caught] == ["another warning"]
    logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "nvImageCodec is not available; x", (), None)
    other = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "something else", (), None)
    assert not logger.filter(record) and logger.filter(other)
    env = bundle_env(threads=1, base={"PYTHONWARNINGS": "error::DeprecationWarning", "PYTHONPATH": "/x"})
    assert env["PYTHONWARNINGS"] == "error::DeprecationWarning,ignore:parsing config_file:UserWarning"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(BUNDLE_ROOT), "/x"] and env["OMP_NUM_THREADS"] == "1"


def test_demo_trains_with_one_thread_only_when_the_cores_are_busy():
    from tools.demo import training_threads

    assert training_threads(load_average=0.2, cpus=2) is None
    assert training_threads(load_average=1.0, cpus=2) == 1 and training_threads(load_average=11.0, cpus=2) == 1
    assert training_threads(load_average=3.0, cpus=16) is None
