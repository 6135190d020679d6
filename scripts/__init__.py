"""medical_matting bundle code: data, networks, losses, metrics, handlers and workflows.

The MONAI bundle runner puts the bundle root on ``sys.path``, so configs refer to
``scripts.<module>.<Name>``.
"""
