"""MONAI's ``MLFlowHandler`` with one MLflow run per fold, its parameters, tags and the executed config.

The bundle's tracking settings (``configs/mlflow.yaml``, given as ``--tracking configs/mlflow.yaml``:
MONAI's own mechanism, ``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS`` in form) append this handler
to the trainer, the validator and the evaluator. On its own, MONAI's handler logs only
``max_epochs`` / ``epoch_length`` as parameters and starts a *new* run whenever the previous run of
the same name is finished, so a fold's evaluation, or a training resumed after it had been closed,
would land in a second run. :class:`FoldMLFlowHandler` extends it, through its public ``start``:

- the run is the newest run of the experiment named ``run_name`` whose tag ``run_key`` equals the
  given ``run_key`` (e.g. the fold's output folder), re-opened if it was finished, else a new run;
- the given parameters are logged (only those not logged yet: MLflow parameters are immutable; a
  changed value is reported as a warning and kept in the tag ``changed_params``), the tags are set
  (``fold``, ``cv_id``, ``mlflow.parentRunId`` to nest a cross-validation's folds under its parent);
- on an exception the run is marked ``FAILED`` (a resumed run re-opens it);
- with ``model_path`` (the trainer's handler: the fold's final ``model.pt``), the trained network
  is logged as an MLflow model of the run at ``COMPLETED`` (:func:`log_network_model`).

Artifacts (figures, metric tables, the executed config) are MONAI's ``artifacts``, uploaded at
``COMPLETED``. :func:`executed_config_path` gives the executed config file that MONAI's tracking
patch writes into ``output_dir`` whatever form ``--output_dir`` takes.

Example (a tracking settings file, ``configs.trainer``)::

    _target_: scripts.handlers.mlflow_run.FoldMLFlowHandler
    run_key: "@mlflow_run_key"
    params: "@mlflow_params"
    tracking_uri: "@tracking_uri"
    experiment_name: "@experiment_name"
    run_name: "@run_name"
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

__all__ = ["FoldMLFlowHandler", "executed_config_path", "flatten_params", "fluent_tracking_uri", "log_network_model"]

RUN_KEY_TAG = "run_key"
#: name of the logged model within its run (``runs:/<run_id>/model``)
MODEL_NAME = "model"


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


def executed_config_path(save_execute_config: Any, output_dir: str | os.PathLike) -> list[str]:
    """The executed config file that MONAI's tracking patch wrote, as a list for ``artifacts``.

    MONAI (1.6) writes the file to ``output_dir/config_<time>.json`` but, when ``output_dir`` is a
    plain path rather than an expression, sets ``save_execute_config`` to the text
    ``"<output_dir> + '/config_<time>.json'"``. The file name is taken from that text and joined
    to ``output_dir``; an existing path is used as is; ``False`` / ``None`` give no artifact.
    """
    if not save_execute_config or save_execute_config is True:
        return []
    path = str(save_execute_config)
    if os.path.isfile(path):
        return [path]
    match = re.search(r"'/?(config_[0-9_]+\.json)'\s*$", path)
    if match:
        candidate = os.path.join(str(output_dir), match.group(1))
        if os.path.isfile(candidate):
            return [candidate]
    newest = sorted(glob.glob(os.path.join(str(output_dir), "config_*.json")), key=os.path.getmtime)
    return newest[-1:]


@contextlib.contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``mlflow.start_run``, ``mlflow.pytorch.log_model`` / ``load_model``) pointed at
    ``uri`` for the block; afterwards the process's tracking URI and ``MLFLOW_TRACKING_URI`` are as they were
    (``mlflow.set_tracking_uri`` exports that variable, and MONAI's ``MLFlowHandler`` prefers it over its own
    ``tracking_uri``, so a leaked value would send later runs to another store)."""
    import mlflow

    explicit = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    environment = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(explicit)
        if environment is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = environment


def log_network_model(client: Any, run_id: str, model_path: str | os.PathLike, name: str = MODEL_NAME) -> str:
    """Log the ``MedicalMattingNet`` of a trained ``model.pt`` as an MLflow model of run ``run_id``.

    The network is built from the file's own constructor arguments (``_extra_state``), loaded with
    ``torch.load(weights_only=True)`` and scripted: the model is MLflow's ``pytorch`` flavour
    holding a TorchScript file, so ``mlflow.pytorch.load_model(uri)`` returns it without the
    bundle's code (``forward`` -> alpha, ``predict`` -> alpha and uncertainty) and
    ``mlflow.pyfunc.load_model(uri).predict(images)`` maps a float32 array (B, C, H, W) of any H, W
    to the alpha matte (B, 1, H, W). The arguments are the model's ``metadata["network_args"]``.

    Returns:
        the model's URI (``models:/<model_id>``).

    Raises:
        FileNotFoundError: ``model_path`` does not exist.
        ValueError: the file does not carry the network's arguments.
    """
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models.signature import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from scripts.networks import MedicalMattingNet
    from scripts.workflows.inference import load_trained_network

    path = os.fspath(model_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MLflow model: the trained weights {path} do not exist")
    network = load_trained_network(path).eval()  # refuses weights without the network's arguments
    args = MedicalMattingNet.checkpoint_config(network.state_dict())
    scripted = torch.jit.script(network)
    channels = int(args.get("in_channels", 1))
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, channels, -1, -1))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, -1, -1))]))
    with fluent_tracking_uri(client.tracking_uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            scripted, name=name, serialization_format="pickle",  # a TorchScript archive: torch.jit.load reads it
            signature=signature, metadata={"network_args": args, "weights": path},
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    return info.model_uri


class FoldMLFlowHandler(MLFlowHandler):
    """``MLFlowHandler`` that keeps one run per ``run_key`` and logs parameters and tags (module docstring).

    Args:
        run_key: what identifies this fold's run within an experiment and run name (e.g. the fold's
            output folder); runs with another ``run_key`` are never reused.
        params: parameters to log (nested dicts are flattened with dots).
        tags: tags to set (``None`` values are skipped).
        parent_run_id: id of a parent run (``mlflow.parentRunId`` tag; ``None``/empty: none).
        reopen: re-open a finished run with the same name and ``run_key`` (``True``) or start a new one.
        model_path: the trained ``model.pt`` to log as the run's MLflow model at ``COMPLETED``
            (:func:`log_network_model`; ``None``: no model).
        kwargs: ``MLFlowHandler`` arguments (``tracking_uri``, ``experiment_name``, ``run_name``,
            ``artifacts``, ``iteration_log``, ``close_on_complete``, ...).

    Example::

        FoldMLFlowHandler(run_key="eval/fold0", params={"fold": 0}, tracking_uri=uri, run_name="fold0").attach(trainer)
    """

    def __init__(
        self,
        run_key: str | os.PathLike,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        reopen: bool = True,
        model_path: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        artifacts = kwargs.pop("artifacts", None)
        if isinstance(artifacts, Sequence) and not isinstance(artifacts, (str, bytes)):
            flat: list = []
            for item in artifacts:  # nested lists (e.g. executed_config_path's) are flattened
                flat.extend(item if isinstance(item, (list, tuple)) else [item])
            artifacts = [str(a) for a in flat if a]
        super().__init__(artifacts=artifacts or None, **kwargs)
        self.run_key = str(run_key)
        self.params = dict(params or {})
        self.tags = {k: str(v) for k, v in (tags or {}).items() if v is not None}
        self.parent_run_id = str(parent_run_id) if parent_run_id else None
        self.reopen = reopen
        self.model_path = os.fspath(model_path) if model_path else None
        self.run_id: str | None = None  # the fold's run (kept after MONAI's close)
        self.model_uri: str | None = None  # the logged model, once logged

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        if not engine.has_event_handler(self.failed, Events.EXCEPTION_RAISED):
            engine.add_event_handler(Events.EXCEPTION_RAISED, self.failed)

    def _fold_run(self) -> Any:
        import mlflow

        run_name = self.run_name or "run"
        runs = self.client.search_runs(
            [self.experiment.experiment_id],
            filter_string=f"tags.`{RUN_KEY_TAG}` = '{_quote(self.run_key)}'",
            order_by=["attributes.start_time DESC"],
        )
        runs = [r for r in runs if r.info.run_name == run_name]
        running = mlflow.entities.RunStatus.to_string(mlflow.entities.RunStatus.RUNNING)
        if runs and (self.reopen or runs[0].info.status == running):
            if runs[0].info.status != running:
                self.client.update_run(runs[0].info.run_id, status=running)
            return self.client.get_run(runs[0].info.run_id)
        return self.client.create_run(self.experiment.experiment_id, run_name=run_name, tags={RUN_KEY_TAG: self.run_key})

    def start(self, engine: Engine) -> None:
        """Pick (or create) the fold's run, then MONAI's start, then the parameters and tags."""
        import mlflow

        self._set_experiment()
        if self.cur_run is None and self.experiment is not None:
            self.cur_run = self._fold_run()
        super().start(engine)
        run_id = self.run_id = self.cur_run.info.run_id
        tags = dict(self.tags)
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        logged = self.client.get_run(run_id).data.params
        new, changed = {}, []
        for key, value in flatten_params(self.params).items():
            if key not in logged:
                new[key] = value
            elif logged[key] != value:
                changed.append(f"{key}: {logged[key]} -> {value}")
        if changed:
            engine.logger.warning(f"MLflow run {run_id}: parameters already logged with other values: {changed}")
            tags["changed_params"] = "; ".join(changed)[:5000]
        self.client.log_batch(
            run_id,
            params=[mlflow.entities.Param(k, v) for k, v in new.items()],
            tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()],
        )

    def complete(self) -> None:
        """MONAI's artifacts, then the trained network as the run's MLflow model (with ``model_path``)."""
        super().complete()
        if self.model_path and self.cur_run is not None:
            self.model_uri = log_network_model(self.client, self.cur_run.info.run_id, self.model_path)

    def failed(self, engine: Engine, e: Exception) -> None:
        """Mark the run ``FAILED``, then re-raise (Ignite's default behaviour)."""
        if self.cur_run is not None:
            try:
                self.client.set_terminated(self.cur_run.info.run_id, status="FAILED")
            except Exception as err:  # never hide the original error
                engine.logger.warning(f"could not mark MLflow run {self.cur_run.info.run_id} as failed: {err}")
            self.cur_run = None
        raise e


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
