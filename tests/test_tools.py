"""The tools package: recipe table of the reproduction, shared metric tables, command-line spellings."""

import pytest

from scripts.handlers.metric_tables import summarize_values, write_csv_atomic
from tools.crossval import DEFAULT_CONFIG_FILES
from tools.reproduce import RECIPES, recipe_config_files


def test_recipe_ours_is_the_bundle_defaults_and_paper_adds_its_file(bundle_root):
    assert recipe_config_files("ours") == list(DEFAULT_CONFIG_FILES)  # no recipe file, existing or not
    paper = recipe_config_files("paper")
    assert paper[:-1] == list(DEFAULT_CONFIG_FILES) and paper[-1] == RECIPES["paper"]
    assert (bundle_root / paper[-1]).is_file()
    with pytest.raises(ValueError, match="unknown recipe 'mine'"):
        recipe_config_files("mine")


def test_summarize_values_and_csv(tmp_path):
    stats = summarize_values([1.0, None, 3.0, float("nan")])
    assert stats == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 2}
    path = write_csv_atomic(tmp_path / "t.csv", ["name", "value", "n"], [["a", 0.1, 2], ["b", None, 0]])
    assert path.read_text().splitlines() == ["name,value,n", "a,0.1,2", "b,,0"]
