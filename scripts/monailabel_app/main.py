"""MONAI Label app of the medical_matting bundle (docs/monailabel.md).

Start it with MONAI Label's own command, from the bundle root, on the loopback address (see
docs/monailabel.md, "Security", to reach it from other machines)::

    monailabel start_server --app scripts/monailabel_app --studies STUDIES_DIR \\
        --conf models medical_matting --host 127.0.0.1 --port 8000

It serves

- ``POST /infer/medical_matting?image=<id>``: the alpha matte of a study image (option
  ``map_type``: ``alpha`` | ``uncertainty`` | ``mask``), with the input's geometry;
- ``POST /train/medical_matting``: the bundle's training on the final labels of the datastore,
  publishing ``models/model.pt`` (only with ``--conf allow_training true``);
- ``POST /scoring/uncertainty`` and ``POST /activelearning/uncertainty``: each unlabeled study's
  uncertainty, and the study the model is least sure about (``lib/activelearning.py``);

plus everything MONAI Label serves for any app (``/info/``, ``/datastore/``, ``/activelearning/random``...).
Requests the app refuses get a 4xx with the reason in ``detail`` (400 bad option or id, 403 training
not enabled, 404 unknown image / model, 409 no trained weights or changed configs, 413 image above
the documented maximum size, 415 unsupported or unreadable image; 503 too many waiting inferences),
and the server keeps running. Inference runs in the server's thread pool, at most ``infer_workers``
at once (one of them always free for images within the internal grid), so a large image does not
stall other requests; a volume whose client disconnects stops at the next batch of slices and frees
its slot. ``POST /batch/infer`` runs only with ``run_sync=true`` (in the slots; 400 otherwise).

Every id, tag, file name and option a request carries is checked before MONAI Label uses it
(``lib/names.py``, ``lib/datastore.py``, ``lib/request_guards.py``): ids and tags are plain names
confined to the datastore, uploads are images, and nothing a request writes is ever read as configuration. The server refuses to start with the
studies folder inside the bundle, or bound to a non-loopback address without authentication.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Mapping

import monailabel
import lib.slots as slots
from lib.activelearning import MostUncertain, UncertaintyScoring, install_activelearning_guards, scoring_job_waiting
from lib.configs.medical_matting import MedicalMatting, conf_flag, default_bundle_root
from lib.errors import FinalLabelExistsError, MattingAppError, TrainingDisabledError, UnknownTaskError
from lib.datastore import SecureLocalDatastore, SecureSessions
from lib.names import bind_host, check_bind_host, check_name, check_studies_location, is_plain_name, unknown_image
from lib.request_guards import http_error, install_request_guards, trusted_inputs
from lib.slots import configure_slots
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.interfaces.utils.app import app_instance

logger = logging.getLogger(__name__)

#: ``--conf models`` names -> task configs
CONFIGS = {"medical_matting": MedicalMatting}


class StartupRefused(RuntimeError):
    """The server must not start; the one-line reason is logged as an error first."""


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
        bundle_root = Path(conf.get("bundle_root") or default_bundle_root()).expanduser().resolve()
        try:
            check_studies_location(studies, bundle_root)
            check_bind_host(bind_host(sys.argv), settings.MONAI_LABEL_AUTH_ENABLE,
                            conf_flag(conf, "allow_remote_without_auth"))
        except RuntimeError as e:
            message = f"medical_matting: refusing to start: {e}"
            logger.error(message)
            raise StartupRefused(message) from None
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
        configure_slots(int(conf.get("infer_workers", 2)))
        install_request_guards(app_instance)
        install_activelearning_guards(app_instance)

    # ------------------------------------------------------------------ MONAI Label hooks
    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        logger.info(f"Init Datastore for: {self.studies} (plain ids and image files only)")
        return SecureLocalDatastore(
            self.studies,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _load_sessions(self, load=False):
        if not load:
            return None
        return SecureSessions(settings.MONAI_LABEL_SESSION_PATH, settings.MONAI_LABEL_SESSION_EXPIRY)

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

    def init_strategies(self) -> Dict[str, Strategy]:
        return {**super().init_strategies(), "uncertainty": MostUncertain()}

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        task = self._infers.get("medical_matting")
        return {"uncertainty": UncertaintyScoring(task)} if task is not None else {}

    def async_scoring(self, method, params=None):
        """MONAI Label's rerun of every scoring method (after a proposal or a training), unless one is already queued."""
        if not method and scoring_job_waiting():
            return {}
        return super().async_scoring(method, params)

    def on_init_complete(self) -> None:
        super().on_init_complete()
        for name, config in self.models.items():
            status = config.model.status()
            (logger.info if status["trained"] else logger.warning)(f"{name}: {status['message']}")
        for name, task in self._trainers.items():
            if not getattr(task, "allow_training", False):
                logger.info(f"{name}: training through the server is disabled (--conf allow_training true enables it)")

    # ------------------------------------------------------------------ request checks
    def check_infer_params(self, model: Any, params: Mapping[str, Any]) -> Dict[str, Any]:
        """The options of an infer request, checked by the model's task (see ``MattingInferTask.check_options``)."""
        task = self._infers.get(model) if isinstance(model, str) else None
        if task is None:
            raise UnknownTaskError(f"unknown model {str(model)[:64]!r}; GET /info/ lists the models")
        return task.check_options(params)

    def model_settings(self, model: Any) -> Dict[str, Any]:
        """The inference settings of a served model (``max_internal_size``, ``max_image_pixels``, ...)."""
        config = self.models.get(model) if isinstance(model, str) else None
        if config is None:
            raise UnknownTaskError(f"unknown model {str(model)[:64]!r}; GET /info/ lists the models")
        return config.model.settings()

    def check_train_request(self, model: Any, params: Mapping[str, Any]) -> None:
        """Refuse a training request before MONAI Label queues it (disabled, bad options, changed configs)."""
        task = self._trainers.get(model) if isinstance(model, str) else None
        if task is None:
            raise UnknownTaskError(f"unknown trainer {str(model)[:64]!r}; GET /info/ lists the trainers")
        task.check_request(params)
        task.snapshot.verify()

    def check_model_change(self, model: Any) -> None:
        """Uploading or deleting the served weights (``/model/``) needs ``--conf allow_training true``."""
        if not any(getattr(t, "allow_training", False) for t in self._trainers.values()):
            raise TrainingDisabledError("changing the served model through the server is disabled; the operator "
                                        "enables it with --conf allow_training true")
        if model not in self._infers:
            raise UnknownTaskError(f"unknown model {str(model)[:64]!r}; GET /info/ lists the models")

    # ------------------------------------------------------------------ infer / train
    def infer(self, request, datastore=None):
        """MONAI Label's ``infer`` on a datastore id (or this request's checked upload), 4xx when refused.

        The id is resolved here, so MONAI Label never sees a path; an id the datastore does not
        hold gets one answer (404), whatever it looks like and whether or not such a file exists.
        """
        try:
            image = request.get("image")
            store = datastore if datastore else self.datastore()
            if isinstance(image, str) and image in trusted_inputs():
                return super().infer({**request, "save_label": False}, datastore)
            uri = store.get_image_uri(image) if is_plain_name(image) else ""
            if not uri:
                raise unknown_image(image)
            save = bool(request.get("save_label"))
            tag = check_name(self._label_tag(request), "label_tag")
            if save:
                self._check_final_label(store, image, tag, request)
            result = super().infer({**request, "image": uri, "save_label": False}, store)
            if save and result.get("file") and os.path.exists(result["file"]):
                result["label"] = store.save_label(image, result["file"], tag,
                                                   {"model": request.get("model"), "params": result.get("params")})
                result["label_tag"] = tag  # the tag written, whatever MONAI Label's defaults say
            return result
        except MattingAppError as e:
            raise http_error(e) from e

    @staticmethod
    def _label_tag(request: Mapping[str, Any]) -> str:
        tag = request.get("label_tag") or DefaultLabelTag.ORIGINAL.value
        return tag.value if isinstance(tag, DefaultLabelTag) else tag

    @staticmethod
    def _check_final_label(store: Datastore, image: str, tag: str, request: Mapping[str, Any]) -> None:
        """A prediction never replaces a human final label unless the request says ``overwrite_final: true``."""
        if tag == DefaultLabelTag.FINAL.value and store.get_label_uri(image, tag) and request.get("overwrite_final") is not True:
            raise FinalLabelExistsError(
                f"image {image!r} has a final label; a prediction replaces it only with the option overwrite_final: true "
                "(or save it under another label_tag)")

    def batch_infer(self, request, datastore=None):
        """MONAI Label's batch inference, each image through the inference slots (``SLOTS``), never
        replacing a final label unless ``overwrite_final: true``: images that hold one are skipped and
        listed with the reason. Only the synchronous route reaches it, from the thread pool (``lib.request_guards``
refuses background batches: they would run in a subprocess outside the slots)."""
        import torch

        store = datastore if datastore else self.datastore()
        if not torch.cuda.is_available():  # MONAI Label spreads images over the GPUs (none: modulo by zero)
            request = {**request, "multi_gpu": False, "device": "cpu"}
        try:
            tag = check_name(self._label_tag(request), "label_tag")
        except MattingAppError as e:
            raise http_error(e) from e
        skipped: Dict[str, Any] = {}

        def infer_in_slot(req, ds):
            image = req.get("image")
            try:
                self._check_final_label(ds, image, tag, {**request, **req})
            except FinalLabelExistsError as e:
                skipped[image] = {"skipped": str(e), "label_tag": tag}
                return {}
            with slots.SLOTS.slot(large=True):  # queued behind interactive requests' slot
                return self.infer({**req, "label_tag": tag}, ds)

        result = self._batch_infer(request, store, infer_in_slot) if self._batch_infer else {}
        result.update(skipped)
        return result

    def train(self, request):
        """MONAI Label's ``train`` with 4xx answers for refused requests (``run_sync=true``)."""
        try:
            if request.get("model") not in self._trainers:
                raise UnknownTaskError(f"unknown trainer {str(request.get('model'))[:64]!r}")
            return super().train(request)
        except MattingAppError as e:
            raise http_error(e) from e
