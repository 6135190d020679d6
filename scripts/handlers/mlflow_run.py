"""One MLflow run per fold across training, validation and evaluation, with parameters, tags and artifacts.

``python -m monai.bundle run ... --tracking mlflow`` appends MONAI's ``MLFlowHandler`` to the
trainer, the validator and the evaluator (``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS``). On its
own that handler logs only ``max_epochs`` / ``epoch_length`` as parameters, and it starts a *new*
run whenever the previous one with the same name is finished -- so a fold's evaluation, or a
training run resumed after it had been closed, would land in a second run.

:class:`MLflowRunHandler` sits before it in the same handler list and does nothing unless a MONAI
``MLFlowHandler`` is attached to the same engine (i.e. unless ``--tracking mlflow`` was given). At
``STARTED`` it picks the run of this fold -- the newest run of the experiment named ``run_name``
whose tag ``run_key`` equals the given ``run_key`` (e.g. the fold's output folder), re-opened if it
was finished, else a new run -- and hands it to the MONAI handler (``cur_run``). Then it logs the
parameters (only those not logged yet: MLflow parameters are immutable; a changed value is
reported as a warning and kept in the tag ``changed_params``), sets the tags (``fold``, ``cv_id``,
``mlflow.parentRunId`` to nest a cross-validation's folds under its parent run, ...). At
``COMPLETED`` it uploads the given artifact files (figures, metric tables) before MONAI's handler
closes the run; on an exception it marks the run ``FAILED`` (a resumed run re-opens it).

The handler relies on Ignite's engine keeping its handlers in ``engine._event_handlers`` (true for
Ignite 0.4 and 0.5) to find the MONAI handler; MONAI's ``MLFlowHandler`` is used for all metric
logging.

Example (bundle config, ``train#handlers``)::

    - _target_: scripts.handlers.mlflow_run.MLflowRunHandler
      run_key: "@output_dir"
      params: {fold: "@fold", learning_rate: "@learning_rate"}
      tags: {fold: "@fold"}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["MLflowRunHandler", "attached_mlflow_handlers", "flatten_params"]

RUN_KEY_TAG = "run_key"


def attached_mlflow_handlers(engine: Engine) -> list:
    """MONAI ``MLFlowHandler`` instances whose methods are attached to ``engine`` (in attachment order)."""
    from monai.handlers import MLFlowHandler

    found: list = []
    for handlers in getattr(engine, "_event_handlers", {}).values():
        for entry in handlers:
            owner = getattr(entry[0], "__self__", None)
            if isinstance(owner, MLFlowHandler) and all(owner is not f for f in found):
                found.append(owner)
    return found


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": "1", "c": "[1, 2]"}`` (MLflow parameter strings, <= 6000 chars)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value if not isinstance(value, tuple) else list(value))[:6000]
    return flat


class MLflowRunHandler:
    """Attach the fold's MLflow run to MONAI's ``MLFlowHandler``; log parameters, tags and artifacts.

    Args:
        run_key: what identifies this fold's run within an experiment and run name (e.g. the fold's
            output folder); runs with another ``run_key`` are never reused.
        params: parameters to log (nested dicts are flattened with dots).
        tags: tags to set (``None`` values are skipped).
        parent_run_id: id of a parent run (``mlflow.parentRunId`` tag; ``None``/empty: none).
        artifacts: files or folders to upload at ``COMPLETED`` (missing ones are skipped).
        artifact_path: folder inside the run's artifacts for ``artifacts``.
        reopen: re-open a finished run with the same name and ``run_key`` (``True``) or start a new
            one (``False``).
        iteration_log: keep MONAI's per-iteration logging (the loss and learning rate of every
            iteration: two database writes per iteration); ``False`` detaches it, leaving the
            per-epoch metrics.

    Example::

        MLflowRunHandler(run_key="eval/fold0", params={"fold": 0}, tags={"cv_id": "cv-1"}).attach(trainer)
    """

    def __init__(
        self,
        run_key: str | os.PathLike,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        artifacts: Sequence[str | os.PathLike] | None = None,
        artifact_path: str | None = None,
        reopen: bool = True,
        iteration_log: bool = True,
    ) -> None:
        self.run_key = str(run_key)
        self.params = dict(params or {})
        self.tags = {k: str(v) for k, v in (tags or {}).items() if v is not None}
        self.parent_run_id = str(parent_run_id) if parent_run_id else None
        self.artifacts = [Path(a) for a in (artifacts or [])]
        self.artifact_path = artifact_path
        self.reopen = reopen
        self.iteration_log = iteration_log
        self.logger = logging.getLogger(__name__)
        self.run_id: str | None = None
        self._mlflow_handlers: list = []

    def attach(self, engine: Engine) -> None:
        """Register on ``STARTED``, ``COMPLETED`` and ``EXCEPTION_RAISED`` (attach before MONAI's handler)."""
        self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.COMPLETED, self.completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.failed)

    def _find_or_create_run(self, handler: Any) -> Any:
        import mlflow

        client = handler.client
        experiment = client.get_experiment_by_name(handler.experiment_name)
        if experiment is None:
            experiment_id = client.create_experiment(handler.experiment_name, artifact_location=handler.artifact_location)
        else:
            experiment_id = experiment.experiment_id
        run_name = handler.run_name or "run"
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{RUN_KEY_TAG}` = '{_quote(self.run_key)}'",
            order_by=["attributes.start_time DESC"],
        )
        runs = [r for r in runs if r.info.run_name == run_name]
        running = mlflow.entities.RunStatus.to_string(mlflow.entities.RunStatus.RUNNING)
        if runs and (self.reopen or runs[0].info.status == running):
            run = runs[0]
            if run.info.status != running:
                client.update_run(run.info.run_id, status=running)
            return client.get_run(run.info.run_id)
        return client.create_run(experiment_id=experiment_id, run_name=run_name, tags={RUN_KEY_TAG: self.run_key})

    def started(self, engine: Engine) -> None:
        """Pick (or create) the run, give it to MONAI's handler(s), log parameters and tags."""
        self._mlflow_handlers = attached_mlflow_handlers(engine)
        if not self._mlflow_handlers:
            return
        if not self.iteration_log:
            for handler in self._mlflow_handlers:
                if engine.has_event_handler(handler.iteration_completed, Events.ITERATION_COMPLETED):
                    engine.remove_event_handler(handler.iteration_completed, Events.ITERATION_COMPLETED)
        first = self._mlflow_handlers[0]
        run = first.cur_run or self._find_or_create_run(first)
        for handler in self._mlflow_handlers:
            if handler.cur_run is None:
                handler.cur_run = run
        self.run_id = run.info.run_id
        client = first.client
        tags = dict(self.tags)
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        logged = client.get_run(self.run_id).data.params
        new, changed = {}, []
        for key, value in flatten_params(self.params).items():
            if key not in logged:
                new[key] = value
            elif logged[key] != value:
                changed.append(f"{key}: {logged[key]} -> {value}")
        if changed:
            self.logger.warning(f"MLflow run {self.run_id}: parameters already logged with other values: {changed}")
            tags["changed_params"] = "; ".join(changed)[:5000]
        import mlflow

        client.log_batch(
            self.run_id,
            params=[mlflow.entities.Param(k, v) for k, v in new.items()],
            tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()],
        )

    def completed(self, engine: Engine) -> None:
        """Upload the artifacts (before MONAI's handler closes the run)."""
        if self.run_id is None or not self._mlflow_handlers:
            return
        client = self._mlflow_handlers[0].client
        for path in self.artifacts:
            if path.is_file():
                client.log_artifact(self.run_id, str(path), artifact_path=self.artifact_path)
            elif path.is_dir():
                client.log_artifacts(self.run_id, str(path), artifact_path=self.artifact_path)

    def failed(self, engine: Engine, e: Exception) -> None:
        """Mark the run ``FAILED``, then re-raise (Ignite's default behaviour)."""
        if self.run_id is not None and self._mlflow_handlers:
            try:
                self._mlflow_handlers[0].client.set_terminated(self.run_id, status="FAILED")
            except Exception as err:  # never hide the original error
                self.logger.warning(f"could not mark MLflow run {self.run_id} as failed: {err}")
        raise e


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
