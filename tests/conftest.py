"""Shared test fixtures and paths."""

import os
import sys
from pathlib import Path

import pytest

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDICAL_MATTING_SHARED", BUNDLE_ROOT.parent / "shared"))
BRAIN_GROWTH_DIR = SHARED / "data" / "brain-growth"

if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))

# keep the suite predictable on the 2-core machines
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def bundle_root() -> Path:
    return BUNDLE_ROOT


@pytest.fixture(scope="session")
def brain_growth_dir() -> Path:
    if not (BRAIN_GROWTH_DIR / "brain_growth_alpha.zip").is_file():
        pytest.skip(f"shared Brain-growth data not found at {BRAIN_GROWTH_DIR} (../shared is absent)")
    return BRAIN_GROWTH_DIR
