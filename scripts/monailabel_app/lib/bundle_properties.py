"""What MONAI Label's generic bundle path reads from a bundle's inference config, as bundle properties.

``monailabel.tasks.infer.bundle.BundleInferTask`` (the ``monaibundle`` sample app) parses these ids of
``configs/inference.yaml`` (``BundleConstants``: ``bundle_root``, ``device``, ``network_def``, the
first of ``preprocessing`` / ``pre_transforms``, of ``postprocessing`` / ``post_transforms`` and
``inferer``). Written in MONAI's property format (``monai.bundle.properties``) so that
``ConfigWorkflow.check_properties()`` checks a config against them, as model-zoo's
``ci/verify_bundle.py -m full`` does for every app a bundle's ``supported_apps`` names. A table, not
MONAI Label's classes, because importing ``monailabel.tasks.infer.bundle`` needs torchvision and
scikit-image, which the pinned environment does not hold (docs/monailabel.md).
"""

from __future__ import annotations

from typing import Any, Dict

from monai.bundle.properties import InferProperties, MetaProperties
from monai.utils import BundleProperty, BundlePropertyConfig


def _required(key: str, description: str) -> Dict[Any, Any]:
    return {BundleProperty.DESC: description, BundleProperty.REQUIRED: True, BundlePropertyConfig.ID: key}


#: the config ids ``BundleInferTask`` instantiates, by MONAI Label's own names for them
MONAI_LABEL_INFER_PROPERTIES: Dict[str, Dict[Any, Any]] = {
    "bundle_root": _required("bundle_root", "root of the bundle; MONAI Label replaces it with the bundle path"),
    "device": _required("device", "torch device; MONAI Label replaces it with the request's device"),
    "network_def": _required("network_def", "the network, built when models/model.pt exists"),
    "preprocessing": _required("preprocessing", "a Compose (or list) of dictionary transforms of key 'image'"),
    "inferer": _required("inferer", "called as inferer(image batch, network); returns the prediction tensor"),
    "postprocessing": _required("postprocessing", "a Compose (or list) of dictionary transforms of key 'pred'"),
}

#: everything model-zoo's property check asks of a bundle that declares ``monai-label`` in ``supported_apps``
MONAI_LABEL_BUNDLE_PROPERTIES: Dict[str, Dict[Any, Any]] = {
    **MetaProperties,
    **InferProperties,
    **MONAI_LABEL_INFER_PROPERTIES,
}
