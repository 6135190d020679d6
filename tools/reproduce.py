"""``python -m tools.reproduce``: the paper's whole Brain-growth protocol in one command.

Prepares the Brain-growth dataset (from ``../shared/data/brain-growth`` when it is there, else from
the published addresses with their pinned sha256), runs the 4-fold cross-validation of a training
*recipe* (train every fold, evaluate the final model of the fold on its test fold; see
``tools/crossval.py``), and writes the report:

- ``docs/results/brain_growth_cv.json``: per recipe, per fold and mean +/- std of every metric,
  with ``command``, ``commit``, ``machine``, ``versions`` and ``total_seconds``;
- ``docs/results/brain_growth.md``: the tables beside the paper's published Table 1 rows;
- ``docs/results/figures/brain_growth_ours_fold0.png``: fold 0's evaluation figure of the default's seed-0 run
  (every fold's figure stays in the run's folder under ``runs/``).

A recipe is ``configs/train.yaml`` + ``configs/evaluate.yaml`` with an optional override file
merged after them (:data:`RECIPES`): ``ours`` is the bundle's defaults as they are, ``paper`` adds
``configs/recipes/brain_growth_paper.yaml`` (the paper's section 3.1 settings). The model reported
for a fold is the one at the end of training: no choice ever looks at the test fold.

Example::

    python -m tools.reproduce                  # recipe ours: the bundle defaults
    python -m tools.reproduce --recipe paper
    # any other --key value is a bundle override; such a run needs folders of its own
    python -m tools.reproduce --epochs 100 --work_dir runs/ep100 --results_dir runs/ep100/results
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from scripts import BUNDLE_ROOT
from scripts.atomic import write_text_atomic
from scripts.handlers.metric_tables import summarize_values
from scripts.metric_names import METRIC_NAMES
from tools.crossval import DEFAULT_CONFIG_FILES, run_crossval
from tools.provenance import git_commit, library_versions, load_average, machine_info
from tools.tables import fmt, md_row, md_rule

#: recipe name -> the override files merged, in order, after train.yaml and evaluate.yaml (none: the bundle defaults)
RECIPES: dict[str, tuple[str, ...]] = {
    "ours": (),
    "quick": ("configs/recipes/quick.yaml",),
    "paper": ("configs/recipes/brain_growth_paper.yaml",),
    # the paper's recipe with batch normalisation (as its authors most likely ran it)
    "paper_bn": ("configs/recipes/brain_growth_paper.yaml", "configs/recipes/brain_growth_paper_bn.yaml"),
    # the Medical Matting code base's Brain-growth configuration on the paper's network
    "paper_mm_code": ("configs/recipes/brain_growth_paper.yaml", "configs/recipes/brain_growth_medical_matting_code.yaml"),
}
SHARED_DIR = BUNDLE_ROOT.parent / "shared" / "data" / "brain-growth"
#: where a recipe's recorded runs and report live (a run with bundle overrides must use other folders)
DEFAULT_WORK_DIR = BUNDLE_ROOT / "runs" / "brain-growth"
DEFAULT_RESULTS_DIR = BUNDLE_ROOT / "docs" / "results"
# The paper's Table 1, Brain-growth column, as published (Xu et al., MICCAI 2024): targets, not results.
PAPER_TABLE1 = {
    "Ours (Xu et al. 2024, as published)": {"sad_unknown": 0.4032, "mse_unknown": 0.0405, "grad_unknown": 0.5411},
    "Medical Matting (Wang et al. 2021, as published in Xu et al. 2024)": {
        "sad_unknown": 0.4150, "mse_unknown": 0.0467, "grad_unknown": 0.6015},
}
# the quality goal for the mean over folds (about 25 % below the paper's Ours); the bar: no fold worse than the paper
TARGET = {"sad_unknown": 0.30, "mse_unknown": 0.030, "grad_unknown": 0.40}
PAPER_ROW = "Ours (Xu et al. 2024, as published)"
COLUMNS = METRIC_NAMES
#: column headings of the tables (metric name -> heading); others are shown by name
HEADINGS = {"sad_unknown": "SAD", "mse_unknown": "MSE", "grad_unknown": "Grad", "conn_unknown": "Conn",
            "sad_image": "SAD (image)", "mse_image": "MSE (image)", "grad_image": "Grad (image)",
            "conn_image": "Conn (image)", "ged": "GED", "dice": "Dice", "unc_corr": "unc. corr."}


def run_name(recipe: str, train_seed: int) -> str:
    """Key of a run in the report: the recipe, with ``_seed<N>`` for training seeds other than 0."""
    return recipe if train_seed == 0 else f"{recipe}_seed{train_seed}"


def goal_check(run: dict[str, Any]) -> dict[str, Any]:
    """Does a run meet the quality goal (mean over folds <= TARGET) and bar (no fold worse than the paper)?"""
    paper = PAPER_TABLE1[PAPER_ROW]
    mean_ok = {m: run["mean"].get(m) is not None and run["mean"][m] <= v for m, v in TARGET.items()}
    worse = [f"fold {k} {m}" for k, values in run["folds"].items() for m, v in paper.items()
             if values.get(m) is None or values[m] > v]
    return {"goal_met": all(mean_ok.values()), "goal_per_metric": mean_ok, "folds_worse_than_paper": worse}


def seed_summary(results: dict[str, Any], recipe: str) -> dict[str, Any] | None:
    """Mean and standard deviation over the training seeds of a recipe's fold means (None: fewer than 2 seeds)."""
    runs = {k: r for k, r in results.get("recipes", {}).items() if r.get("recipe", k) == recipe}
    if len(runs) < 2:
        return None
    summary: dict[str, Any] = {"runs": sorted(runs), "seeds": sorted(r.get("train_seed", 0) for r in runs.values()),
                               "mean": {}, "std": {}}
    for c in COLUMNS:
        stats = summarize_values(r["mean"].get(c) for r in runs.values())  # population std, as over folds
        if stats["n"]:
            summary["mean"][c], summary["std"][c] = stats["mean"], stats["std"]
    summary["total_seconds"] = [r["total_seconds"] for r in runs.values()]
    return summary


class ReproduceError(RuntimeError):
    """Folds of a recipe failed or are missing (the message names the logs; rerunning resumes)."""


def recipe_config_files(recipe: str) -> list[str]:
    """The bundle config files of a recipe, relative to the bundle root, in merge order."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {sorted(RECIPES)}.")
    for override in RECIPES[recipe]:
        if not (BUNDLE_ROOT / override).is_file():
            raise FileNotFoundError(f"recipe {recipe!r}: {override} not found in {BUNDLE_ROOT}.")
    return [*DEFAULT_CONFIG_FILES, *RECIPES[recipe]]


def prepare_brain_growth(data_dir: Path, source: str | None, trimaps: str | None, seed: int) -> Path:
    """Prepare the dataset unless ``data_dir/datalist.json`` exists; local shared copy first."""
    from scripts.data.prepare import prepare_dataset

    if (data_dir / "datalist.json").is_file():
        print(f"[data] Brain-growth already prepared at {data_dir}", flush=True)
        return data_dir
    if source is None and (SHARED_DIR / "brain_growth_alpha.zip").is_file():
        source = str(SHARED_DIR / "brain_growth_alpha.zip")
    if trimaps is None and (SHARED_DIR / "trimap_brain.zip").is_file():
        trimaps = str(SHARED_DIR / "trimap_brain.zip")
    # None -> the published addresses with their pinned sha256 (scripts/data)
    return Path(prepare_dataset("brain-growth", data_dir, source=source, trimaps=trimaps, folds=4, seed=seed))


def fold_figures(cv_dir: Path, recipe: str, results_dir: Path) -> list[str]:
    """Copy fold 0's evaluation figure next to the report (one figure per report); returns its path relative to it.

    The other folds' figures stay in ``cv_dir`` (under ``runs/``, not tracked): a figure committed for
    every fold and run would be a new binary in the history at every rerun."""
    first = sorted(cv_dir.glob("fold*/figure_fold*.png"))[:1]
    if not first:
        return []
    dest = results_dir / "figures" / f"brain_growth_{recipe}_{first[0].parent.name}.png"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(first[0], dest)
    return [str(dest.relative_to(results_dir))]


def _bundle_relative(path: str | Path) -> str:
    """``path`` relative to the bundle root when it lies inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(BUNDLE_ROOT))
    except ValueError:
        return str(path)



def write_markdown(results: dict[str, Any], path: Path) -> None:
    """The human-readable report: our rows per recipe, the paper's published rows, then each recipe's
    summary over training seeds (``results["seed_summaries"]``, see :func:`seed_summary`)."""
    lines = [
        "# Brain-growth: 4-fold cross-validation",
        "",
        "Written by `python -m tools.reproduce` (do not edit by hand; rerun the command). Metrics follow",
        "the standard alpha-matting benchmark (docs/metrics.md): 8-bit quantised mattes, SAD and Grad and",
        "Conn divided by 1000, inside the evaluation trimap's unknown region (value 128) unless the column",
        "says `image` (whole image). GED and Dice compare the Prob. U-Net's samples with the 7 raters.",
        "`unc. corr.` is the correlation of the uncertainty map with the raters' disagreement",
        "(docs/metrics.md). Mean +/- standard deviation over the 4 folds (each fold: mean over its test cases).",
        "",
        "## Mean over folds",
        "",
        md_row(["row", *(HEADINGS.get(c, c) for c in COLUMNS)]),
        md_rule(len(COLUMNS) + 1),
    ]
    for name, run in results["recipes"].items():
        mean, std = run["mean"], run["std"]
        lines.append(md_row([f"ours, `{name}`", *(fmt(mean.get(c), std.get(c)) for c in COLUMNS)]))
    for name, row in PAPER_TABLE1.items():
        lines.append(md_row([name, *(fmt(row.get(c)) for c in COLUMNS)]))
    lines.append(md_row(["goal", *(fmt(TARGET.get(c)) for c in COLUMNS)]))
    lines.append("")
    lines.append("The two published rows are the paper's Table 1 numbers, copied as targets; they were not")
    lines.append("measured here. Lower is better for every column except Dice and unc. corr.")
    for recipe, summary in sorted(results.get("seed_summaries", {}).items()):
        lines += ["", f"## Recipe `{recipe}` over training seeds {summary['seeds']}", "",
                  "Mean +/- standard deviation over the seeds of each run's mean over folds (runs: "
                  + ", ".join(f"`{r}`" for r in summary["runs"]) + "; wall times "
                  + ", ".join(f"{t:.0f} s" for t in summary["total_seconds"]) + ").", "",
                  md_row(HEADINGS.get(c, c) for c in COLUMNS), md_rule(len(COLUMNS)),
                  md_row(fmt(summary["mean"].get(c), summary["std"].get(c)) for c in COLUMNS)]
    for name, run in results["recipes"].items():
        lines += ["", f"## Recipe `{name}`", ""]
        check = goal_check(run)
        lines += [f"- command: `{run['command']}`", "- configs: " + ", ".join(f"`{c}`" for c in run["config_files"]),
                  f"- commit: `{run['commit']}`", f"- wall time: {run['total_seconds']:.0f} s "
                  f"({run['total_seconds'] / 60:.1f} min) for preparation, {len(run['folds'])} folds and the report",
                  f"- machine: {run['machine']['cpu']}, {run['machine']['logical_cpus']} logical CPUs, "
                  f"{run.get('jobs', 1)} folds at a time, {run['machine']['platform']}",
                  f"- load average before / after: {run.get('load_average_before')} / {run.get('load_average_after')}",
                  "- versions: " + ", ".join(f"{k} {v}" for k, v in run["versions"].items()),
                  f"- goal (mean SAD <= {TARGET['sad_unknown']}, MSE <= {TARGET['mse_unknown']}, Grad <= "
                  f"{TARGET['grad_unknown']}): {'met' if check['goal_met'] else 'not met'}; folds worse than the "
                  f"paper's row: {', '.join(check['folds_worse_than_paper']) or 'none'}", ""]
        lines.append(md_row(["fold", "cases", *COLUMNS, "seconds"]))
        lines.append(md_rule(len(COLUMNS) + 3))
        for k, values in run["folds"].items():
            lines.append(md_row([k, run["num_cases"][k], *(fmt(values.get(c)) for c in COLUMNS),
                                 run["fold_seconds"].get(k, "n/a")]))
        lines.append("")
        for fig in run["figures"]:
            lines.append(f"![{name} {fig}]({fig})")
        if run.get("cv_dir"):
            lines.append(f"Every fold's figure: `{_bundle_relative(run['cv_dir'])}/fold<k>/figure_fold<k>.png` (not tracked).")
    write_text_atomic(path, "\n".join(lines) + "\n")


def run_recipe(recipe: str, data_dir: Path, work_dir: Path, results_dir: Path, command: str,
               start: float, extra_overrides: Sequence[str] = (), jobs: int = 2, train_seed: int = 0,
               name: str | None = None, copy_figures: bool = True) -> dict[str, Any]:
    """Cross-validate one recipe and return its report entry (commit taken before the folds run).

    ``name`` (default :func:`run_name`) is the run's folder in ``work_dir``; ``copy_figures=False``
    leaves the fold figures in that folder instead of copying fold 0's next to the report."""
    commit = git_commit()
    load_before = load_average()
    name = name or run_name(recipe, train_seed)
    cv_dir = work_dir / name
    if train_seed != 0:
        extra_overrides = [*extra_overrides, "--seed", str(train_seed)]
    config_files = [str(BUNDLE_ROOT / c) for c in recipe_config_files(recipe)]
    result = run_crossval(data_dir, cv_dir, config_files=config_files,
                          overrides=list(extra_overrides), echo=False, command=command,
                          jobs=jobs)
    if result["failed"] or result["aggregate"]["missing"]:
        raise ReproduceError(f"recipe {recipe}: folds failed or missing: {result['failed'] or result['aggregate']['missing']}"
                           f" (logs in {cv_dir}/fold<k>/log.txt); rerun the same command to resume.")
    agg = result["aggregate"]
    return {
        "recipe": recipe,
        "train_seed": train_seed,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "command": command,
        "config_files": [str(Path(c).relative_to(BUNDLE_ROOT)) for c in config_files],
        "overrides": list(extra_overrides),
        "jobs": jobs,
        "commit": commit,
        "machine": machine_info(),
        "versions": library_versions(),
        "total_seconds": round(time.time() - start, 1),
        # folds finished by an earlier invocation (skipped now) make total_seconds short of the run's cost
        "resumed": any(str(s.get("status", "")).startswith("done (skipped") for s in result["status"].values()),
        "fold_seconds": {k: s.get("seconds") for k, s in result["status"].items()},
        # each fold's own time: a skipped fold carries what its earlier run recorded (None: not recorded)
        "fold_seconds_recorded": {k: s.get("earlier_seconds", s.get("seconds")) for k, s in result["status"].items()},
        "folds": agg["folds"],
        "num_cases": agg["num_cases"],
        "mean": agg["mean"],
        "std": agg["std"],
        "pooled_mean": agg["pooled_mean"],
        "figures": fold_figures(cv_dir, name, results_dir) if copy_figures and name == "ours" else [],
        "cv_dir": str(cv_dir),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="ours",
                        help="ours: the bundle defaults; quick: + configs/recipes/quick.yaml; paper: + configs/recipes/brain_growth_paper.yaml; "
                             "paper_bn, paper_mm_code: + the files of RECIPES")
    parser.add_argument("--source", default=None, help="brain_growth_alpha.zip (path or URL); default ../shared, else the published URL")
    parser.add_argument("--trimaps", default=None, help="trimap_brain.zip (path or URL); default as --source")
    parser.add_argument("--data_dir", default=str(BUNDLE_ROOT / "data" / "brain-growth"))
    parser.add_argument("--work_dir", default=str(DEFAULT_WORK_DIR))
    parser.add_argument("--results_dir", default=str(DEFAULT_RESULTS_DIR))
    parser.add_argument("--seed", type=int, default=0, help="fold assignment seed")
    parser.add_argument("--train_seed", type=int, default=0,
                        help="training seed (the config's seed); other than 0 the run is reported as <recipe>_seed<N>")
    parser.add_argument("--jobs", type=int, default=2,
                        help="folds trained at once, each with cores/jobs threads (2 on the 2-core machines)")
    parser.add_argument("--fresh", action="store_true", help="delete this recipe's previous run instead of resuming it")
    # any other --key value pair is a bundle override for every fold, e.g. --epochs 10
    args, overrides = parser.parse_known_args(argv)
    try:
        return _run(args, overrides, argv)
    except (ValueError, OSError, ReproduceError) as e:  # bad data, folders, failed folds: one line; else a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, overrides: list[str], argv: Sequence[str] | None) -> int:
    """The body of :func:`main` (its errors are reported by it)."""
    command = "python -m tools.reproduce " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    start = time.time()
    work_dir, results_dir = Path(args.work_dir).absolute(), Path(args.results_dir).absolute()
    if overrides and (work_dir.resolve() == DEFAULT_WORK_DIR.resolve() or results_dir.resolve() == DEFAULT_RESULTS_DIR.resolve()):
        # the run is keyed by recipe and seed only: with the default folders it would resume the
        # recipe's recorded folds (trained without the overrides) and overwrite its recorded report
        raise ReproduceError(f"the overrides {' '.join(overrides)} change recipe {args.recipe!r}: give the run "
                             f"folders of its own (--work_dir and --results_dir), not {DEFAULT_WORK_DIR} or "
                             f"{DEFAULT_RESULTS_DIR}, which hold the recipe's recorded runs.")
    name = run_name(args.recipe, args.train_seed)
    if args.fresh and (work_dir / name).exists():
        shutil.rmtree(work_dir / name)
    data_dir = prepare_brain_growth(Path(args.data_dir).absolute(), args.source, args.trimaps, args.seed)
    entry = run_recipe(args.recipe, data_dir, work_dir, results_dir, command, start, overrides, args.jobs,
                       args.train_seed)

    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / "brain_growth_cv.json"
    results = json.loads(json_path.read_text()) if json_path.is_file() else {}
    results.setdefault("recipes", {})[name] = entry
    for recipe in sorted({run.get("recipe", key) for key, run in results["recipes"].items()}):
        summary = seed_summary(results, recipe)
        if summary is not None:
            results.setdefault("seed_summaries", {})[recipe] = summary
    results["paper_table1_as_published"] = PAPER_TABLE1
    results["goal"] = TARGET
    # top-level keys: the latest run of this report (per recipe in "recipes")
    results.update({"command": command, "commit": entry["commit"], "total_seconds": entry["total_seconds"]})
    write_text_atomic(json_path, json.dumps(results, indent=1) + "\n")
    write_markdown(results, results_dir / "brain_growth.md")
    mean = entry["mean"]
    print(f"[reproduce] {name}: SAD {mean['sad_unknown']:.4f} MSE {mean['mse_unknown']:.4f} "
          f"Grad {mean['grad_unknown']:.4f} Conn {mean['conn_unknown']:.4f} in {entry['total_seconds']:.0f} s; "
          f"report {results_dir / 'brain_growth.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
