"""``BundleInferTask`` settings that serve the bundle through MONAI Label's generic bundle task.

MONAI Label's ``monailabel.tasks.infer.bundle.BundleInferTask`` reads ``configs/inference.json`` or
``configs/inference.yaml`` unless its ``const`` argument names other files. This bundle's
``configs/inference.yaml`` is the batch workflow (a dataset, per-file failure records, files written
to ``output_dir``), which that task cannot run; :class:`MattingBundleConstants` points it at
``configs/monailabel_inference.yaml`` (see ``scripts.workflows.label_serving``). Importing this module
imports ``monailabel.tasks.infer.bundle``, which needs scikit-image, shapely and torchvision.

Example (a MONAI Label app's ``init_infers``)::

    from monailabel.tasks.infer.bundle import BundleInferTask
    from scripts.workflows.bundle_infer_constants import MattingBundleConstants

    infers["medical_matting"] = BundleInferTask(bundle_root, conf, const=MattingBundleConstants())
"""

from __future__ import annotations

from typing import Sequence

from monailabel.tasks.infer.bundle import BundleConstants

__all__ = ["LABEL_SERVING_CONFIG", "MattingBundleConstants"]

#: the config ``BundleInferTask`` reads with :class:`MattingBundleConstants` (in ``configs/``)
LABEL_SERVING_CONFIG = "monailabel_inference.yaml"


class MattingBundleConstants(BundleConstants):
    """MONAI Label's default bundle settings, except the config: :data:`LABEL_SERVING_CONFIG`.

    Everything else (``configs/metadata.json``, ``models/model.pt``, the config keys
    ``network_def``, ``pre_transforms``, ``inferer``, ``post_transforms``, ``displayable_configs``)
    is MONAI Label's default.
    """

    def configs(self) -> Sequence[str]:
        return [LABEL_SERVING_CONFIG]
