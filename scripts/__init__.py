"""medical_matting bundle code: data, networks, losses, metrics, handlers and workflows.

The MONAI bundle runner puts the bundle root on ``sys.path``, so configs refer to
``scripts.<module>.<Name>``. This package holds only what the configs run; the tools around it
(cross-validation, reproduction, benchmarks, demo) are the ``tools`` package beside it.
"""

from pathlib import Path

from scripts.known_warnings import silence_known_warnings

__all__ = ["BUNDLE_ROOT"]

silence_known_warnings()  # three library warnings that say nothing about a bundle run (scripts/known_warnings.py)

#: the bundle's root folder (``configs/``, ``scripts/``, ``tools/``)
BUNDLE_ROOT = Path(__file__).resolve().parents[1]
