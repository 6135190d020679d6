"""MONAI Label training task ``medical_matting``: the bundle's training on the labels saved through the server.

Steps of one run (``POST /train/medical_matting``):

1. the datastore's (image, final label) pairs become a prepared dataset (``lib.trainers.dataset``)
   in ``<train_dir>/<run>/dataset`` with ``num_folds`` folds;
2. the bundle's own training runs on it as a subprocess, exactly as on the command line::

       python -m monai.bundle run training --config_file configs/train.yaml --bundle_root ROOT \
           --dataset_dir .../dataset --fold F --epochs N --ckpt_dir .../ckpt --output_dir .../eval \
           [--tracking mlflow --tracking_uri URI] [network overrides]

   (fold ``F`` is held out of training, as in every bundle training run, so at least 2 labelled
   images are needed; checkpoints go to the run folder, so a run never resumes another one);
3. the run's final ``model.pt`` is published atomically to the weights file the inference task
   serves (``<bundle_root>/models/model.pt``), which reloads it on its next request.

``stats()`` (shown by ``/info/`` as ``train_stats``) reports the last run.

Training through the server is off unless the operator starts it with ``--conf allow_training true``
(refused with 403 otherwise). Request options are checked against :data:`TRAIN_OPTIONS` (names,
integer types and ranges) and never become config overrides. The configs come from the server's
start-up snapshot (``lib.config_snapshot.ConfigSnapshot``), verified against their sha256 before each run.

Example::

    task = MattingTrainTask(bundle_model, train_dir="runs/monailabel")
    task({"epochs": 10}, datastore)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from ..bundle_model import BundleModel
from ..errors import InvalidRequestError, NoTrainingLabelsError, TrainingDisabledError
from ..config_snapshot import ConfigSnapshot
from .dataset import prepare_training_dataset

__all__ = ["MattingTrainTask", "training_command", "TRAIN_OPTIONS"]

logger = logging.getLogger(__name__)

STATS_FILE = "last_train.json"
#: request options of a training run: name -> (minimum, maximum); all integers
TRAIN_OPTIONS = {"epochs": (1, 10000), "max_epochs": (1, 10000), "num_folds": (2, 100), "fold": (0, 99)}
#: keys MONAI Label itself adds to the request of a training task (not options of the client)
INTERNAL_KEYS = ("model", "local_rank", "gpus")
DISABLED = ("training through the server is disabled; the operator enables it with "
            "--conf allow_training true (see docs/monailabel.md)")


def _cli_value(value: Any) -> str:
    """A value as ``monai.bundle run`` reads it from the command line (JSON for lists / dicts)."""
    if isinstance(value, (list, tuple, dict, bool)) or value is None:
        return json.dumps(value)
    return str(value)


def training_command(
    bundle_root: Union[str, os.PathLike],
    dataset_dir: Union[str, os.PathLike],
    ckpt_dir: Union[str, os.PathLike],
    output_dir: Union[str, os.PathLike],
    epochs: int,
    fold: int = 0,
    config_file: str = "configs/train.yaml",
    tracking_uri: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> List[str]:
    """The ``python -m monai.bundle run training ...`` command of one server training run."""
    root = Path(bundle_root)
    config = Path(config_file)
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", str(config if config.is_absolute() else root / config),
        "--bundle_root", str(root),
        "--dataset_dir", str(dataset_dir),
        "--fold", str(int(fold)),
        "--epochs", str(int(epochs)),
        "--ckpt_dir", str(ckpt_dir),
        "--output_dir", str(output_dir),
        "--progress_bar", "false",
    ]
    if tracking_uri:
        cmd += ["--tracking", "mlflow", "--tracking_uri", str(tracking_uri)]
    for key, value in (overrides or {}).items():
        cmd += [f"--{key}", _cli_value(value)]
    return cmd


class MattingTrainTask(TrainTask):
    """Runs the bundle's training on the datastore's final labels and publishes ``models/model.pt``.

    Args:
        model: the served network (its bundle root, weights path, overrides and channels are used).
        train_dir: parent folder of the run folders (default ``<bundle_root>/runs/monailabel``).
        epochs: default number of epochs (request option ``epochs``).
        num_folds: folds of the generated datalist (request option ``num_folds``).
        fold: held-out fold (request option ``fold``).
        tracking_uri: MLflow tracking URI; when set, the run is logged there (``--tracking mlflow``).
        train_overrides: further ``monai.bundle run`` overrides (e.g. ``{"batch_size": 2}``).
        timeout_s: limit of one training subprocess.
        config_file: the bundle's training config (relative to the bundle root).
        description: shown by MONAI Label clients.
        allow_training: run trainings at all (off: every request is refused with 403).
        snapshot: the configs as they were at server start (default: this process's snapshot of
            the bundle); the run uses its copy of ``config_file`` after verifying the hashes.
    """

    def __init__(
        self,
        model: BundleModel,
        train_dir: Optional[Union[str, os.PathLike]] = None,
        epochs: int = 50,
        num_folds: int = 5,
        fold: int = 0,
        tracking_uri: Optional[str] = None,
        train_overrides: Optional[Mapping[str, Any]] = None,
        timeout_s: Optional[float] = None,
        config_file: str = "configs/train.yaml",
        description: str = "Train the medical matting network on the final labels of the datastore "
        "(the bundle's configs/train.yaml); publishes models/model.pt",
        allow_training: bool = False,
        snapshot: Optional[ConfigSnapshot] = None,
    ) -> None:
        super().__init__(description if allow_training else f"{description}. DISABLED: {DISABLED}")
        self.model = model
        self.train_dir = Path(train_dir) if train_dir else model.bundle_root / "runs" / "monailabel"
        self.epochs = int(epochs)
        self.num_folds = int(num_folds)
        self.fold = int(fold)
        self.tracking_uri = tracking_uri or None
        self.train_overrides = dict(train_overrides or {})
        self.timeout_s = timeout_s
        self.config_file = config_file
        self.allow_training = bool(allow_training)
        self.snapshot = snapshot if snapshot is not None else ConfigSnapshot.for_bundle(model.bundle_root)

    def config(self) -> Dict[str, Any]:
        return {"epochs": self.epochs, "num_folds": self.num_folds, "fold": self.fold}

    def stats(self) -> Dict[str, Any]:
        path = self.train_dir / STATS_FILE
        if not path.is_file():
            return {"runs": 0}
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {"runs": 0}

    def check_request(self, request: Mapping[str, Any], internal: tuple = ()) -> Dict[str, int]:
        """The run's options from a request: only :data:`TRAIN_OPTIONS`, as integers in range.

        Raises:
            TrainingDisabledError: training was not enabled (``--conf allow_training true``).
            InvalidRequestError: an unknown option, a value that is not an integer, or out of range.
        """
        if not self.allow_training:
            raise TrainingDisabledError(DISABLED)
        if not isinstance(request, Mapping):
            raise InvalidRequestError("training options must be a JSON object")
        unknown = sorted(str(k)[:64] for k in request if k not in TRAIN_OPTIONS and k not in internal)
        if unknown:
            raise InvalidRequestError(f"unknown training option(s) {unknown}; allowed: {sorted(TRAIN_OPTIONS)}")
        options = {}
        for key, (low, high) in TRAIN_OPTIONS.items():
            if key not in request:
                continue
            value = request[key]
            value = value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value
            if isinstance(value, str) and value.strip().isdigit() and value.isascii():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidRequestError(f"training option {key} must be an integer, got {str(value)[:64]!r}")
            if not low <= value <= high:
                raise InvalidRequestError(f"training option {key} must be in [{low}, {high}], got {value}")
            options[key] = value
        return options

    def training_overrides(self) -> Dict[str, Any]:
        """``monai.bundle run`` overrides of a server training run.

        The served network's ``network_overrides`` (``network_def#<name>`` keys, valid for both the
        inference and the training config) plus, for each ``<name>`` that is also a top-level key of
        the training config (e.g. ``prob_filters``), the same value under ``<name>``, so that the
        parameters the training logs (MLflow) are the ones used; then ``train_overrides``.
        """
        from monai.bundle import ConfigParser

        overrides = dict(self.model.overrides)
        top = ConfigParser.load_config_file(str(self.snapshot.path(self.config_file)))
        for key, value in self.model.overrides.items():
            name = key.split("#", 1)[1] if key.startswith("network_def#") else None
            if name and "#" not in name and name in top:
                overrides[name] = value
        overrides.update(self.train_overrides)
        return overrides

    def _publish(self, model_file: Path) -> None:
        from scripts.atomic import atomic_write  # importable once BundleModel put the bundle on sys.path

        target = self.model.weights_path
        with open(model_file, "rb") as src:
            atomic_write(target, lambda f: shutil.copyfileobj(src, f))
        logger.info(f"medical_matting: published {model_file} -> {target}")

    def __call__(self, request: Mapping[str, Any], datastore: Datastore) -> Dict[str, Any]:
        options = self.check_request(request, internal=INTERNAL_KEYS)
        self.snapshot.verify()
        epochs = options.get("epochs", options.get("max_epochs", self.epochs))
        num_folds = options.get("num_folds", self.num_folds)
        fold = options.get("fold", self.fold)
        pairs = datastore.datalist()
        if not pairs:
            raise NoTrainingLabelsError("the datastore has no final labels to train on "
                                        "(save labels with tag 'final' first)")
        settings = self.model.settings()
        run_dir = self.train_dir / time.strftime("run_%Y%m%d_%H%M%S")
        suffix = 0
        while run_dir.exists():
            suffix += 1
            run_dir = self.train_dir / f"{time.strftime('run_%Y%m%d_%H%M%S')}_{suffix}"
        dataset_dir = prepare_training_dataset(
            pairs, run_dir / "dataset", num_folds=num_folds, channels=settings["in_channels"],
            intensity_range=settings["intensity_range"])
        with open(dataset_dir / "datalist.json") as f:
            fold = min(fold, int(json.load(f)["num_folds"]) - 1)

        cmd = training_command(self.model.bundle_root, dataset_dir, run_dir / "ckpt", run_dir / "eval", epochs,
                               fold=fold, config_file=str(self.snapshot.path(self.config_file)),
                               tracking_uri=self.tracking_uri,
                               overrides=self.training_overrides())
        logger.info(f"medical_matting training: {' '.join(cmd)}")
        start = time.time()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(self.model.bundle_root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        with open(run_dir / "train.log", "w") as log:
            proc = subprocess.run(cmd, cwd=str(self.model.bundle_root), stdout=log, stderr=subprocess.STDOUT,
                                  env=env, timeout=self.timeout_s)
        model_file = run_dir / "ckpt" / "model.pt"
        stats: Dict[str, Any] = {
            "runs": int(self.stats().get("runs", 0)) + 1,
            "run_dir": str(run_dir),
            "cases": len(pairs),
            "epochs": epochs,
            "fold": fold,
            "returncode": proc.returncode,
            "seconds": round(time.time() - start, 1),
            "log": str(run_dir / "train.log"),
        }
        if proc.returncode != 0 or not model_file.is_file():
            stats["status"] = "failed"
            self._write_stats(stats)
            tail = (run_dir / "train.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"bundle training failed (exit {proc.returncode}); log {run_dir / 'train.log'}:\n{tail}")
        self._publish(model_file)
        stats["status"] = "published"
        stats["model"] = str(self.model.weights_path)
        self._write_stats(stats)
        return stats

    def _write_stats(self, stats: Mapping[str, Any]) -> None:
        from scripts.atomic import write_text_atomic  # importable once BundleModel put the bundle on sys.path

        write_text_atomic(self.train_dir / STATS_FILE, json.dumps(dict(stats), indent=1))
