"""``python -m tools.crossval``: train and evaluate every fold, resume, and aggregate (docs/workflows.md).

Each fold runs the ``train_evaluate`` target of ``configs/train.yaml`` + ``configs/evaluate.yaml``
in its own ``python -m monai.bundle run`` process (a failing or crashing fold cannot take the
others down) with ``output_dir = OUT/fold<k>`` and ``ckpt_dir = OUT/fold<k>/models``, its output
going to ``OUT/fold<k>/log.txt`` (and the console). A fold whose ``metrics.json`` exists is
finished and skipped - unless its last training checkpoint holds another recipe than this run's
(the config's ``fingerprint``: seed, learning rate, augmentation, loss, ...; e.g. folds trained before
the defaults changed): then the run is refused before anything starts, naming the fold and what
differs. An interrupted fold resumes from its last checkpoint. A fold that fails is
reported (status, return code, log file) and the others go on; the finished folds are never
touched. At the end the runner writes the aggregate over the finished folds:

- ``OUT/crossval.json``: per fold the mean of every metric, and over folds the mean, the standard
  deviation (``ddof=0``), and the pooled mean over all test cases; plus the folds that failed or
  are missing, the command, the configs, the overrides and the wall time;
- ``OUT/crossval.csv`` (one row per fold, then ``mean`` and ``std``), ``OUT/crossval.md`` (a
  markdown table ``mean +/- std``) and ``OUT/crossval_per_case.csv`` (every test case with its fold).

With ``--tracking mlflow`` every fold is an MLflow run nested under a parent run of the
cross-validation (tag ``cv_id`` on all of them); the parent run gets the aggregate metrics
(``mean_<metric>``, ``std_<metric>``) and the three tables as artifacts. The store defaults to
``sqlite:///OUT/mlruns.db`` (``--tracking_uri`` to use a server).

Folds as independent jobs (a cluster array job, docs/scaling.md): ``--folds K --no_aggregate``
runs fold K alone and writes nothing outside ``OUT/fold<K>/`` (its status in
``OUT/fold<K>/fold_status.json``); once every fold is done, ``--aggregate_only`` writes the aggregate
from the fold folders alone -- the same tables as an all-in-one run -- and refuses with one error
line naming the folders of folds that have no results. With tracking, the fold jobs' runs carry the
``cv_id`` tag and the aggregate step creates the parent run and nests them under it (no two jobs
race to create it).

Example::

    python -m tools.crossval --dataset_dir data/phantom --output_dir eval/cv --epochs 20
    # one fold per job, then the aggregate
    python -m tools.crossval --dataset_dir data/phantom --output_dir eval/cv --epochs 20 --folds 2 --no_aggregate
    python -m tools.crossval --dataset_dir data/phantom --output_dir eval/cv --aggregate_only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts import BUNDLE_ROOT
from scripts.atomic import remove_stale_temporaries, write_text_atomic
from scripts.metric_names import METRIC_NAMES
from scripts.handlers.metric_tables import json_number, summarize_values, write_csv_atomic
from tools.processes import bundle_env
from tools.tables import fmt, md_row, md_rule

__all__ = ["DEFAULT_CONFIG_FILES", "CrossvalError", "CrossvalPlan", "fold_command", "fold_config", "recipe_mismatch",
           "aggregate_folds", "write_aggregate", "plan_crossval", "run_folds", "run_crossval", "aggregate_crossval",
           "main"]

DEFAULT_CONFIG_FILES = ("configs/train.yaml", "configs/evaluate.yaml")
METRICS_FILE = "metrics.json"
PER_CASE_FILE = "metrics_per_case.json"
#: a fold's outcome in its own folder (``{"status", "seconds", ...}``), read by ``--aggregate_only``
FOLD_STATUS_FILE = "fold_status.json"
# order of the columns in the tables (others follow in file order)
PREFERRED_ORDER = METRIC_NAMES


class CrossvalError(ValueError):
    """A cross-validation that cannot start: bad dataset folder, datalist, folds or output folder (one line)."""


def _read_datalist_header(dataset_dir: Path) -> int:
    """``num_folds`` of ``dataset_dir/datalist.json``; a :class:`CrossvalError` naming the file otherwise."""
    path = dataset_dir / "datalist.json"
    if not path.is_file():
        raise CrossvalError(f"{path}: not found (prepare the data with python -m scripts.prepare_data)")
    try:
        datalist = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CrossvalError(f"{path}: cannot read ({type(e).__name__}: {e})") from e
    num_folds = datalist.get("num_folds") if isinstance(datalist, dict) else None
    if not isinstance(num_folds, int) or isinstance(num_folds, bool):
        raise CrossvalError(f"{path}: no integer num_folds")
    if num_folds < 2:
        raise CrossvalError(f"{path}: num_folds is {num_folds}; cross-validation needs at least 2 folds "
                            "(prepare the data again with --folds 2 or more)")
    return num_folds


def default_cv_id(output_dir: str | os.PathLike) -> str:
    """A stable id of a cross-validation: the output folder's name plus a hash of its absolute path."""
    path = os.path.abspath(output_dir)
    return f"{os.path.basename(path) or 'cv'}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def fold_command(
    fold: int,
    dataset_dir: str | os.PathLike,
    fold_dir: str | os.PathLike,
    config_files: Sequence[str],
    overrides: Sequence[str] = (),
    run_id: str = "train_evaluate",
    tracking: str | None = None,
    tracking_args: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """The ``python -m monai.bundle run`` command of one fold (a list for ``subprocess``).

    ``overrides`` are passed through as they are (``["--epochs", "20", ...]``) after the fold's own
    keys, so they can change anything except the dataset, fold and folders.
    """
    cmd = [
        python, "-m", "monai.bundle", "run", run_id,
        "--config_file", str(list(config_files)),
        "--dataset_dir", str(os.path.abspath(dataset_dir)),
        "--fold", str(int(fold)),
        "--output_dir", str(os.path.abspath(fold_dir)),
        "--ckpt_dir", str(os.path.abspath(Path(fold_dir) / "models")),
        "--progress_bar", "False",
    ]
    cmd += list(overrides)
    if tracking:
        cmd += ["--tracking", tracking_settings(tracking), *tracking_args]
    return cmd


#: the bundle's MLflow tracking settings (MONAI's --tracking format), what ``--tracking mlflow`` means here
MLFLOW_SETTINGS = BUNDLE_ROOT / "configs" / "mlflow.yaml"


def tracking_settings(tracking: str) -> str:
    """``"mlflow"`` -> the bundle's settings file ``configs/mlflow.yaml``; any other value (a settings file) as is."""
    return str(MLFLOW_SETTINGS) if tracking == "mlflow" else str(tracking)


def _ordered(names: Sequence[str]) -> list[str]:
    first = [n for n in PREFERRED_ORDER if n in names]
    return first + [n for n in names if n not in first]


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and population standard deviation of the finite values (``None`` when there are none)."""
    stats = summarize_values(values)
    return json_number(stats["mean"]), json_number(stats["std"])


def aggregate_folds(output_dir: str | os.PathLike, folds: Sequence[int]) -> dict[str, Any]:
    """Read ``OUT/fold<k>/metrics.json`` (+ per-case files) of the given folds and aggregate them.

    Returns ``{"folds": {k: {metric: mean}}, "num_cases": {k: n}, "metrics": [names], "mean": {...},
    "std": {...}, "pooled_mean": {...}, "finished": [k...], "missing": [k...], "per_case": [rows]}``.
    """
    out = Path(output_dir)
    per_fold: dict[int, dict[str, float | None]] = {}
    num_cases: dict[int, int] = {}
    per_case: list[dict[str, Any]] = []
    names: list[str] = []
    missing = []
    for k in folds:
        path = out / f"fold{k}" / METRICS_FILE
        if not path.is_file():
            missing.append(k)
            continue
        summary = json.loads(path.read_text())
        metrics = summary.get("metrics", {})
        per_fold[k] = {name: stats.get("mean") for name, stats in metrics.items()}
        num_cases[k] = int(summary.get("num_cases", 0))
        names += [n for n in metrics if n not in names]
        case_path = out / f"fold{k}" / PER_CASE_FILE
        if case_path.is_file():
            per_case += [{"fold": k, **row} for row in json.loads(case_path.read_text())]
    names = _ordered(names)
    mean, std, pooled = {}, {}, {}
    for name in names:
        mean[name], std[name] = _mean_std([per_fold[k].get(name) for k in per_fold])
        pooled[name], _ = _mean_std([row.get(name) for row in per_case])
    return {
        "folds": {str(k): v for k, v in per_fold.items()},
        "num_cases": {str(k): v for k, v in num_cases.items()},
        "metrics": names,
        "mean": mean,
        "std": std,
        "pooled_mean": pooled,
        "finished": sorted(per_fold),
        "missing": missing,
        "per_case": per_case,
    }



def write_aggregate(output_dir: str | os.PathLike, aggregate: dict[str, Any], extra: dict[str, Any]) -> dict[str, Path]:
    """Write ``crossval.json``, ``crossval.csv``, ``crossval.md`` and ``crossval_per_case.csv`` into ``output_dir``."""
    out = Path(output_dir)
    names = aggregate["metrics"]
    paths = {k: out / f"crossval{s}" for k, s in (("json", ".json"), ("csv", ".csv"), ("md", ".md"),
                                                    ("per_case", "_per_case.csv"))}
    summary = {key: value for key, value in aggregate.items() if key != "per_case"}
    write_text_atomic(paths["json"], json.dumps({**summary, **extra}, indent=1) + "\n")

    folds = aggregate["folds"]
    write_csv_atomic(paths["csv"], ["fold", "num_cases", *names], [
        *([k, aggregate["num_cases"][k], *(values.get(n) for n in names)] for k, values in folds.items()),
        ["mean", None, *(aggregate["mean"][n] for n in names)],
        ["std", None, *(aggregate["std"][n] for n in names)],
    ])

    lines = [md_row(["fold", "cases", *names]), md_rule(len(names) + 2)]
    for k, values in folds.items():
        lines.append(md_row([k, aggregate["num_cases"][k], *(fmt(values.get(n)) for n in names)]))
    lines.append(md_row(["mean +/- std", "", *(f"{fmt(aggregate['mean'][n])} +/- {fmt(aggregate['std'][n])}" for n in names)]))
    notes = []
    if aggregate["missing"]:
        notes.append(f"Folds without results (failed or not run): {aggregate['missing']}.")
    write_text_atomic(paths["md"], "\n".join(lines + ([""] + notes if notes else [])) + "\n")

    write_csv_atomic(paths["per_case"], ["fold", "case", *names],
                     ([row["fold"], row.get("case"), *(row.get(n) for n in names)] for row in aggregate["per_case"]))
    return paths


def _experiment(tracking_uri: str, experiment_name: str) -> tuple[Any, str]:
    """``(MlflowClient, experiment id)`` of ``experiment_name``, created when missing.

    Fold jobs started at the same time may both find no experiment: the one whose creation is
    refused (it exists now) reads the other's.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return client, experiment.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        artifact_location = (db.parent / "mlruns").absolute().as_uri()
    try:
        return client, client.create_experiment(experiment_name, artifact_location=artifact_location)
    except MlflowException:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise
        return client, experiment.experiment_id


class _ParentRun:
    """The MLflow parent run of a cross-validation (found again by its ``cv_id`` on resume)."""

    def __init__(self, tracking_uri: str, experiment_name: str, cv_id: str, params: dict[str, Any]) -> None:
        self.client, experiment_id = _experiment(tracking_uri, experiment_name)
        self.experiment_id, self.cv_id = experiment_id, cv_id
        runs = self.client.search_runs(
            [experiment_id], filter_string=f"tags.cv_id = '{cv_id}' and tags.cv_parent = 'true'",
            order_by=["attributes.start_time DESC"],
        )
        if runs:
            self.run_id = runs[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=f"crossval-{cv_id}",
                                         tags={"cv_id": cv_id, "cv_parent": "true"})
            self.run_id = run.info.run_id
        logged = self.client.get_run(self.run_id).data.params
        for key, value in params.items():
            if key not in logged:
                self.client.log_param(self.run_id, key, str(value)[:6000])

    def adopt_folds(self) -> None:
        """Nest the folds' runs of this ``cv_id`` (run as separate jobs, without a parent) under this run."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.cv_id = '{self.cv_id}'")
        for run in runs:
            if run.data.tags.get("cv_parent") != "true" and run.data.tags.get("mlflow.parentRunId") != self.run_id:
                self.client.set_tag(run.info.run_id, "mlflow.parentRunId", self.run_id)

    def finish(self, aggregate: dict[str, Any], artifacts: Sequence[Path], failed: bool) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = []
        for name in aggregate["metrics"]:
            for kind in ("mean", "std"):
                value = aggregate[kind][name]
                if value is not None:
                    metrics.append(Metric(f"{kind}_{name}", float(value), stamp, 0))
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
        for path in artifacts:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _run_logged(cmd: list[str], log_path: Path, env: dict[str, str], echo: bool) -> int:
    """Run ``cmd`` with its output appended to ``log_path`` (and echoed); return its exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=str(BUNDLE_ROOT), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()  # the fold's log can be followed live (tail -f)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
        return proc.wait()


def _selected_folds(dataset_dir: Path, folds: Sequence[int] | None) -> list[int]:
    """The folds to run or aggregate (default: all of the datalist, or its fixed split's ``test_folds``); a
    :class:`CrossvalError` for one out of range."""
    num_folds = _read_datalist_header(dataset_dir)
    if not folds:
        folds = json.loads((dataset_dir / "datalist.json").read_text()).get("test_folds") or range(num_folds)
    folds = [int(k) for k in folds]
    bad = [k for k in folds if not 0 <= k < num_folds]
    if bad:
        raise CrossvalError(f"--folds {' '.join(map(str, bad))}: not in 0 .. {num_folds - 1} ({dataset_dir / 'datalist.json'})")
    return folds


def _failed(status: dict[str, dict[str, Any]]) -> list[int]:
    return [int(k) for k, s in status.items() if s["status"] == "failed"]


def _finish(
    out: Path, folds: list[int], status: dict[str, dict[str, Any]], parent: _ParentRun | None, extra: dict[str, Any]
) -> dict[str, Any]:
    """Aggregate the finished folds, write the tables (and the parent run's metrics); print where they are."""
    aggregate = aggregate_folds(out, folds)
    failed = _failed(status)
    extra = {**extra, "failed": failed, "status": status,
             "seconds_all_folds": round(sum(s.get("seconds", 0.0) for s in status.values()), 1)}
    paths = write_aggregate(out, aggregate, extra)
    if parent is not None:
        parent.finish(aggregate, [paths["json"], paths["csv"], paths["md"]], failed=bool(failed or aggregate["missing"]))
    print(f"[crossval] {len(aggregate['finished'])} of {len(folds)} folds finished; aggregate in {paths['md']}",
          flush=True)
    if failed:
        print(f"[crossval] failed folds: {failed} (rerun the same command to retry them)", flush=True)
    return {"aggregate": aggregate, "status": status, "failed": failed, "paths": paths}


def _cli_value(text: str) -> Any:
    """A ``--key value`` argument's value as ``monai.bundle run`` receives it (Python literal, else the string)."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _override_pairs(overrides: Sequence[str]) -> dict[str, Any]:
    """``["--key", "value", "--k2=v2"]`` as ``{"key": value, "k2": v2}`` (values: :func:`_cli_value`)."""
    pairs: dict[str, Any] = {}
    items = list(overrides)
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--") and "=" in item:
            key, value = item[2:].split("=", 1)
            pairs[key] = _cli_value(value)
            i += 1
        elif item.startswith("--") and i + 1 < len(items):
            pairs[item[2:]] = _cli_value(items[i + 1])
            i += 2
        else:
            i += 1
    return pairs


def fold_config(dataset_dir: str | os.PathLike, fold: int, config_files: Sequence[str] = DEFAULT_CONFIG_FILES,
                overrides: dict[str, Any] | None = None) -> Any:
    """A ``monai.bundle.ConfigParser`` of ``config_files`` (relative paths: from the bundle root) for ``fold`` of
    the prepared ``dataset_dir``, with ``overrides`` (``dataset_dir`` and ``fold`` set after them): what a fold's
    bundle run parses, in this process."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(c if os.path.isabs(c) else BUNDLE_ROOT / c) for c in config_files])
    parser.update({"bundle_root": str(BUNDLE_ROOT), **(overrides or {}), "dataset_dir": str(dataset_dir), "fold": fold})
    return parser


def recipe_mismatch(fold_dir: Path, fold: int, dataset_dir: Path, config_files: Sequence[str],
                    overrides: Sequence[str]) -> str | None:
    """Why the finished fold in ``fold_dir`` does not belong to this run, or ``None`` when it does.

    Compares the ``fingerprint`` stored in the fold's newest training checkpoint with the one the
    configs and ``overrides`` give for ``fold`` now. ``None`` (nothing to compare) when the fold has no
    checkpoint, the checkpoint no fingerprint, or the configs no ``fingerprint`` entry.
    """
    import torch

    from scripts.handlers.checkpoint import fingerprint_differences, latest_checkpoint

    path = latest_checkpoint(fold_dir / "models")
    if path is None:
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True).get("fingerprint")
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        return f"its checkpoint {path} cannot be read ({type(e).__name__}: {e})"
    parser = fold_config(dataset_dir, fold, config_files, {**_override_pairs(overrides), "output_dir": str(fold_dir),
                                                           "ckpt_dir": str(fold_dir / "models")})
    if saved is None or "fingerprint" not in parser.config:
        return None
    now = parser.get_parsed_content("fingerprint")
    differ = fingerprint_differences(saved, now)
    if not differ:
        return None
    values = "; ".join(list(differ.values())[:6]) + ("; ..." if len(differ) > 6 else "")
    return f"it was trained with another recipe ({path.name} differs in {list(differ)}: {values})"


def run_crossval(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    folds: Sequence[int] | None = None,
    config_files: Sequence[str] = DEFAULT_CONFIG_FILES,
    overrides: Sequence[str] = (),
    run_id: str = "train_evaluate",
    tracking: str | None = None,
    tracking_uri: str | None = None,
    experiment_name: str = "medical_matting",
    cv_id: str | None = None,
    echo: bool = True,
    command: str | None = None,
    jobs: int = 1,
    threads_per_job: int | None = None,
    aggregate: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the cross-validation and write the aggregate; see the module docstring.

    Args:
        dataset_dir: a prepared dataset (``datalist.json``).
        output_dir: the cross-validation folder (``fold<k>/`` per fold, aggregate files at the top).
        folds: the folds to run (default: all folds of the datalist).
        config_files: bundle configs, merged in order (train.yaml, evaluate.yaml, then your own).
        overrides: extra ``--key value`` arguments for every fold.
        run_id: the bundle target run per fold.
        tracking: ``"mlflow"`` (or a MONAI tracking settings file) to track the folds; ``None``: no tracking.
        tracking_uri: MLflow store (default ``sqlite:///<output_dir>/mlruns.db``).
        experiment_name: MLflow experiment.
        cv_id: id grouping the folds (default: :func:`default_cv_id` of ``output_dir``).
        echo: copy the folds' output to stdout.
        command: the command line to record in ``crossval.json``.
        jobs: folds run at the same time (each in its own process). With ``jobs > 1`` every fold
            process gets ``threads_per_job`` torch threads (default: the CPU count divided by
            ``jobs``); on the 2-core machines two 1-thread folds train faster than one 2-thread
            fold after another (docs/benchmarks.md). Folds' output then goes only to their logs.
        threads_per_job: torch threads (``OMP_NUM_THREADS``) of each fold process when ``jobs > 1``.
        aggregate: ``False`` runs the folds only and writes nothing outside their ``fold<k>/``
            folders: one fold per cluster job, several jobs on one ``output_dir`` at a time, and
            :func:`aggregate_crossval` at the end; with tracking, no parent run is created (the
            aggregate step creates it and nests the folds' runs, found by their ``cv_id`` tag).

    Returns:
        ``{"aggregate": ..., "status": {fold: {...}}, "failed": [...], "paths": {...}}`` (``aggregate``
        ``None`` and no ``paths`` when ``aggregate=False``).
    """
    start = time.time()
    plan = plan_crossval(dataset_dir, output_dir, folds, config_files, overrides, run_id, cv_id, aggregate)
    parent, tracking_args = _tracking(plan, tracking, tracking_uri, experiment_name, aggregate)
    jobs = max(1, int(jobs))
    status = run_folds(plan, tracking, tracking_args, jobs, threads_per_job, echo, aggregate)
    if not aggregate:
        print(f"[crossval] folds {plan.folds} run, no aggregate (--aggregate_only writes it once all folds are done)",
              flush=True)
        return {"aggregate": None, "status": status, "failed": _failed(status), "paths": {}}
    return _finish(plan.out, plan.folds, status, parent, {
        "dataset_dir": str(plan.dataset_dir),
        "config_files": plan.config_files,
        "overrides": plan.overrides,
        "run_id": run_id,
        "cv_id": plan.cv_id,
        "jobs": jobs,
        "command": command,
        "seconds_this_invocation": round(time.time() - start, 1),
    })


@dataclass
class CrossvalPlan:
    """What a cross-validation run will do, decided before any fold starts (:func:`plan_crossval`).

    Attributes:
        out: the cross-validation folder (absolute).
        dataset_dir: the prepared dataset (absolute).
        folds: every fold of this run, in order.
        todo: the folds to run now (the others are finished and skipped).
        skipped: ``{fold: status}`` of the finished folds.
        config_files: the configs, as the fold processes get them.
        overrides: ``--key value`` arguments of every fold.
        run_id: the bundle target run per fold.
        cv_id: the id grouping the folds.
    """

    out: Path
    dataset_dir: Path
    folds: list[int]
    todo: list[int]
    skipped: dict[str, dict[str, Any]]
    config_files: list[str]
    overrides: list[str]
    run_id: str
    cv_id: str


def plan_crossval(dataset_dir: str | os.PathLike, output_dir: str | os.PathLike, folds: Sequence[int] | None = None,
                  config_files: Sequence[str] = DEFAULT_CONFIG_FILES, overrides: Sequence[str] = (),
                  run_id: str = "train_evaluate", cv_id: str | None = None, aggregate: bool = True) -> CrossvalPlan:
    """Check the output folder and the finished folds, and decide which folds run (arguments of :func:`run_crossval`).

    Raises:
        CrossvalError: ``output_dir`` is not writable, or a finished fold was trained with another recipe.
    """
    out = Path(output_dir).absolute()
    dataset_dir = Path(dataset_dir).absolute()
    folds = _selected_folds(dataset_dir, folds)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".crossval-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CrossvalError(f"--output_dir {out}: cannot write there ({e.strerror or e})") from e
    # a killed earlier run leaves hidden atomic-write temporaries: remove them in the folders this run
    # writes (only: another job may be writing the other folds' folders, from another machine)
    if aggregate:
        remove_stale_temporaries(out)
    for k in folds:
        remove_stale_temporaries(out / f"fold{k}", recursive=True)
    # configs relative to the current folder if they exist there, else to the bundle root (the folds' cwd)
    config_files = [str(Path(c).absolute()) if not os.path.isabs(c) and Path(c).is_file() else str(c)
                    for c in config_files]
    for k in folds:  # before anything runs: a finished fold of another recipe must not count for this one
        if (out / f"fold{k}" / METRICS_FILE).is_file() and run_id == "train_evaluate":
            why = recipe_mismatch(out / f"fold{k}", k, dataset_dir, config_files, overrides)
            if why:
                raise CrossvalError(f"fold {k} in {out / f'fold{k}'} is finished, but {why}; use another "
                                    f"--output_dir, or delete {out / f'fold{k}'} to train it again")
    todo, skipped = [], {}
    for k in folds:
        if (out / f"fold{k}" / METRICS_FILE).is_file():
            # seconds: this invocation's (none); earlier_seconds: what the invocation that ran it recorded
            skipped[str(k)] = {"status": "done (skipped: metrics.json exists)", "seconds": 0.0,
                               "earlier_seconds": _recorded_seconds(out / f"fold{k}")}
            print(f"[crossval] fold {k}: finished before, skipped ({out / f'fold{k}' / METRICS_FILE})", flush=True)
        else:
            todo.append(k)
    return CrossvalPlan(out, dataset_dir, folds, todo, skipped, config_files, list(overrides), run_id,
                        cv_id or default_cv_id(out))


def _tracking(plan: CrossvalPlan, tracking: str | None, tracking_uri: str | None, experiment_name: str,
              aggregate: bool) -> tuple[_ParentRun | None, list[str]]:
    """The parent MLflow run (all-in-one runs only) and the folds' tracking arguments; ``(None, [])`` untracked."""
    if not tracking:
        return None, []
    tracking_uri = tracking_uri or f"sqlite:///{plan.out / 'mlruns.db'}"
    tracking_args = ["--tracking_uri", tracking_uri, "--experiment_name", experiment_name]
    if not aggregate:  # the folds' own handlers would race to create it
        _experiment(tracking_uri, experiment_name)
        return None, tracking_args
    parent = _ParentRun(tracking_uri, experiment_name, plan.cv_id, {
        "dataset_dir": str(plan.dataset_dir), "folds": plan.folds, "config_files": plan.config_files,
        "overrides": " ".join(plan.overrides), "run_id": plan.run_id,
    })
    return parent, [*tracking_args, "--mlflow_parent_run_id", parent.run_id]


def run_folds(plan: CrossvalPlan, tracking: str | None, tracking_args: list[str], jobs: int = 1,
              threads_per_job: int | None = None, echo: bool = True, aggregate: bool = True) -> dict[str, dict[str, Any]]:
    """Run the plan's folds, ``jobs`` at a time, each in its own process; ``{fold: status}`` of every fold.

    Each fold's status goes to its ``fold_status.json`` and, with ``aggregate``, all of them to
    ``crossval_status.json`` as they finish.
    """
    out = plan.out
    # split the cores between the concurrent folds instead of oversubscribing them
    env = bundle_env(threads_per_job or max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None)
    status: dict[str, dict[str, Any]] = dict(plan.skipped)
    status_path = out / "crossval_status.json"
    lock = threading.Lock()

    def run_fold(k: int) -> None:
        fold_dir = out / f"fold{k}"
        cmd = fold_command(k, plan.dataset_dir, fold_dir, plan.config_files, [*plan.overrides, "--cv_id", plan.cv_id],
                           plan.run_id, tracking, tracking_args)
        print(f"[crossval] fold {k}: running, log {fold_dir / 'log.txt'}", flush=True)
        t0 = time.time()
        code = _run_logged(cmd, fold_dir / "log.txt", env, echo and jobs == 1)
        seconds = round(time.time() - t0, 1)
        if code == 0 and (fold_dir / METRICS_FILE).is_file():
            result = {"status": "done", "seconds": seconds}
            print(f"[crossval] fold {k}: done in {seconds} s", flush=True)
        else:
            result = {"status": "failed", "returncode": code, "seconds": seconds, "log": str(fold_dir / "log.txt")}
            print(f"[crossval] fold {k}: FAILED (exit code {code}) after {seconds} s; see {fold_dir / 'log.txt'}",
                  flush=True)
        write_text_atomic(fold_dir / FOLD_STATUS_FILE, json.dumps(result, indent=1) + "\n")
        with lock:
            status[str(k)] = result
            if aggregate:
                write_text_atomic(status_path, json.dumps(status, indent=1) + "\n")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(run_fold, plan.todo))
    status = {str(k): status[str(k)] for k in plan.folds}
    if aggregate:
        write_text_atomic(status_path, json.dumps(status, indent=1) + "\n")
    return status


def _recorded_seconds(fold_dir: Path) -> float | None:
    """The training + evaluation seconds a fold's own ``fold_status.json`` records (``None`` if it has none).

    The file is written by this module (JSON, never unpickled); an unreadable one is only a missing time.
    """
    try:
        seconds = json.loads((fold_dir / FOLD_STATUS_FILE).read_text()).get("seconds")
    except (OSError, ValueError, AttributeError):
        return None
    return float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None


def aggregate_crossval(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    folds: Sequence[int] | None = None,
    tracking: str | None = None,
    tracking_uri: str | None = None,
    experiment_name: str = "medical_matting",
    cv_id: str | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Write the aggregate of folds that ran as separate jobs (``run_crossval(aggregate=False)``), running nothing.

    The tables are those of an all-in-one :func:`run_crossval`: they are computed from the fold
    folders alone (``OUT/fold<k>/metrics.json`` and the per-case files; ``fold_status.json`` for the
    status and time of each fold). With ``tracking``, the parent run of ``cv_id`` is found or created,
    the folds' runs tagged with that ``cv_id`` are nested under it, and the aggregate is logged to it.

    Raises:
        CrossvalError: a fold has no results (its ``metrics.json`` is missing: not run, still
            running or failed); the message names the fold folders and their logs.
    """
    start = time.time()
    out = Path(output_dir).absolute()
    dataset_dir = Path(dataset_dir).absolute()
    folds = _selected_folds(dataset_dir, folds)
    missing = [k for k in folds if not (out / f"fold{k}" / METRICS_FILE).is_file()]
    if missing:
        where = ", ".join(str(out / f"fold{k}") for k in missing)
        raise CrossvalError(
            f"--aggregate_only: no results for fold(s) {' '.join(map(str, missing))} ({METRICS_FILE} missing in {where}); "
            f"run them first (--folds {' '.join(map(str, missing))} --no_aggregate) or see their log.txt"
        )
    remove_stale_temporaries(out)
    cv_id = cv_id or default_cv_id(out)
    status = {}
    for k in folds:
        path = out / f"fold{k}" / FOLD_STATUS_FILE
        status[str(k)] = json.loads(path.read_text()) if path.is_file() else {"status": "done"}
    parent = None
    if tracking:
        tracking_uri = tracking_uri or f"sqlite:///{out / 'mlruns.db'}"
        parent = _ParentRun(tracking_uri, experiment_name, cv_id, {"dataset_dir": str(dataset_dir), "folds": folds})
        parent.adopt_folds()
    return _finish(out, folds, status, parent, {
        "dataset_dir": str(dataset_dir),
        "cv_id": cv_id,
        "aggregate_only": True,
        "command": command,
        "seconds_this_invocation": round(time.time() - start, 1),
    })


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.crossval",
        allow_abbrev=False,  # --fold must reach the check below, not be read as --folds
        description="Train and evaluate every fold of a prepared dataset, resume finished folds, aggregate. "
        "Unknown --key value arguments are passed to every fold's bundle run (e.g. --epochs 20).",
    )
    p.add_argument("--dataset_dir", required=True, help="prepared dataset (datalist.json)")
    p.add_argument("--output_dir", required=True, help="cross-validation folder (fold<k>/ per fold)")
    p.add_argument("--folds", type=int, nargs="*", default=None, help="folds to run (default: all)")
    p.add_argument("--config_file", default=None,
                   help="bundle configs as a list string, default \"['configs/train.yaml','configs/evaluate.yaml']\"")
    p.add_argument("--run_id", default="train_evaluate", help="bundle target per fold")
    p.add_argument("--tracking", default=None,
                   help="mlflow (the bundle's configs/mlflow.yaml) or a MONAI tracking settings file: one MLflow run per fold under a parent run")
    p.add_argument("--tracking_uri", default=None, help="MLflow store (default sqlite:///OUT/mlruns.db)")
    p.add_argument("--experiment_name", default="medical_matting")
    p.add_argument("--cv_id", default=None, help="id grouping the folds (default: from the output folder)")
    p.add_argument("--jobs", type=int, default=1, help="folds trained at the same time, each with cores/jobs threads")
    p.add_argument("--quiet", action="store_true", help="do not echo the folds' output (it stays in fold<k>/log.txt)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--no_aggregate", action="store_true",
                      help="run the folds only, write nothing outside OUT/fold<k>/ (one fold per cluster job)")
    mode.add_argument("--aggregate_only", action="store_true",
                      help="run nothing: aggregate the finished fold folders (error if a fold has no results)")
    return p


def _parse_config_files(value: str | None) -> list[str]:
    if value is None:
        return list(DEFAULT_CONFIG_FILES)
    text = value.strip()
    if text.startswith("["):
        import ast

        return [str(v) for v in ast.literal_eval(text)]
    return [v for v in text.split(",") if v]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: 0 all folds done, 1 a fold failed, 2 the run cannot start (one ``error:`` line)."""
    args, overrides = _parser().parse_known_args(argv)
    bad = [a for a in overrides if a.startswith("--") and a[2:].split("=")[0] in ("fold", "dataset_dir", "ckpt_dir")]
    if bad:
        print(f"error: {' '.join(bad)}: the runner sets these per fold; use --folds / --dataset_dir / --output_dir",
              file=sys.stderr)
        return 2
    try:
        return _run(args, overrides, argv)
    except (CrossvalError, OSError) as e:  # expected: bad folders or datalist; anything else keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, overrides: list[str], argv: Sequence[str] | None) -> int:
    command = shlex.join(["python", "-m", "tools.crossval", *(sys.argv[1:] if argv is None else argv)])
    if args.aggregate_only:
        if overrides:
            raise CrossvalError(f"--aggregate_only runs no fold: {' '.join(overrides)} would be ignored")
        result = aggregate_crossval(
            dataset_dir=args.dataset_dir, output_dir=args.output_dir, folds=args.folds, tracking=args.tracking,
            tracking_uri=args.tracking_uri, experiment_name=args.experiment_name, cv_id=args.cv_id, command=command,
        )
        return 1 if result["failed"] else 0
    result = run_crossval(
        dataset_dir=args.dataset_dir,
        output_dir=args.output_dir,
        folds=args.folds,
        config_files=_parse_config_files(args.config_file),
        overrides=overrides,
        run_id=args.run_id,
        tracking=args.tracking,
        tracking_uri=args.tracking_uri,
        experiment_name=args.experiment_name,
        cv_id=args.cv_id,
        echo=not args.quiet,
        jobs=args.jobs,
        command=command,
        aggregate=not args.no_aggregate,
    )
    return 1 if result["failed"] or (result["aggregate"] or {}).get("missing") else 0


if __name__ == "__main__":
    sys.exit(main())
