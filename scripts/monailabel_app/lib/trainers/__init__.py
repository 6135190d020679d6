"""Training tasks of the MONAI Label app."""
