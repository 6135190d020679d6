"""Task configs of the MONAI Label app: one module per ``--conf models`` name."""
