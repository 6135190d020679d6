"""Tooling around the bundle: cross-validation, reproduction of the paper, the demo, benchmarks,
classic baselines and figures for the docs.

Nothing here is imported by a config: ``configs/*.yaml`` use only ``scripts``. Tools import the
bundle code from ``scripts`` and run from the bundle root (``python -m tools.<name>``).
"""
