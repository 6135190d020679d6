"""Cross-validation folds as independent jobs (``tools.crossval --no_aggregate`` per fold, then ``--aggregate_only``).

Two tiny folds run as two separate, concurrent invocations on one output folder (as the tasks of
a cluster array job would), then one aggregate-only invocation: its ``crossval.json`` holds the
metrics of the all-in-one run of the same folds, which runs its two folds in parallel processes
(``--jobs 2``). Missing folds are refused with one error line naming their folders; with
tracking, the aggregate step nests the folds' runs under the parent.
"""

from __future__ import annotations

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


def test_folds_as_separate_jobs_aggregate_like_the_all_in_one_run(phantom, tmp_path):
    together, separate = tmp_path / "together", tmp_path / "separate"
    base = ["--dataset_dir", str(phantom), "--quiet"]
    start = time.time()
    jobs = [subprocess.Popen(_crossval(*base, "--output_dir", str(together), "--folds", "0", "1", "--jobs", "2", *TINY),
                             cwd=BUNDLE_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    jobs += [subprocess.Popen(_crossval(*base, "--output_dir", str(separate), "--folds", str(k), "--no_aggregate", *TINY),
                              cwd=BUNDLE_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k in (0, 1)]
    outputs = [jobs[0].communicate(timeout=280)[0]]
    together_wall = time.time() - start  # the all-in-one run, from its start to its exit
    outputs += [job.communicate(timeout=280)[0] for job in jobs[1:]]
    assert [job.returncode for job in jobs] == [0, 0, 0], outputs

    # the all-in-one run ran its two folds at the same time: its wall time is less than the sum of the folds' times
    summary = json.loads((together / "crossval.json").read_text())
    assert summary["jobs"] == 2 and list(summary["status"]) == ["0", "1"]
    assert all(s["status"] == "done" for s in summary["status"].values())
    assert together_wall < sum(s["seconds"] for s in summary["status"].values()), (together_wall, summary["status"])

    # the fold jobs wrote nothing outside their fold folders
    assert sorted(p.name for p in separate.iterdir()) == ["fold0", "fold1"]
    assert json.loads((separate / "fold1" / "fold_status.json").read_text())["status"] == "done"
    assert "no aggregate" in outputs[1] and "no aggregate" in outputs[2]

    # aggregating two of the four folds: name them; all four: fold 2 and 3 have no results
    assert main([*base, "--output_dir", str(separate), "--aggregate_only"]) == 2
    assert main([*base, "--output_dir", str(separate), "--aggregate_only", "--folds", "0", "1"]) == 0
    expected, got = (json.loads((d / "crossval.json").read_text()) for d in (together, separate))
    assert expected["finished"] == [0, 1] and expected["missing"] == [] and expected["failed"] == []
    # the folds train deterministically: the same numbers, not only close ones
    assert {k: got[k] for k in METRIC_KEYS} == {k: expected[k] for k in METRIC_KEYS}
    assert got["aggregate_only"] is True and got["failed"] == [] and set(got["status"]) == {"0", "1"}
    for name in ("crossval.csv", "crossval.md", "crossval_per_case.csv"):
        assert (separate / name).read_text() == (together / name).read_text(), name


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
