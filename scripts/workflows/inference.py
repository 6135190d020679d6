"""Building blocks of the inference workflow (``configs/inference.yaml``).

``python -m monai.bundle run inference --config_file configs/inference.yaml --input_path PATH
--output_dir OUT`` runs a trained ``MedicalMattingNet`` on one image file or on every image in a
folder and writes, per image, the alpha matte and the uncertainty map (see
``scripts.handlers.prediction_writer``). The config wires MONAI components (``Dataset``,
``LoadImaged``, ``EnsureChannelFirstd``, intensity scaling, ``CheckpointLoader``, ``StatsHandler``)
around the pieces defined here, which no library provides:

- :func:`list_input_images`: the data list of a file or a folder (with clear errors);
- :func:`require_checkpoint`: fail early, naming the path, when the checkpoint is missing;
- :class:`EnsureImage2Dd`: checks that each image is 2-D with the network's channel count;
- :func:`intensity_scaling`: the fixed ``[0, 255] -> [0, 1]`` scaling of training (or min-max);
- :class:`MattingInferer`: calls ``network.predict`` at the requested output size;
- :class:`MattingInferenceEvaluator`: a ``SupervisedEvaluator`` whose iteration keeps both the
  alpha matte (``"pred"``) and the uncertainty map (``"uncertainty"``) of ``predict``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer
from monai.transforms import MapTransform, ScaleIntensityd, ScaleIntensityRanged
from monai.utils import CommonKeys

from scripts.handlers.prediction_writer import case_name_from_path

__all__ = [
    "IMAGE_SUFFIXES",
    "list_input_images",
    "require_checkpoint",
    "EnsureImage2Dd",
    "intensity_scaling",
    "MattingInferer",
    "MattingInferenceEvaluator",
]

#: file name endings read as images in an input folder (lower case); other files are skipped
IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff",
    ".nii", ".nii.gz", ".nrrd", ".mha", ".mhd",
)  # fmt: skip


def _none_if_null(value: Any) -> Any:
    """``None`` for ``None`` and the command-line spellings ``"null"`` / ``"none"`` (fire passes them as text)."""
    if isinstance(value, str) and value.strip().lower() in ("null", "none", ""):
        return None
    return value


def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMAGE_SUFFIXES)


def list_input_images(input_path: Optional[Union[str, os.PathLike]]) -> List[Dict[str, str]]:
    """Data list ``[{"image": path, "case": name}, ...]`` of one image file or of a folder's images.

    A folder is read non-recursively; files whose name does not end in one of
    :data:`IMAGE_SUFFIXES` (and hidden files) are skipped with a warning naming them. The case
    name is the file name without its extension; two images with the same case name (``a.png``
    and ``a.nii.gz``) are an error because their outputs would overwrite each other.

    Args:
        input_path: an image file or a folder of images.

    Raises:
        ValueError: no path given, an unsupported single file, duplicate case names.
        FileNotFoundError: the path does not exist, or the folder holds no image.

    Example::

        list_input_images("images/")  # [{"image": "images/case01.png", "case": "case01"}, ...]
    """
    if _none_if_null(input_path) is None:
        raise ValueError("no input given: set the input image or folder with --input_path PATH")
    path = Path(input_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"input path does not exist: {path}")
    if path.is_file():
        if not path.name.lower().endswith(IMAGE_SUFFIXES):
            raise ValueError(f"input file {path} is not a supported image (file name endings: {', '.join(IMAGE_SUFFIXES)})")
        files = [path]
    else:
        entries = sorted(p for p in path.iterdir())
        files = [p for p in entries if _is_image_file(p)]
        skipped = [p.name for p in entries if p not in files and not p.name.startswith(".") and not p.is_dir()]
        if skipped:
            warnings.warn(f"{path}: skipping {len(skipped)} file(s) that are not images: {', '.join(skipped)}")
        if not files:
            raise FileNotFoundError(
                f"no image found in folder {path} (file name endings read: {', '.join(IMAGE_SUFFIXES)})"
            )
    data, seen = [], {}
    for f in files:
        case = case_name_from_path(f)
        if case in seen:
            raise ValueError(f"{seen[case]} and {f} have the same case name {case!r}; rename one of them")
        seen[case] = f
        data.append({CommonKeys.IMAGE: str(f), "case": case})
    return data


def require_checkpoint(ckpt_path: Optional[Union[str, os.PathLike]], allow_untrained: bool = False) -> Optional[str]:
    """Check that the checkpoint exists before anything else runs.

    Args:
        ckpt_path: path of the network weights (a ``state_dict`` or a dict holding one, see the config).
        allow_untrained: when the file is missing, warn and go on with the freshly initialised
            network instead of failing (smoke tests only: the outputs are meaningless).

    Returns:
        the path when the file exists, else ``None`` (only with ``allow_untrained``).

    Raises:
        FileNotFoundError: the checkpoint is missing and ``allow_untrained`` is false.
    """
    if ckpt_path is not None and Path(ckpt_path).is_file():
        return str(ckpt_path)
    if allow_untrained:
        warnings.warn(f"checkpoint {ckpt_path} not found: running the UNTRAINED network (allow_untrained=true)")
        return None
    raise FileNotFoundError(
        f"checkpoint not found: {ckpt_path} (train one first, pass --ckpt_path PATH, "
        "or --allow_untrained true for a smoke test with random weights)"
    )


class EnsureImage2Dd(MapTransform):
    """Check that each image is a channel-first 2-D image with the expected number of channels.

    Trailing singleton spatial dimensions are dropped first (a 2-D NIfTI stored as (H, W, 1)
    becomes (C, H, W)). Errors name the file (``filename_or_obj`` metadata).

    Args:
        keys: keys of the images (channel-first, after ``EnsureChannelFirstd``).
        channels: expected channel count (the network's ``in_channels``); ``None`` skips the check.
        allow_missing_keys: don't raise for missing keys.

    Example::

        EnsureImage2Dd("image", channels=1)({"image": torch.zeros(1, 32, 32, 1)})["image"].shape  # (1, 32, 32)
    """

    def __init__(self, keys: KeysCollection, channels: Optional[int] = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            name = getattr(img, "meta", {}).get("filename_or_obj", key)
            while img.ndim > 3 and img.shape[-1] == 1:
                img = img[..., 0]
            if img.ndim != 3:
                raise ValueError(f"{name}: expected a 2-D image, got array shape {tuple(img.shape)} (channel first)")
            if self.channels is not None and img.shape[0] != self.channels:
                raise ValueError(
                    f"{name}: the image has {img.shape[0]} channel(s), the network expects {self.channels} "
                    "(grey images need in_channels=1, RGB images in_channels=3)"
                )
            d[key] = img
        return d


def intensity_scaling(keys: KeysCollection, intensity_range: Optional[Sequence[float]] = (0, 255)) -> MapTransform:
    """The image intensity scaling to [0, 1] used before the network.

    Args:
        keys: image keys.
        intensity_range: ``(low, high)`` mapped linearly to ``(0, 1)`` and clipped, as in training
            (the prepared datasets are 8-bit: ``(0, 255)`` gives ``image / 255``); ``None`` scales
            each image by its own minimum and maximum (``ScaleIntensityd``), for inputs of another
            range such as float MRI volumes, at the price of a different normalisation than in training.
            The text ``"null"`` / ``"none"`` (as the command line passes it) counts as ``None``.

    Example::

        intensity_scaling("image", (0, 255))  # ScaleIntensityRanged(a_min=0, a_max=255, b_min=0, b_max=1, clip=True)
    """
    intensity_range = _none_if_null(intensity_range)
    if intensity_range is None:
        return ScaleIntensityd(keys, minv=0.0, maxv=1.0)
    if len(intensity_range) != 2 or not float(intensity_range[1]) > float(intensity_range[0]):
        raise ValueError(f"intensity_range must be [low, high] with high > low, got {intensity_range}")
    low, high = (float(v) for v in intensity_range)
    return ScaleIntensityRanged(keys, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)


def _check_size(size: Optional[Sequence[int]], name: str) -> Optional[tuple]:
    size = _none_if_null(size)
    if size is None:
        return None
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(s, (int, float)) and int(s) == s and s >= 1 for s in size)
    ):
        raise ValueError(f"{name} must be null or [height, width] with positive integers, got {size}")
    return tuple(int(s) for s in size)


class MattingInferer(Inferer):
    """Run ``network.predict`` and return its dict (``alpha``, ``uncertainty``, ``sample_probs``).

    Args:
        output_size: ``[H', W']`` of the alpha matte and uncertainty map; ``None`` keeps the size of
            the image as it was given to the inferer (the input file's size in the inference workflow).
        input_size: resize the image to ``[h, w]`` (bilinear, anti-aliased when shrinking) before the
            network, e.g. to the training size; the prediction is still decoded at ``output_size``
            or, when that is ``None``, at the original image size (the implicit decoder works at
            any scale). ``None`` feeds the image at its own size.
        num_samples: Probabilistic U-Net samples for the uncertainty map (``None``: the network's).

    Example::

        inferer = MattingInferer(output_size=(256, 256))
        out = inferer(image, network)   # out["alpha"] (B, 1, 256, 256)
    """

    def __init__(
        self,
        output_size: Optional[Sequence[int]] = None,
        input_size: Optional[Sequence[int]] = None,
        num_samples: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.output_size = _check_size(output_size, "output_size")
        self.input_size = _check_size(input_size, "input_size")
        self.num_samples = num_samples

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        original = tuple(int(s) for s in x.shape[-2:])
        target = self.output_size or original
        if self.input_size is not None and self.input_size != original:
            shrink = self.input_size[0] < original[0] or self.input_size[1] < original[1]
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=shrink)
        return network.predict(x, output_size=target, num_samples=self.num_samples)


class MattingInferenceEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` for ``MedicalMattingNet.predict``: keeps the alpha matte and the uncertainty map.

    Each iteration stores ``{"image", "pred": alpha (B, 1, H', W'), "uncertainty": (B, 1, H', W')}``
    (plus ``"case"`` when the batch has it) in ``engine.state.output``; no label is needed. It fires
    the same iteration events as ``SupervisedEvaluator``, so MONAI handlers (stats, MLflow,
    ``MattingPredictionWriter``) attach as usual. All ``SupervisedEvaluator`` arguments apply;
    ``inferer`` must return a dict with ``alpha`` and ``uncertainty`` (default :class:`MattingInferer`).

    Example::

        evaluator = MattingInferenceEvaluator(device, loader, network, inferer=MattingInferer((256, 256)),
                                              val_handlers=[MattingPredictionWriter("out")])
        evaluator.run()
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("inferer") is None:
            kwargs["inferer"] = MattingInferer()
        super().__init__(*args, **kwargs)

    def _iteration(self, engine: SupervisedEvaluator, batchdata: Dict[str, Any]) -> Dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs = batch[0]
        engine.state.output = {CommonKeys.IMAGE: inputs}
        with engine.mode(engine.network):
            if engine.amp:
                with torch.autocast("cuda", **engine.amp_kwargs):
                    out = engine.inferer(inputs, engine.network)
            else:
                out = engine.inferer(inputs, engine.network)
        if not isinstance(out, Mapping) or "alpha" not in out or "uncertainty" not in out:
            raise TypeError("the inferer must return a dict with 'alpha' and 'uncertainty' (MedicalMattingNet.predict)")
        engine.state.output[CommonKeys.PRED] = out["alpha"].float()
        engine.state.output["uncertainty"] = out["uncertainty"].float()
        if isinstance(batchdata, Mapping) and "case" in batchdata:
            engine.state.output["case"] = batchdata["case"]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
