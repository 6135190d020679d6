"""MONAI Label app of the medical_matting bundle (docs/monailabel.md).

Start it with MONAI Label's own command, from the bundle root::

    monailabel start_server --app scripts/monailabel_app --studies STUDIES_DIR \\
        --conf models medical_matting --host 127.0.0.1 --port 8000

It serves

- ``POST /infer/medical_matting?image=<id>``: the alpha matte of a study image (option
  ``map_type``: ``alpha`` | ``uncertainty`` | ``mask``), with the input's geometry;
- ``POST /train/medical_matting``: the bundle's training on the final labels of the datastore,
  publishing ``models/model.pt``;

plus everything MONAI Label serves for any app (``/info/``, ``/datastore/``, ``/activelearning/``...).
Requests the app refuses get a 4xx with the reason in ``detail`` (404 unknown image, 409 no trained
weights, 415 unsupported image, 400 bad option), and the server keeps running.
"""

from __future__ import annotations

import logging
import os
from typing import Dict

from fastapi import HTTPException

import monailabel
from lib.configs.medical_matting import MedicalMatting
from lib.errors import MattingAppError, StudyImageNotFoundError
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

logger = logging.getLogger(__name__)

#: ``--conf models`` names -> task configs
CONFIGS = {"medical_matting": MedicalMatting}


class MedicalMattingApp(MONAILabelApp):
    """MONAI Label app serving the bundle's ``medical_matting`` model (see the module docstring).

    Args:
        app_dir: this folder (MONAI Label passes it).
        studies: the studies folder (or a DICOMweb URL, as for any MONAI Label app).
        conf: ``--conf`` key/value pairs; ``models`` selects the task configs (comma separated,
            default ``medical_matting``); see ``lib/configs/medical_matting.py`` for the others.
    """

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
        names = [m.strip() for m in (conf.get("models") or "medical_matting").split(",") if m.strip()]
        if "all" in names:
            names = list(CONFIGS)
        unknown = [n for n in names if n not in CONFIGS]
        if unknown:
            raise ValueError(f"--conf models: unknown model(s) {unknown}; available: {list(CONFIGS)}")
        self.model_dir = os.path.join(app_dir, "model")
        self.models: Dict[str, TaskConfig] = {}
        for name in names:
            config = CONFIGS[name]()
            config.init(name, self.model_dir, conf, None)
            self.models[name] = config
        status = "; ".join(c.model.status()["message"] for c in self.models.values())
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"Medical matting (MONAI Label {monailabel.__version__})",
            description=f"Alpha mattes and uncertainty maps of medical images. {status}",
            version="1.0",
        )

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for config in self.models.values():
            tasks = config.infer()
            infers.update(tasks if isinstance(tasks, dict) else {config.name: tasks})
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        trainers: Dict[str, TrainTask] = {}
        for config in self.models.values():
            task = config.trainer()
            if task:
                trainers[config.name] = task
        return trainers

    def on_init_complete(self) -> None:
        super().on_init_complete()
        for name, config in self.models.items():
            status = config.model.status()
            (logger.info if status["trained"] else logger.warning)(f"{name}: {status['message']}")

    def infer(self, request, datastore=None):
        """MONAI Label's ``infer`` with a 404 for unknown images and 4xx answers for refused requests."""
        image = request.get("image")
        try:
            if isinstance(image, str) and image and not os.path.exists(image):
                store = datastore if datastore else self.datastore()
                if not store.get_image_uri(image):
                    raise StudyImageNotFoundError(
                        f"image '{image}' is not in the datastore ({self.studies}); "
                        "GET /datastore/?output=all lists the image ids")
            return super().infer(request, datastore)
        except MattingAppError as e:
            logger.warning(f"infer refused ({e.status_code}): {e}")
            raise HTTPException(status_code=e.status_code, detail=str(e)) from e

    def train(self, request):
        """MONAI Label's ``train`` with 4xx answers for refused requests (``run_sync=true``)."""
        try:
            return super().train(request)
        except MattingAppError as e:
            logger.warning(f"train refused ({e.status_code}): {e}")
            raise HTTPException(status_code=e.status_code, detail=str(e)) from e
