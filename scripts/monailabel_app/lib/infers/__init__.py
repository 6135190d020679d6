"""Inference tasks of the MONAI Label app."""
