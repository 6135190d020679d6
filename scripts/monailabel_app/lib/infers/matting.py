"""MONAI Label inference task ``medical_matting``: alpha matte (and uncertainty map) of a study image.

A ``BasicInferTask`` whose pre-transforms load a 2-D study image (see ``lib.imaging``), whose
inferer calls the bundle network's ``predict``, and whose writer saves the requested map with the
input's geometry. A NIfTI volume is not loaded: ``scripts.workflows.volumes.infer_volume`` (the
CLI's) reads it slice by slice along the last axis and streams the map to NIfTI, so memory does
not grow with the depth. The network is shared by concurrent requests and nothing is changed on it.

- request/config option ``map_type``: ``"alpha"`` (default) the alpha matte, ``"uncertainty"`` the
  Probabilistic U-Net uncertainty map, ``"mask"`` the matte thresholded at ``mask_threshold``
  (label 1 = foreground, for Slicer's segment editor);
- raster input -> 8-bit PNG, ``round(value * 255)`` (mask: {0, 1}); NIfTI input -> ``.nii.gz``
  with the input's shape, affine and header (float32 in [0, 1]; mask uint8 {0, 1});
- the JSON answer (``params``) always holds ``trained`` / ``weights`` (with a loud warning when the
  network is untrained), the scaling used, and summary statistics of both the alpha matte and the
  uncertainty map.

Example (what the server does for ``POST /infer/medical_matting?image=case01``)::

    task = MattingInferTask(BundleModel(bundle_root))
    result_file, result_json = task({"image": "/studies/case01.png", "map_type": "alpha"})
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.transforms import LoadImaged
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from scripts.workflows.inference import MattingInferer, failure_reason

from ..bundle_model import BundleModel
from ..errors import InvalidRequestError, MattingAppError, UnsupportedStudyImageError
from ..imaging import image_reader, write_result
from ..names import check_study_image
from ..request_guards import client_gone, finite_float, redact_paths
from ..transforms import PrepareMattingInputd

__all__ = ["MattingInferTask", "MAP_TYPES", "CLIENT_KEYS"]

logger = logging.getLogger(__name__)

#: maps the task can return (request option ``map_type``); the first is the default
MAP_TYPES = ("alpha", "uncertainty", "mask")
#: options viewers add to every infer request; accepted and ignored (the result format is the input's)
CLIENT_KEYS = ("client_id", "result_extension", "result_dtype", "result_compress", "restore_label_idx")


def _option(value: Any, default: Any) -> Any:
    """A request option; MONAI Label sends the config's list of choices when the user picked none."""
    if value is None:
        return default
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return value


class MattingInferTask(BasicInferTask):
    """Alpha matte of a 2-D study image (or of each slice of a NIfTI volume) by the bundle's network.

    Args:
        model: the bundle network and its weights.
        description: task description shown by MONAI Label clients (the weights status is appended).
        slice_batch_pixels: most pixels of the volume slices run through the network at once.
        mask_threshold: default threshold of the ``mask`` output.
    """

    def __init__(
        self,
        model: BundleModel,
        description: str = "Alpha matte (soft segmentation) with a region-aware implicit matting network; "
        "option map_type=uncertainty returns the Probabilistic U-Net uncertainty map",
        slice_batch_pixels: Optional[int] = None,
        mask_threshold: float = 0.5,
    ) -> None:
        super().__init__(
            path=None,
            network=None,
            type=InferType.SEGMENTATION,
            labels={"foreground": 1},
            dimension=2,
            description=description,
            config={"map_type": list(MAP_TYPES), "mask_threshold": float(mask_threshold)},
        )
        self.model = model
        from scripts.workflows.volumes import DEFAULT_SLICE_BATCH_PIXELS

        self.slice_batch_pixels = int(slice_batch_pixels or DEFAULT_SLICE_BATCH_PIXELS)
        self.base_description = description

    # ------------------------------------------------------------------ MONAI Label interface
    def is_valid(self) -> bool:
        # always listed in /info/, also before training, so that clients see the weights status
        return True

    def info(self) -> Dict[str, Any]:
        info = super().info()
        status = self.model.status()
        info["description"] = f"{self.base_description}. {status['message']}"
        info["trained"] = status["trained"]
        info["weights_path"] = status["weights_path"]
        return info

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        settings = self.model.settings()
        path = data.get("image_path", data.get("image")) if data else None
        return [
            LoadImaged(keys="image", reader=image_reader(path) if path else None, image_only=True,
                       ensure_channel_first=True, dtype=None),  # the file's type decides the scaling
            PrepareMattingInputd(keys="image", channels=settings["in_channels"],
                                 intensity_range=settings["intensity_range"]),
        ]

    def run_pre_transforms(self, data: Dict[str, Any], transforms):
        """Check the image's header (size limit) before any reader decodes it; a file that cannot be
        loaded is a 415 naming the reason, never a server error."""
        from scripts.workflows.volumes import is_volume, volume_shape

        path = data.get("image_path", data.get("image"))
        if isinstance(path, str):
            check_study_image(path, self.model.settings()["max_image_pixels"])
            if is_volume(path):  # read slice by slice in run_inferer, never loaded whole
                try:
                    volume_shape(path)
                except ValueError as e:
                    raise UnsupportedStudyImageError(str(e).replace(path, "image")) from None
                data["volume"] = True
                return data
        try:
            return super().run_pre_transforms(data, transforms)
        except MattingAppError:
            raise
        except Exception as e:  # truncated / corrupt pixel data, a format the readers cannot decode
            cause = e
            while cause.__cause__ is not None:
                cause = cause.__cause__
            if isinstance(cause, MattingAppError):
                raise cause from None
            raise UnsupportedStudyImageError(f"the image cannot be read: {redact_paths(failure_reason(e))}") from e

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return []

    def inverse_transforms(self, data=None):
        return None

    def check_options(self, params: Dict[str, Any]) -> Dict[str, Any]:
        """The request options the task takes (``map_type``, ``mask_threshold``), checked.

        Options viewers always send (:data:`CLIENT_KEYS`) are dropped; any other key is refused,
        so a request cannot set what MONAI Label reads from the same dict (``image``,
        ``save_label``, ``label_tag``, ``device``...).

        Raises:
            InvalidRequestError: an unknown option or a bad value.
        """
        unknown = sorted(str(k)[:64] for k in params if k not in self._config and k not in CLIENT_KEYS)
        if unknown:
            raise InvalidRequestError(f"unknown option(s) {unknown}; medical_matting takes {sorted(self._config)}")
        options: Dict[str, Any] = {}
        if "map_type" in params:
            options["map_type"] = self._map_type(params["map_type"])
        if "mask_threshold" in params:
            options["mask_threshold"] = self._threshold(params["mask_threshold"])
        return options

    @staticmethod
    def _map_type(value: Any) -> str:
        value = _option(value, MAP_TYPES[0])
        if not isinstance(value, str) or value not in MAP_TYPES:
            raise InvalidRequestError(f"unknown map_type {str(value)[:64]!r}; choose one of {list(MAP_TYPES)}")
        return value

    @staticmethod
    def _threshold(value: Any) -> float:
        return finite_float(_option(value, 0.5), "mask_threshold", 0.0, 1.0)

    # ------------------------------------------------------------------ inference
    def _predict(self, network: torch.nn.Module, image: np.ndarray, device: str) -> Tuple[np.ndarray, np.ndarray]:
        """``image`` (C, H, W) (or (C, H, W, 1), a one-slice NIfTI) -> alpha and uncertainty with the image's
        spatial shape, through the inferer of evaluation and CLI inference (bounded internal grid, maps
        decoded at full size)."""
        inferer = MattingInferer(max_internal_size=self.model.settings()["max_internal_size"])
        plane = np.ascontiguousarray(image.reshape(image.shape[:3]))
        with torch.no_grad():
            out = inferer(torch.from_numpy(plane)[None].to(device), network)
        shape = image.shape[1:]
        return (out["alpha"][0, 0].float().cpu().numpy().reshape(shape),
                out["uncertainty"][0, 0].float().cpu().numpy().reshape(shape))

    def _infer_volume(self, data: Dict[str, Any], output: str, threshold: float, device: str) -> Dict[str, Any]:
        """The requested map of a NIfTI volume, slice by slice, into a new temporary ``.nii.gz`` (``data["result_file"]``)."""
        import os
        import tempfile

        from scripts.workflows.volumes import infer_volume

        settings = self.model.settings()
        network, trained = self.model.network(device)
        fd, path = tempfile.mkstemp(prefix="medical_matting_result_", suffix=".nii.gz")
        os.close(fd)
        try:
            stats = infer_volume(data["image_path"], network, MattingInferer(max_internal_size=settings["max_internal_size"]),
                                 {output: path}, channels=settings["in_channels"],
                                 intensity_range=settings["intensity_range"], slice_batch_pixels=self.slice_batch_pixels,
                                 mask_threshold=threshold, device=device, should_stop=client_gone)
        except ValueError as e:
            os.remove(path)
            raise UnsupportedStudyImageError(str(e).replace(str(data["image_path"]), "image")) from None
        except BaseException:
            os.remove(path)
            raise
        data["result_file"] = path
        return {"trained": trained, "image_scaling": stats["image_scaling"], "shape": stats["shape"],
                "alpha": stats["alpha"], "uncertainty": stats["uncertainty"], "slices": stats["slices"]}

    def run_inferer(self, data: Dict[str, Any], convert_to_batch: bool = True, device: str = "cpu"):
        output = self._map_type(data.get("map_type"))
        threshold = self._threshold(data.get("mask_threshold"))

        data["map_type"] = output
        status = self.model.status()
        if data.get("volume"):
            computed = self._infer_volume(data, output, threshold, device)
        else:
            network, trained = self.model.network(device)
            alpha, uncertainty = self._predict(network, data["image"], device)
            if output == "alpha":
                data["pred"] = alpha
            elif output == "uncertainty":
                data["pred"] = uncertainty
            else:
                data["pred"] = (alpha >= threshold).astype(np.uint8)
            computed = {
                "trained": trained,
                "image_scaling": data.get("image_scaling"),
                "shape": list(alpha.shape),
                "alpha": {"mean": float(alpha.mean()), "min": float(alpha.min()), "max": float(alpha.max())},
                "uncertainty": {"mean": float(uncertainty.mean()), "max": float(uncertainty.max())},
            }
        trained = computed["trained"]
        result = {"map_type": output, "weights": status["weights_path"], "message": status["message"], **computed}
        if output == "mask":
            result["mask_threshold"] = threshold
        if not trained:
            result["warning"] = status["message"]
            logger.warning(status["message"])
        data["result"] = result
        return data

    def writer(self, data: Dict[str, Any], extension=None, dtype=None) -> Tuple[Optional[str], Dict[str, Any]]:
        path = data.get("result_file") or write_result(data["image_path"], data["pred"], kind=data["map_type"])
        result = dict(data["result"])
        result["file_format"] = (
            "NIfTI, input geometry, " + ("uint8 {0, 1}" if data["map_type"] == "mask" else "float32 0..1")
            if path.endswith(".nii.gz")
            else "PNG, input (H, W), " + ("uint8 {0, 1}" if data["map_type"] == "mask" else "uint8 0..255 = value * 255")
        )
        return path, result
