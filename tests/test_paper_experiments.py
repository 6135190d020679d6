"""tools.paper_experiments: the plan is valid against the bundle's config, and the report is written from the runs."""

import json

import yaml

from tools.paper_experiments import EXPERIMENTS, PAPER_TABLE2, TABLES, main, write_report
from tools.reproduce import RECIPES


def test_every_experiment_changes_existing_settings(bundle_root):
    train = yaml.safe_load((bundle_root / "configs" / "train.yaml").read_text())
    names = [e.name for e in EXPERIMENTS]
    assert len(names) == len(set(names))
    for exp in EXPERIMENTS:
        assert exp.table in TABLES and exp.recipe in RECIPES
        keys = exp.overrides[::2]
        assert all(k.startswith("--") and k[2:] in train for k in keys), (exp.name, keys)
    # Table 2: every row the paper published except the reference recipe is one run, with the paper's label
    table2 = {e.label for e in EXPERIMENTS if e.table == "table2"}
    assert set(PAPER_TABLE2) - table2 == {"region-aware, 3 scales, 2x2"}  # the reference recipe itself


def _run(sad, seconds=600.0, recipe="quick", overrides=()):
    metrics = {"sad_unknown": sad, "mse_unknown": 0.04, "grad_unknown": 0.5}
    return {"recipe": recipe, "overrides": list(overrides), "mean": metrics, "std": {k: 0.01 for k in metrics},
            "total_seconds": seconds, "command": "python -m tools.paper_experiments --only x", "commit": "0" * 40,
            "machine": {"cpu": "cpu"}, "load_average_before": [0.1], "load_average_after": [2.0]}


def test_report_fills_in_as_runs_finish(tmp_path):
    reference = {"recipes": {"quick": _run(0.40, 900.0), "paper": _run(0.9, recipe="paper")},
                 "seed_summaries": {"quick": {"seeds": [0, 1, 2], "mean": {"sad_unknown": 0.41},
                                             "std": {"sad_unknown": 0.005}}}}
    resumed = {**_run(0.43, 664.0, overrides=("--kernel_size", "1")), "resumed": True,
               "fold_seconds_recorded": {"1": 737.0, "0": 712.0, "2": 330.0, "3": 334.0}}
    results = {"experiments": {"scales_1": _run(0.44, overrides=("--scales", "1")),
                               "no_flips": _run(0.42, 60.0, overrides=("--test_time_flips", "none")),
                               "kernel_1": resumed},
               "references": {"half_width": {"label": "half-width default", "note": "the default of c7237fa",
                                             "seed0": _run(0.50, 571.0), "seeds": None}}}
    path = tmp_path / "report.md"
    write_report(results, reference, path)
    text = path.read_text()
    row = next(line for line in text.splitlines() if "(`scales_1`)" in line)
    # a row measured on the earlier (half-width) default is compared with that default, not today's
    assert "0.4400 +/- 0.0100" in row and "-12.0 %" in row and "600 s" in row
    assert "| half-width default (seed 0, `000000000000`) | 0.5000 +/- 0.0100" in text
    row = next(line for line in text.splitlines() if "(`no_flips`)" in line)
    assert "+5.0 % (vs quick)" in row and "60 s" in row
    assert "(`kernel_3`) | not run |" in text
    # a resumed run's wall time covers its last invocation; every fold's own time is shown beside it
    row = next(line for line in text.splitlines() if "(`kernel_1`)" in line)
    assert "664 s (resumed; this invocation only; each fold's own time: 712, 737, 330, 334 s)" in row
    assert "| quick recipe (seed 0, `000000000000`) | 0.4000 +/- 0.0100" in text
    assert "0.4100 +/- 0.0050" in text  # the spread over seeds
    assert "Reference `half_width`: the default of c7237fa" in text
    assert "| region-aware, 3 scales, 1x1 | 0.0406 | 0.0198 | 0.0554 |" in text  # published, labelled
    assert "literal reading, no normalisation" in text
    for heading, _ in TABLES.values():
        assert f"## {heading}" in text
    table2 = text[text.index("## Table 2"):text.index("## Recipe ablation")]
    assert "quick recipe (seed 0" not in table2  # no Table 2 row is compared with the quick recipe


def test_list_shows_what_is_done(tmp_path, capsys):
    (tmp_path / "paper_experiments.json").write_text(json.dumps({"experiments": {"kernel_1": _run(0.4)}}))
    assert main(["--list", "--results_dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(EXPERIMENTS)
    assert any(line.startswith("kernel_1") and " done " in line for line in lines)
    assert any(line.startswith("kernel_3") and " to run " in line for line in lines)


def test_an_evaluation_of_retrained_models_is_stale(tmp_path):
    """An evaluation-only row (no_flips) records the digests of the models it evaluated; once the
    recipe's runs are retrained (other model.pt bytes), the row is stale and is evaluated again."""
    from tools.paper_experiments import evaluated_model_digests, stale_evaluation

    exp = next(e for e in EXPERIMENTS if e.evaluate_models_of is not None)
    train_only = next(e for e in EXPERIMENTS if e.evaluate_models_of is None)
    for k in range(2):
        model = tmp_path / exp.evaluate_models_of / f"fold{k}" / "models" / "model.pt"
        model.parent.mkdir(parents=True)
        model.write_bytes(b"weights %d" % k)
    entry = {"evaluated_model_sha256": evaluated_model_digests(exp, tmp_path, 2)}
    assert set(entry["evaluated_model_sha256"]) == {"0", "1"}
    assert not stale_evaluation(exp, entry, tmp_path, 2)
    (tmp_path / exp.evaluate_models_of / "fold1" / "models" / "model.pt").write_bytes(b"retrained")
    assert stale_evaluation(exp, entry, tmp_path, 2)
    assert stale_evaluation(exp, {}, tmp_path, 2)  # recorded before digests existed
    assert not stale_evaluation(train_only, {}, tmp_path, 2)  # trained rows are not evaluations


def test_decoder_table_compares_each_seed_and_the_seed_means(tmp_path):
    reference = {"recipes": {"quick": {**_run(0.40), "train_seed": 0}, "quick_seed1": {**_run(0.42), "train_seed": 1},
                             "paper": _run(0.9, recipe="paper")}}
    results = {"experiments": {"decoder_bilinear_seed0": _run(0.44, recipe="quick"),
                               "decoder_bilinear_seed1": _run(0.42, recipe="quick")}}
    path = tmp_path / "report.md"
    write_report(results, reference, path)
    lines = path.read_text().splitlines()
    row = next(line for line in lines if "(`decoder_bilinear_seed0`)" in line)
    assert "0.4400 +/- 0.0100" in row and "+10.0 % (vs seed 0)" in row
    row = next(line for line in lines if "(`decoder_bilinear_seed1`)" in line)
    assert "+0.0 % (vs seed 1)" in row
    # mean and population std of the seed means (0.44, 0.42), against the quick recipe's seed means (0.40, 0.42)
    row = next(line for line in lines if line.startswith("| **bilinear, 2 seeds"))
    assert "**0.4300 +/- 0.0100**" in row and "+4.9 %" in row and "1200 s" in row
    row = next(line for line in lines if line.startswith("| **region-aware (the quick recipe), 2 seeds"))
    assert "**0.4100 +/- 0.0100**" in row
    assert "(`decoder_bilinear_seed2`) | not run |" in "\n".join(lines)
    assert "(`decoder_local_ensemble_seed0`) | not run |" in "\n".join(lines)
