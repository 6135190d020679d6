"""Task config ``medical_matting`` (``--conf models medical_matting``): the bundle's model in MONAI Label.

Server options (``monailabel start_server ... --conf KEY VALUE``), all optional:

============================  =======================================================================
``bundle_root``               the bundle folder (default: the bundle this app lives in)
``inference_config``          config holding ``network_def`` (default ``configs/inference.yaml``)
``model_path``                trained weights (default ``<bundle_root>/models/model.pt``)
``allow_untrained``           ``true``: without weights, run random weights with a warning in every
                              answer instead of refusing (default ``false``; env
                              ``MEDICAL_MATTING_ALLOW_UNTRAINED``)
``network_overrides``         JSON dict of ``ConfigParser`` overrides for both the inference and the
                              training config, e.g. ``{"network_def#prob_filters": [8, 16, 16, 16]}``
``train_dir``                 parent of the training run folders (default ``<bundle_root>/runs/monailabel``)
``train_epochs``              default epochs of a server training run (default 50)
``train_num_folds``           folds of the generated datalist (default 5; one is held out)
``train_overrides``           JSON dict of further ``monai.bundle run training`` overrides
``tracking_uri``              MLflow tracking URI for server training runs (default: none)
``allow_training``            ``true``: ``POST /train/medical_matting`` and ``PUT``/``DELETE /model/...``
                              may change the served model (default ``false``: refused with 403)
``allow_remote_without_auth`` ``true``: start even when bound to a non-loopback address without
                              MONAI Label authentication (default ``false``: refuse to start)
============================  =======================================================================

The inference and training configs are read from a snapshot of ``<bundle_root>/configs`` taken at
start-up (``lib.config_snapshot.ConfigSnapshot``), never from a file a request could have written.

Example::

    monailabel start_server --app scripts/monailabel_app --studies studies \\
        --conf models medical_matting --conf allow_untrained false
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import strtobool

from ..bundle_model import DEFAULT_CONFIG, BundleModel
from ..infers.matting import MattingInferTask
from ..config_snapshot import ConfigSnapshot
from ..trainers.matting import MattingTrainTask

__all__ = ["MedicalMatting", "default_bundle_root", "conf_flag"]

logger = logging.getLogger(__name__)


def default_bundle_root() -> Path:
    """The bundle this app belongs to: ``<bundle_root>/scripts/monailabel_app/lib/configs/<this file>``."""
    return Path(__file__).resolve().parents[4]


def conf_flag(conf: Dict[str, Any], key: str, default: str = "false") -> bool:
    """A ``--conf KEY true|false`` switch."""
    return bool(strtobool(str(conf.get(key, default))))


def _json_dict(conf: Dict[str, Any], key: str) -> Dict[str, Any]:
    value = conf.get(key)
    if not value:
        return {}
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except ValueError as e:
        raise ValueError(f"--conf {key}: expected a JSON object, got {value!r} ({e})") from e
    if not isinstance(parsed, dict):
        raise ValueError(f"--conf {key}: expected a JSON object, got {value!r}")
    return parsed


class MedicalMatting(TaskConfig):
    """Inference task ``medical_matting`` and training task ``medical_matting`` of the bundle's model."""

    def __init__(self) -> None:
        super().__init__()
        self.model: Optional[BundleModel] = None
        self.snapshot: Optional[ConfigSnapshot] = None

    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        bundle_root = Path(conf.get("bundle_root") or default_bundle_root()).expanduser().resolve()
        allow = conf.get("allow_untrained", os.environ.get("MEDICAL_MATTING_ALLOW_UNTRAINED", "false"))
        inference_config = Path(conf.get("inference_config", DEFAULT_CONFIG))
        inference_config = inference_config if inference_config.is_absolute() else bundle_root / inference_config
        self.snapshot = ConfigSnapshot.for_bundle(bundle_root, extra=[inference_config])
        self.model = BundleModel(
            bundle_root,
            config_file=self.snapshot.path(inference_config),
            weights_path=conf.get("model_path") or None,
            overrides=_json_dict(conf, "network_overrides"),
            allow_untrained=bool(strtobool(str(allow))),
        )
        self.path = [str(self.model.weights_path)]
        self.labels = {"foreground": 1}
        logger.info(f"+++ medical_matting: bundle {bundle_root}; {self.model.status()['message']}")

    def infer(self) -> Union[InferTask, Dict[str, InferTask]]:
        return {self.name: MattingInferTask(self.model)}

    def trainer(self) -> Optional[TrainTask]:
        return MattingTrainTask(
            self.model,
            train_dir=self.conf.get("train_dir") or None,
            epochs=int(self.conf.get("train_epochs", 50)),
            num_folds=int(self.conf.get("train_num_folds", 5)),
            tracking_uri=self.conf.get("tracking_uri") or None,
            train_overrides=_json_dict(self.conf, "train_overrides"),
            allow_training=conf_flag(self.conf, "allow_training"),
            snapshot=self.snapshot,
        )
