"""Bundle foundation: layout, metadata validity and honesty, CI entry point."""

import json
import os
import subprocess
import sys
from importlib.metadata import version

import pytest

from conftest import BUNDLE_ROOT, SHARED

SCHEMA = SHARED / "monai" / "meta_schema_20240725.json"


def test_layout():
    for name in ("configs", "models", "scripts", "tools", "docs", "tests", "LICENSE", "README.md", ".ci/run", "requirements.txt"):
        assert (BUNDLE_ROOT / name).exists(), name
    assert (BUNDLE_ROOT / "scripts" / "__init__.py").is_file() and (BUNDLE_ROOT / "tools" / "__init__.py").is_file()
    assert "Apache License" in (BUNDLE_ROOT / "LICENSE").read_text()


def test_top_level_metadata_is_a_link_to_the_canonical_file():
    top = BUNDLE_ROOT / "metadata.json"
    assert top.is_symlink()
    assert top.resolve() == (BUNDLE_ROOT / "configs" / "metadata.json").resolve()


def test_ci_runs_the_readme_test_command():
    readme = (BUNDLE_ROOT / "README.md").read_text()
    ci = (BUNDLE_ROOT / ".ci" / "run").read_text()
    assert "bash run.sh test" in readme
    assert "bash run.sh test" in ci


def test_metadata_versions_are_the_installed_ones():
    meta = json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text())
    assert meta["monai_version"] == version("monai")
    assert version("torch").split("+")[0] == meta["pytorch_version"]
    assert meta["numpy_version"] == version("numpy")
    for package, pinned in meta["required_packages_version"].items():
        assert version(package) == pinned, package
    pins = {}
    for line in (BUNDLE_ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, ver = line.split("==")
            pins[name.split("[")[0].lower()] = ver
    for package, pinned in meta["required_packages_version"].items():
        assert pins.get(package.lower()) == pinned, f"{package} not pinned to {pinned} in requirements.txt"


def test_no_torchvision_requirement():
    for name in ("requirements.txt", "requirements-nodeps.txt", "constraints.txt"):
        lines = (BUNDLE_ROOT / name).read_text().lower().splitlines()
        requirements = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
        assert requirements, name
        assert not any(r.startswith(("torchvision", "nvidia-")) for r in requirements), name


@pytest.mark.skipif(not SCHEMA.is_file(), reason=f"bundle metadata schema not found at {SCHEMA} (../shared is absent)")
def test_verify_metadata_offline():
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", "configs/metadata.json",
         "--filepath", str(SCHEMA)],
        cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "no_proxy": "*"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "metadata is verified with no error" in result.stdout + result.stderr
