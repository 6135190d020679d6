"""Data part of the bundle: restricted unpickler, dataset sources, the import of the user's own multi-rater data
(folder per case or CSV manifest, targets from raters), validation, folds, phantom synthesis,
atomic PNG writer, datalist API (see ``docs/data.md``) and MONAI transform pipelines (``transforms``).

Submodules are imported explicitly (``from scripts.data.prepare import prepare_dataset``); this package
imports nothing on its own so that light users (e.g. the phantom generator) do not pay for MONAI.
"""
