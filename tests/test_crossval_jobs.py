"""Cross-validation through ``tools.crossval``: all folds in one invocation, and folds as independent jobs.

One all-in-one run of two tiny folds (``--jobs 2``: the folds in parallel processes, tracked in
MLflow) is shared by the module's tests. Against it:

- the same folds as two separate, concurrent invocations on one output folder (``--no_aggregate``,
  as the tasks of a cluster array job would run them), then one ``--aggregate_only`` invocation:
  its ``crossval.json`` holds the all-in-one run's metrics; missing folds are refused with one
  error line naming their folders; with tracking, the aggregate step nests the folds' runs under
  the parent;
- the all-in-one run's aggregate and MLflow runs, a rerun with another recipe (refused before
  anything runs) and a rerun whose redone fold fails (the finished fold is skipped and kept).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES, bundle_env, cli_args

from scripts import BUNDLE_ROOT
from scripts.data.prepare import prepare_dataset
from tools.crossval import aggregate_crossval, main

pytestmark = pytest.mark.timeout(300)

TINY = [*cli_args(TINY_OVERRIDES), "--progress_bar", "False", "--epochs", "1"]
#: what crossval.json holds about the metrics (the rest is bookkeeping: command, times, status)
METRIC_KEYS = ("folds", "num_cases", "metrics", "mean", "std", "pooled_mean", "finished", "missing")


def _crossval(*args: str) -> list[str]:
    return [sys.executable, "-m", "tools.crossval", *args]


def _env() -> dict[str, str]:
    env = bundle_env(OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return prepare_dataset("phantom", tmp_path_factory.mktemp("data") / "phantom", num_cases=8, folds=4)


@pytest.fixture(scope="module")
def together(phantom, tmp_path_factory) -> dict:
    """The all-in-one run of folds 0 and 1 (``--jobs 2``, MLflow tracking): its folder and wall time."""
    out = tmp_path_factory.mktemp("together") / "cv"
    cmd = _crossval("--dataset_dir", str(phantom), "--quiet", "--output_dir", str(out), "--folds", "0", "1",
                    "--jobs", "2", "--tracking", "mlflow", *TINY)
    start = time.time()
    proc = subprocess.run(cmd, cwd=BUNDLE_ROOT, env=_env(), capture_output=True, text=True, timeout=280)
    wall = time.time() - start  # from its start to its exit
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"out": out, "wall": wall}


def test_folds_as_separate_jobs_aggregate_like_the_all_in_one_run(phantom, together, tmp_path):
    together_out, separate = together["out"], tmp_path / "separate"
    base = ["--dataset_dir", str(phantom), "--quiet"]
    jobs = [subprocess.Popen(_crossval(*base, "--output_dir", str(separate), "--folds", str(k), "--no_aggregate", *TINY),
                             cwd=BUNDLE_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for k in (0, 1)]
    outputs = [job.communicate(timeout=280)[0] for job in jobs]  # outputs[k]: the job of fold k
    assert [job.returncode for job in jobs] == [0, 0], outputs

    # the all-in-one run ran its two folds at the same time: its wall time is less than the sum of the folds' times
    summary = json.loads((together_out / "crossval.json").read_text())
    assert summary["jobs"] == 2 and list(summary["status"]) == ["0", "1"]
    assert all(s["status"] == "done" for s in summary["status"].values())
    assert together["wall"] < sum(s["seconds"] for s in summary["status"].values()), (together["wall"], summary["status"])

    # the fold jobs wrote nothing outside their fold folders
    assert sorted(p.name for p in separate.iterdir()) == ["fold0", "fold1"]
    assert json.loads((separate / "fold1" / "fold_status.json").read_text())["status"] == "done"
    assert "no aggregate" in outputs[0] and "no aggregate" in outputs[1]

    # aggregating two of the four folds: name them; all four: fold 2 and 3 have no results
    assert main([*base, "--output_dir", str(separate), "--aggregate_only"]) == 2
    assert main([*base, "--output_dir", str(separate), "--aggregate_only", "--folds", "0", "1"]) == 0
    expected, got = (json.loads((d / "crossval.json").read_text()) for d in (together_out, separate))
    assert expected["finished"] == [0, 1] and expected["missing"] == [] and expected["failed"] == []
    # the folds train deterministically: the same numbers, not only close ones
    assert {k: got[k] for k in METRIC_KEYS} == {k: expected[k] for k in METRIC_KEYS}
    assert got["aggregate_only"] is True and got["failed"] == [] and set(got["status"]) == {"0", "1"}
    for name in ("crossval.csv", "crossval.md", "crossval_per_case.csv"):
        assert (separate / name).read_text() == (together_out / name).read_text(), name


def test_aggregate_only_refuses_missing_folds_in_one_line(phantom, tmp_path, capsys):
    out = tmp_path / "cv"
    (out / "fold0").mkdir(parents=True)
    (out / "fold0" / "metrics.json").write_text(json.dumps({"fold": 0, "num_cases": 1, "metrics": {"sad_unknown": {"mean": 1.0}}}))
    assert main(["--dataset_dir", str(phantom), "--output_dir", str(out), "--aggregate_only", "--folds", "0", "1", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --aggregate_only: no results for fold(s) 1 3")
    assert str(out / "fold1") in err and str(out / "fold3") in err and "--folds 1 3 --no_aggregate" in err
    assert not (out / "crossval.json").exists()
    # overrides would be silently ignored: refused; --no_aggregate and --aggregate_only exclude each other
    assert main(["--dataset_dir", str(phantom), "--output_dir", str(out), "--aggregate_only", "--folds", "0",
                 "--epochs", "3"]) == 2
    assert "--epochs 3 would be ignored" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--dataset_dir", str(phantom), "--output_dir", str(out), "--aggregate_only", "--no_aggregate"])


def test_aggregate_only_nests_the_fold_jobs_runs_under_the_parent_run(phantom, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "cv"
    uri = f"sqlite:///{out}/mlruns.db"
    out.mkdir()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("medical_matting")
    fold_runs = {}
    for k, sad in ((0, 1.0), (1, 3.0)):  # what the fold jobs leave: metrics and a run tagged with the cv_id
        (out / f"fold{k}").mkdir()
        (out / f"fold{k}" / "metrics.json").write_text(json.dumps({"fold": k, "num_cases": 1,
                                                                   "metrics": {"sad_unknown": {"mean": sad}}}))
        fold_runs[k] = client.create_run(experiment, run_name=f"fold{k}", tags={"cv_id": "cv-x", "fold": str(k)}).info.run_id
    other = client.create_run(experiment, run_name="fold0", tags={"cv_id": "another"}).info.run_id
    result = aggregate_crossval(phantom, out, folds=[0, 1], tracking="mlflow", cv_id="cv-x")
    assert result["aggregate"]["mean"]["sad_unknown"] == 2.0
    parents = client.search_runs([experiment], filter_string="tags.cv_parent = 'true'")
    assert len(parents) == 1 and parents[0].data.tags["cv_id"] == "cv-x"
    assert parents[0].data.metrics["mean_sad_unknown"] == 2.0 and parents[0].info.status == "FINISHED"
    for run_id in fold_runs.values():
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert "mlflow.parentRunId" not in client.get_run(other).data.tags  # another cross-validation's run
    aggregate_crossval(phantom, out, folds=[0, 1], tracking="mlflow", cv_id="cv-x")  # again: the same parent
    assert len(client.search_runs([experiment], filter_string="tags.cv_parent = 'true'")) == 1


def test_recipe_check_reads_overrides_as_the_bundle_does_and_needs_a_checkpoint(tmp_path):
    from tools.crossval import _override_pairs, recipe_mismatch

    pairs = _override_pairs(["--learning_rate", "3e-4", "--prob_filters", "[16, 32]", "--cpu_bf16", "False",
                             "--pseudo_gt", "rater", "--network_def#convs_per_block=1", "--val_fold", "None"])
    assert pairs == {"learning_rate": 3e-4, "prob_filters": [16, 32], "cpu_bf16": False, "pseudo_gt": "rater",
                     "network_def#convs_per_block": 1, "val_fold": None}
    # a finished fold without training checkpoints (evaluation-only folders): nothing to compare, not refused
    (tmp_path / "fold0" / "models").mkdir(parents=True)
    assert recipe_mismatch(tmp_path / "fold0", 0, tmp_path, ["configs/train.yaml"], []) is None


def test_all_in_one_run_aggregates_tracks_refuses_another_recipe_and_reports_a_failed_fold(phantom, together, capsys):
    # the last test of the module: it reruns fold 1 in the shared run's folder
    out = together["out"]
    summary = json.loads((out / "crossval.json").read_text())
    assert summary["finished"] == [0, 1] and summary["missing"] == [] and summary["failed"] == []
    fold_means = {k: json.loads((out / f"fold{k}" / "metrics.json").read_text())["metrics"]["sad_unknown"]["mean"]
                  for k in (0, 1)}
    assert summary["mean"]["sad_unknown"] == pytest.approx((fold_means[0] + fold_means[1]) / 2)
    assert summary["std"]["sad_unknown"] == pytest.approx(abs(fold_means[0] - fold_means[1]) / 2)
    table = (out / "crossval.md").read_text()
    assert "| mean +/- std |" in table and "sad_unknown" in table
    with open(out / "crossval_per_case.csv") as f:
        assert sorted({row["fold"] for row in csv.DictReader(f)}) == ["0", "1"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name("medical_matting").experiment_id])
    parent = [r for r in runs if r.data.tags.get("cv_parent") == "true"]
    folds = [r for r in runs if r.data.tags.get("cv_parent") != "true"]
    assert len(parent) == 1 and sorted(r.info.run_name for r in folds) == ["fold0", "fold1"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for r in folds)
    assert all(r.data.tags["cv_id"] == summary["cv_id"] for r in runs)
    assert parent[0].data.metrics["mean_sad_unknown"] == pytest.approx(summary["mean"]["sad_unknown"], rel=1e-6)

    # the reruns run in this process (the runner's own command line); their folds are processes as always
    rerun = ["--dataset_dir", str(phantom), "--output_dir", str(out), "--folds", "0", "1", "--jobs", "2", "--quiet",
             "--tracking", "mlflow", *TINY]
    # a finished fold trained with another recipe does not count for this one: refused before anything runs
    fold0_mtime = (out / "fold0" / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*rerun, "--learning_rate", "0.123"]) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "0.123 now" in err
    assert f"fold 0 in {out / 'fold0'} is finished, but it was trained with another recipe" in err
    assert (out / "fold0" / "metrics.json").stat().st_mtime_ns == fold0_mtime

    # fold 1 is redone and fails (bad override of the network, not of the recipe); fold 0 is skipped and left untouched
    (out / "fold1" / "metrics.json").unlink()
    assert main([*rerun, "--upsampling", "no-such-mode"]) == 1
    printed = capsys.readouterr().out
    assert "fold 0: finished before, skipped" in printed and "fold 1: FAILED" in printed
    assert (out / "fold0" / "metrics.json").stat().st_mtime_ns == fold0_mtime
    summary = json.loads((out / "crossval.json").read_text())
    # the skipped fold keeps the time its own run recorded (this invocation spent none on it)
    fold0_seconds = json.loads((out / "fold0" / "fold_status.json").read_text())["seconds"]
    assert fold0_seconds > 0 and summary["status"]["0"]["seconds"] == 0.0
    assert summary["status"]["0"]["earlier_seconds"] == fold0_seconds
    assert summary["finished"] == [0] and summary["missing"] == [1] and summary["failed"] == [1]
    assert summary["mean"]["sad_unknown"] == pytest.approx(fold_means[0])
    assert "no-such-mode" in (out / "fold1" / "log.txt").read_text()
