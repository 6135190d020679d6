"""Modules of the MONAI Label app (imported as ``lib`` by MONAI Label, see ../__init__.py)."""
