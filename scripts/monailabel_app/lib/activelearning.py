"""Uncertainty-driven active learning: a scoring method that stores each study's uncertainty and a
strategy that proposes the unlabeled study the model is least sure about (docs/monailabel.md).

- ``POST /scoring/uncertainty``: :class:`UncertaintyScoring` runs the served model on every study
  without a final label and stores, in the study's datastore info under ``uncertainty``, the mean
  of its uncertainty map (``mean``) and the fraction of pixels whose uncertainty is above
  ``threshold`` (``area``), with the weights file and its modification time that produced them;
- ``POST /activelearning/uncertainty``: :class:`MostUncertain` proposes the unlabeled study with
  the largest stored score (option ``score``: ``mean`` | ``area``);
- :func:`install_activelearning_guards`: an unknown strategy or scoring method, a bad option, or a
  strategy that cannot answer is a 4xx with the reason (MONAI Label answers 500 for the first
  three, and starts a scoring job that fails for an unknown method).

MONAI Label's own ``Epistemic`` strategy reads a score that only its dropout-based scoring writes;
this network's uncertainty map is the Probabilistic U-Net's, so the score is computed from it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

from .errors import InvalidRequestError, MattingAppError, NoTrainedWeightsError, UnknownTaskError
from .request_guards import finite_float, guard_function, http_error

logger = logging.getLogger(__name__)

#: the image-info key the scores are stored under
INFO_KEY = "uncertainty"
#: the scores :class:`UncertaintyScoring` stores and :class:`MostUncertain` ranks by
SCORES = ("mean", "area")
#: option keys MONAI Label and viewers add to every active-learning / scoring request
_CLIENT_KEYS = {"strategy", "method", "client_id", "label_tag", "labels", "device", "gpus", "model", "bundle_path"}


def _unlabeled(datastore: Datastore, request: Mapping[str, Any]) -> List[str]:
    return sorted(datastore.get_unlabeled_images(request.get("label_tag") or DefaultLabelTag.FINAL.value,
                                                 request.get("labels")))


def _check_keys(request: Mapping[str, Any], allowed: set, what: str) -> None:
    unknown = sorted(str(k)[:64] for k in request if k not in allowed and k not in _CLIENT_KEYS)
    if unknown:
        raise InvalidRequestError(f"{what}: unknown option(s) {unknown}; it takes {sorted(allowed)}")


def _volume_map_scores(result_file: str, threshold: float) -> Dict[str, float]:
    """``{"mean", "area"}`` of a volume's uncertainty map, which the infer task streamed to the NIfTI
    ``result_file``: read back one slice at a time (bounded memory), then the file is removed."""
    import nibabel as nib

    try:
        volume = nib.load(result_file).dataobj
        total = above = count = 0.0
        for k in range(volume.shape[-1]):
            plane = np.asarray(volume[..., k], dtype=np.float64)
            total, above, count = total + float(plane.sum()), above + float((plane > threshold).sum()), count + plane.size
    finally:
        if os.path.exists(result_file):
            os.remove(result_file)
    return {"mean": total / max(count, 1.0), "area": above / max(count, 1.0)}


class UncertaintyScoring(ScoringMethod):
    """Store the uncertainty of every unlabeled study, as the served model sees it.

    Args:
        infer_task: the app's ``MattingInferTask``: its image reading (size limits, intensity rule)
            and its inference (bounded internal grid) are used as they are for ``/infer``.
        threshold: default uncertainty level of the ``area`` score (request option ``threshold``).
    """

    def __init__(self, infer_task: Any, threshold: float = 0.5) -> None:
        super().__init__("Uncertainty of each unlabeled study (mean of the uncertainty map, and the area above "
                         "a threshold), stored in the study's info for the 'uncertainty' strategy")
        self.infer_task = infer_task
        self.threshold = threshold

    def check_options(self, request: Mapping[str, Any]) -> float:
        """The ``threshold`` of a request, checked (400 for unknown options or a bad value)."""
        _check_keys(request, {"threshold"}, "scoring 'uncertainty'")
        return finite_float(request.get("threshold", self.threshold), "threshold", 0.0, 1.0)

    def score_image(self, path: str, threshold: float, device: str = "cpu") -> Dict[str, float]:
        """``{"mean", "area"}`` of the uncertainty map of the image file ``path``."""
        task = self.infer_task
        data: Dict[str, Any] = {"image": path, "image_path": path, "map_type": "uncertainty"}
        data = task.run_pre_transforms(data, task.pre_transforms(data))
        data = task.run_inferer(data, device=device)
        if "pred" in data:
            uncertainty = np.asarray(data["pred"], dtype=np.float64)
            return {"mean": float(uncertainty.mean()), "area": float((uncertainty > threshold).mean())}
        return _volume_map_scores(data["result_file"], threshold)

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        """Score the unlabeled studies; one that cannot be read is reported and keeps no score.

        A study whose stored score came from the same weights file (path and modification time) and
        threshold keeps it: MONAI Label reruns every scoring method after each proposal and each
        training, so only new studies and new weights cost an inference.

        Returns:
            ``{"scores": {id: {"mean", "area"}}, "computed": [ids scored now], "failed": {id: reason},
            "threshold", "weights"}``.

        Raises:
            NoTrainedWeightsError, InvalidCheckpointError: the model cannot run (the job fails).
        """
        threshold = self.check_options(request)
        device = str(request.get("device") or "cpu")
        status = self.infer_task.model.status()
        weights = status["weights_path"]
        if not status["trained"]:  # untrained (or allow_untrained) weights rank nothing: the job fails with the reason
            raise NoTrainedWeightsError(f"uncertainty scoring needs trained weights; {status['message']}")
        mtime = os.path.getmtime(weights)
        stamp = {"threshold": threshold, "weights": weights, "weights_mtime": mtime, "trained": status["trained"]}
        scores: Dict[str, Dict[str, float]] = {}
        computed: List[str] = []
        failed: Dict[str, str] = {}
        for image_id in _unlabeled(datastore, request):
            stored = datastore.get_image_info(image_id).get(INFO_KEY) or {}
            if all(stored.get(k) == v for k, v in stamp.items()) and "mean" in stored:
                scores[image_id] = {k: stored[k] for k in SCORES}
                continue
            try:
                scores[image_id] = self.score_image(datastore.get_image_uri(image_id), threshold, device)
            except MattingAppError as e:
                if e.status_code >= 500 or e.status_code == 409:  # the model, not this image: stop the job
                    raise
                failed[image_id] = str(e)
                datastore.update_image_info(image_id, {INFO_KEY: {"error": str(e), "ts": int(time.time())}})
                logger.warning(f"uncertainty scoring: {image_id}: {e}")
                continue
            computed.append(image_id)
            datastore.update_image_info(image_id, {INFO_KEY: {**scores[image_id], **stamp, "ts": int(time.time())}})
            logger.info(f"uncertainty scoring: {image_id}: mean {scores[image_id]['mean']:.4f}, "
                        f"area {scores[image_id]['area']:.4f}")
        return {"scores": scores, "computed": computed, "failed": failed, "threshold": threshold, "weights": weights}


class MostUncertain(Strategy):
    """Propose the unlabeled study with the largest stored uncertainty score (ties: the first id).

    Studies without a score (added after the last scoring, or unreadable) are proposed only when no
    unlabeled study has one; with no score at all the request is refused (409: run the scoring).
    """

    def __init__(self, score: str = "mean") -> None:
        super().__init__("The unlabeled study the model is least sure about (POST /scoring/uncertainty first; "
                         "option score: mean | area)")
        self.score = score

    def check_options(self, request: Mapping[str, Any]) -> str:
        """The ``score`` of a request, checked (400 for unknown options or values)."""
        _check_keys(request, {"score"}, "strategy 'uncertainty'")
        score = request.get("score", self.score)
        if score not in SCORES:
            raise InvalidRequestError(f"strategy 'uncertainty': unknown score {str(score)[:64]!r}; choose one of {list(SCORES)}")
        return score

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Optional[Dict[str, Any]]:
        score = self.check_options(request)
        images = _unlabeled(datastore, request)
        if not images:
            return None
        ranked = []
        for image_id in images:
            value = (datastore.get_image_info(image_id).get(INFO_KEY) or {}).get(score)
            if isinstance(value, (int, float)) and math.isfinite(value):
                ranked.append((-float(value), image_id))
        if not ranked:
            raise NoUncertaintyScoresError(f"no unlabeled study has an uncertainty score yet ({len(images)} unlabeled): "
                                           "run POST /scoring/uncertainty first")
        value, image_id = min(ranked)
        logger.info(f"uncertainty strategy: {image_id} ({score} {-value:.4f}; {len(ranked)} of {len(images)} scored)")
        return {"id": image_id, "uncertainty": {score: -value}}


def scoring_job_waiting() -> bool:
    """Whether a background scoring job is queued and not started yet.

    MONAI Label queues a run of every scoring method after each proposal and each training; a job
    that has not started will read the datastore and the weights as they are when it starts, so a
    second waiting one would only repeat it (each job is a process that loads the app).
    """
    from monailabel.utils.async_tasks.utils import tasks

    return any(task.get("status") == "SUBMITTED" for task in tasks("scoring"))


class NoUncertaintyScoresError(MattingAppError):
    """The uncertainty strategy was asked before any unlabeled study was scored."""

    status_code = 409


def install_activelearning_guards(app_instance: Callable[[], Any]) -> None:
    """Refuse unknown strategies / scoring methods and bad options with a 4xx before MONAI Label acts.

    Wraps ``monailabel.endpoints.activelearning.sample`` and ``monailabel.endpoints.scoring.run_method``
    (what their routes call); a :class:`MattingAppError` a strategy or a synchronous scoring raises
    becomes its HTTP answer as well. Idempotent.
    """
    from monailabel.endpoints import activelearning as al_ep
    from monailabel.endpoints import scoring as scoring_ep

    def checker(registry: str, argument: str, what: str) -> Callable[[Dict[str, Any]], None]:
        """The check of one route: the named task exists in the app's ``registry``, its options are valid."""

        def check(a: Dict[str, Any]) -> None:
            tasks = getattr(app_instance(), registry)
            name = a.get(argument)
            task = tasks.get(name) if isinstance(name, str) else None
            if task is None:
                raise UnknownTaskError(f"unknown {what} {str(name)[:64]!r}; available: {sorted(tasks)}")
            if hasattr(task, "check_options"):
                task.check_options(a.get("params") or {})

        return check

    check_strategy = checker("_strategies", "strategy", "strategy")
    check_method = checker("_scoring_methods", "method", "scoring method")
    for module, name, check in ((al_ep, "sample", check_strategy), (scoring_ep, "run_method", check_method)):
        guard_function(module, name, check)
        guarded = getattr(module, name)
        if getattr(guarded, "__refuses_in_call__", False):
            continue

        def refusing(*args, __call=guarded, **kwargs):
            try:
                return __call(*args, **kwargs)
            except MattingAppError as e:
                raise http_error(e) from e

        refusing.__medical_matting_guard__ = True
        refusing.__refuses_in_call__ = True
        setattr(module, name, refusing)
