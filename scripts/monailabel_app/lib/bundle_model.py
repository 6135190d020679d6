"""The bundle's network, as its trained checkpoint says, served exactly as ``configs/inference.yaml`` serves it.

The network is built by ``scripts.workflows.inference.load_trained_network``, the function of the
inference config: from the constructor arguments saved in ``<bundle_root>/models/model.pt``
(``torch.load(..., weights_only=True)``; a bare state dict or one under ``network`` / ``model`` /
``state_dict``), so a model trained with any recipe is served without overrides. The prediction
settings and the intensity rule come from the inference config (read as text, never evaluated).
The file is checked on every request and re-read when its modification time changes, so a model
published by the training task is picked up without restarting the server.

Without the file the model either refuses (:class:`NoTrainedWeightsError`, the default) or, when
``allow_untrained`` is set, runs randomly initialised weights (seeded, so repeatable) and says so
in every answer.

Example:
    >>> bm = BundleModel("/path/to/bundle", allow_untrained=True)  # doctest: +SKIP
    >>> network, trained = bm.network("cpu")  # doctest: +SKIP
    >>> bm.status()["trained"]  # doctest: +SKIP
    False
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from .errors import InvalidCheckpointError, NoTrainedWeightsError

__all__ = ["BundleModel", "DEFAULT_CONFIG", "DEFAULT_WEIGHTS"]

logger = logging.getLogger(__name__)

#: inference config of the bundle, relative to the bundle root
DEFAULT_CONFIG = "configs/inference.yaml"
#: trained weights of the bundle, relative to the bundle root
DEFAULT_WEIGHTS = "models/model.pt"

class BundleModel:
    """Builds ``network_def`` once, loads (and reloads) the bundle's weights per device.

    Args:
        bundle_root: the bundle folder (holds ``configs/`` and ``scripts/``); added to ``sys.path``
            so that ``network_def``'s ``scripts.networks...`` target imports.
        config_file: the config holding ``network_def`` (relative to ``bundle_root`` or absolute).
        weights_path: the checkpoint (default ``<bundle_root>/models/model.pt``).
        overrides: ``ConfigParser`` overrides, e.g. ``{"network_def#prob_filters": [4, 8, 8, 8]}``.
        allow_untrained: run random weights (with a warning in every answer) instead of refusing
            when ``weights_path`` does not exist.
        seed: seed of the random initialisation used when running untrained.

    Example:
        >>> bm = BundleModel(".", overrides={"num_samples": 4})  # doctest: +SKIP
    """

    def __init__(
        self,
        bundle_root: Union[str, os.PathLike],
        config_file: Union[str, os.PathLike] = DEFAULT_CONFIG,
        weights_path: Optional[Union[str, os.PathLike]] = None,
        overrides: Optional[Mapping[str, Any]] = None,
        allow_untrained: bool = False,
        seed: int = 0,
    ) -> None:
        self.bundle_root = Path(bundle_root).expanduser().resolve()
        config = Path(config_file)
        self.config_file = config if config.is_absolute() else self.bundle_root / config
        weights = Path(weights_path) if weights_path else Path(DEFAULT_WEIGHTS)
        self.weights_path = weights if weights.is_absolute() else self.bundle_root / weights
        self.overrides = dict(overrides or {})
        self.allow_untrained = bool(allow_untrained)
        self.seed = int(seed)
        if not self.config_file.is_file():
            raise FileNotFoundError(f"bundle inference config not found: {self.config_file}")
        if str(self.bundle_root) not in sys.path:
            sys.path.insert(0, str(self.bundle_root))

        self._lock = threading.Lock()
        self._template: Optional[torch.nn.Module] = None
        self._template_mtime: Optional[float] = None  # modification time of the weights the template holds
        self._settings: Dict[str, Any] = {}
        self._cache: Dict[str, Tuple[torch.nn.Module, Optional[float]]] = {}

    # ------------------------------------------------------------------ config
    def _parse(self) -> None:
        """Read the inference config's settings as text (its expressions are not evaluated here)."""
        from monai.bundle import ConfigParser

        from scripts.data.image_limits import MAX_IMAGE_PIXELS
        from scripts.workflows.config_values import int_or_none
        from scripts.workflows.inference import DEFAULT_MAX_INTERNAL_SIZE

        parser = ConfigParser()
        parser.read_config(str(self.config_file))
        self._settings = {
            "intensity_range": parser.get("intensity_range", None),
            "max_internal_size": int_or_none(parser.get("max_internal_size", DEFAULT_MAX_INTERNAL_SIZE)),
            "max_image_pixels": parser.get("max_image_pixels", None) or MAX_IMAGE_PIXELS,
            "prediction": {k: parser.get(k, None) for k in ("num_samples", "test_time_flips")},
            "train_config": str(self.config_file.parent / "train.yaml"),
        }
        self._template_mtime = self._weights_mtime()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._template = self._load(allow_missing=True)
        self._settings["in_channels"] = int(self._template.in_channels)

    def _weights_mtime(self) -> Optional[float]:
        return self.weights_path.stat().st_mtime if self.has_weights() else None

    def _load(self, allow_missing: bool) -> torch.nn.Module:
        """The served network: the one the checkpoint was trained as (configs/inference.yaml's rule)."""
        from scripts.workflows.inference import load_trained_network

        try:
            return load_trained_network(
                self.weights_path if self.has_weights() else None,
                self._settings["prediction"],
                allow_untrained=allow_missing or self.allow_untrained,
                fallback_config=self._settings["train_config"],
                bundle_root=self.bundle_root,
                fallback_overrides=self.overrides,
            )
        except (ValueError, FileNotFoundError) as e:
            raise InvalidCheckpointError(str(e)) from e

    def settings(self) -> Dict[str, Any]:
        """``in_channels`` of the served network, ``intensity_range`` and prediction settings of the inference config."""
        with self._lock:
            if self._template is None:
                self._parse()
            return dict(self._settings)

    # ------------------------------------------------------------------ weights
    def has_weights(self) -> bool:
        """Whether the trained weights file exists."""
        return self.weights_path.is_file()

    def status(self) -> Dict[str, Any]:
        """JSON-ready description of the weights in use (for ``/info/`` and every inference answer)."""
        trained = self.has_weights()
        if trained:
            message = f"trained weights: {self.weights_path}"
        elif self.allow_untrained:
            message = (f"WARNING: NO TRAINED WEIGHTS at {self.weights_path}; running an UNTRAINED network "
                       "(random weights): the matte is meaningless")
        else:
            message = (f"NO TRAINED WEIGHTS at {self.weights_path}: inference is refused; train the model "
                       "(POST /train/medical_matting or the bundle's training) or start the server with "
                       "--conf allow_untrained true")
        return {"trained": trained, "weights_path": str(self.weights_path),
                "allow_untrained": self.allow_untrained, "message": message}

    def network(self, device: Union[str, torch.device] = "cpu") -> Tuple[torch.nn.Module, bool]:
        """The network in ``eval()`` mode on ``device`` and whether it holds trained weights.

        Raises:
            NoTrainedWeightsError: no weights file and ``allow_untrained`` is false.
            InvalidCheckpointError: the file cannot be read or does not match ``network_def``.
        """
        device = str(device)
        with self._lock:
            if self._template is None:
                self._parse()
            trained = self.has_weights()
            if not trained and not self.allow_untrained:
                raise NoTrainedWeightsError(self.status()["message"])
            mtime = self._weights_mtime() if trained else None
            cached = self._cache.get(device)
            if cached is not None and cached[1] == mtime:
                return cached[0], trained

            if trained:  # the template already holds these weights unless the file changed since
                network = copy.deepcopy(self._template) if self._template_mtime == mtime else self._load(False)
                logger.info(f"medical_matting: loaded trained weights {self.weights_path}")
            else:
                network = copy.deepcopy(self._template)
                logger.warning(self.status()["message"])
            network = network.to(torch.device(device)).eval()
            self._cache[device] = (network, mtime)
            return network, trained
