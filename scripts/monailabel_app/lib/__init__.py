"""Modules of the MONAI Label app (imported as ``lib`` by MONAI Label, see ../__init__.py)."""

import sys
from pathlib import Path

# the bundle's package `scripts` (networks, transforms, inferer, writer) is shared with the app
_BUNDLE_ROOT = str(Path(__file__).resolve().parents[3])
if _BUNDLE_ROOT not in sys.path:
    sys.path.insert(0, _BUNDLE_ROOT)
