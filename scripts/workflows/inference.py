"""Building blocks of the inference workflow (``configs/inference.yaml``).

``python -m monai.bundle run inference --config_file configs/inference.yaml --input_path PATH
--output_dir OUT`` runs a trained ``MedicalMattingNet`` on one image file or on every image in a
folder and writes, per image, the alpha matte and the uncertainty map (see
``scripts.handlers.prediction_writer``). The config wires MONAI components (``Dataset``,
``LoadImaged``, ``EnsureChannelFirstd``, intensity scaling, ``CheckpointLoader``, ``StatsHandler``)
around the pieces defined here, which no library provides:

- :func:`list_input_images`: the data list of a file or a folder (with clear errors);
- :func:`load_trained_network`: the network a checkpoint was trained as (its saved constructor
  arguments), with the checkpoint's weights: whatever recipe trained a model, it is served as is;
- :class:`EnsureImage2Dd`: checks that each image is 2-D with the network's channel count;
- :func:`check_output_dir`: refuses an output folder inside the input folder;
- :func:`prepare_output_dir`: a new, empty or previous run's output folder (its outputs replaced);
- :func:`run_inference`: the command line's run, ending in one line naming each failed file;
- :class:`MattingInferer`: calls ``network.predict`` (prior samples, test-time flips, output size)
  on a grid of at most ``max_internal_size`` pixels, decoding large outputs in bands of rows
  (``network.predict_in_rows``): the inferer of evaluation, CLI inference and the MONAI Label app alike;
- :class:`MattingInferenceEvaluator`: a ``SupervisedEvaluator`` whose iteration keeps both the
  alpha matte (``"pred"``) and the uncertainty map (``"uncertainty"``) of ``predict``, recording
  the failures of ``scripts.workflows.failures`` (a file that fails becomes a recorded failure
  instead of aborting the folder) and inferring NIfTI volumes slice by slice.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Hashable, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer
from monai.transforms import MapTransform
from monai.utils import CommonKeys

from scripts.handlers.prediction_writer import case_name_from_path
from scripts.image_formats import CLI_IMAGE_SUFFIXES
from scripts.networks.test_time_flips import FLIP_SETS
from scripts.workflows.config_values import none_if_null, null_setting
from scripts.workflows.failures import FAILURE_KEY, FAILURES_KEY, VOLUMES_KEY, failure_reason, first_line
from scripts.networks import MedicalMattingNet

__all__ = [
    "CHECKPOINT_KEYS",
    "list_input_images",
    "read_state_dict",
    "load_trained_network",
    "EnsureImage2Dd",
    "DEFAULT_MAX_INTERNAL_SIZE",
    "MattingInferer",
    "run_matting_inferer",
    "MattingInferenceEvaluator",
]

def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(CLI_IMAGE_SUFFIXES)


#: names of the files an inference run writes in its output folder (a re-run replaces them)
OUTPUT_PATTERNS = ("*_alpha.png", "*_alpha.nii.gz", "*_alpha.npy", "*_uncertainty.png", "*_uncertainty.nii.gz",
                   "*_uncertainty.npy", "*_figure.png", "inference_summary.json")
#: what MLflow tracking (``--tracking``) keeps in the output folder across runs (kept, never removed)
TRACKING_PATTERNS = ("config_*.json", "mlruns.db", "mlruns", "mlartifacts")


def prepare_output_dir(output_dir: Union[str, os.PathLike]) -> Path:
    """The output folder of a run, ready: created, or emptied of a previous run's outputs.

    A folder that exists must be empty or hold only what an inference run writes
    (:data:`OUTPUT_PATTERNS`, with the previous run's ``inference_summary.json``) and MLflow's records
    (:data:`TRACKING_PATTERNS`): the outputs are removed, so the folder never mixes two runs' maps beside a summary listing one of them. Any
    other folder (``configs``, a data folder) is refused before anything is written.

    Raises:
        ValueError: one line naming the folder and a file that is not an inference output.
    """
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {out} is a file, not a folder")
    if out.is_dir():
        outputs = {p for pattern in OUTPUT_PATTERNS for p in out.glob(pattern) if p.is_file()}
        tracking = {p for pattern in TRACKING_PATTERNS for p in out.glob(pattern)}
        others = sorted(p.name for p in out.iterdir() if p not in outputs | tracking and not p.name.startswith("."))
        if others:
            raise ValueError(
                f"--output_dir {out} holds files that are not inference outputs ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''}): choose an empty or new folder")
        for p in outputs:
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_output_dir(input_path: Union[str, os.PathLike], output_dir: Optional[Union[str, os.PathLike]]) -> None:
    """Refuse an output folder inside the input folder (a re-run would infer on its own outputs).

    Raises:
        ValueError: one line naming both folders.
    """
    if none_if_null(output_dir) is None or none_if_null(input_path) is None:
        return
    folder = Path(input_path).expanduser().resolve()
    if not folder.is_dir():
        return
    out = Path(output_dir).expanduser().resolve()
    if out == folder or folder in out.parents:
        raise ValueError(
            f"output folder {out} is inside the input folder {folder}: a re-run would read its own outputs as "
            "inputs; choose an --output_dir outside the input folder")


def list_input_images(
    input_path: Optional[Union[str, os.PathLike]],
    output_dir: Optional[Union[str, os.PathLike]] = None,
    pattern: Optional[str] = None,
) -> List[Dict[str, str]]:
    """Data list ``[{"image": path, "case": name}, ...]`` of one image file or of a folder's images.

    A DICOM series is a folder of ``.dcm`` files (``input_path`` itself, or a sub-folder of
    ``input_path``), case name the folder's name. A folder is read non-recursively; files whose
    name does not end in one of ``scripts.image_formats.CLI_IMAGE_SUFFIXES``, sub-folders with such
    a name (``dir.png/``) and images not matching ``pattern`` are skipped with a warning naming them
    (hidden files silently). The case name is the file name without its extension; two images
    with the same case name (``a.png`` and ``a.nii.gz``) are an error because their outputs
    would overwrite each other.

    Args:
        input_path: an image file, a folder of images, or a DICOM series folder.
        output_dir: where the outputs go; refused when inside the input folder (:func:`check_output_dir`).
        pattern: a folder's images are those whose name matches this shell pattern (``"*_image.nii.gz"``
            keeps masks stored beside the images out); ``None`` reads every image.

    Raises:
        ValueError: no path given, an unsupported single file, duplicate case names, an output
            folder inside the input folder.
        FileNotFoundError: the path does not exist, or the folder holds no image.

    Example::

        list_input_images("images/")  # [{"image": "images/case01.png", "case": "case01"}, ...]
    """
    if none_if_null(input_path) is None:
        raise ValueError("no input given: set the input image or folder with --input_path PATH")
    pattern = none_if_null(pattern)
    path = Path(input_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"input path does not exist: {path}")
    check_output_dir(path, output_dir)
    from scripts.workflows.volumes import is_dicom_series

    if path.is_dir() and is_dicom_series(path):
        return [{CommonKeys.IMAGE: str(path), "case": path.name}]
    if path.is_file():
        if not path.name.lower().endswith(CLI_IMAGE_SUFFIXES):
            raise ValueError(f"input file {path} is not a supported image (file name endings: {', '.join(CLI_IMAGE_SUFFIXES)})")
        files = [path]
    else:
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        inputs = [p for p in entries if _is_image_file(p) or (p.is_dir() and is_dicom_series(p))]
        files = [p for p in inputs if pattern is None or fnmatch.fnmatch(p.name, pattern)]
        unmatched = [p.name for p in inputs if p not in files]
        skipped = [p.name + ("/ (a folder)" if p.is_dir() else "") for p in entries
                   if p not in files and p.name not in unmatched and (p.is_file() or p.name.lower().endswith(CLI_IMAGE_SUFFIXES))]
        if skipped:
            warnings.warn(f"{path}: skipping {len(skipped)} entries that are not image files: {', '.join(skipped)}")
        if unmatched:
            warnings.warn(f"{path}: skipping {len(unmatched)} image(s) not matching --pattern {pattern!r}: "
                          f"{', '.join(unmatched[:5])}{', ...' if len(unmatched) > 5 else ''}")
        if not files:
            raise FileNotFoundError(
                f"no image found in folder {path} (file name endings read: {', '.join(CLI_IMAGE_SUFFIXES)}"
                + (f"; --pattern {pattern!r}" if pattern else "") + ")"
            )
    data, seen = [], {}
    for f in files:
        case = f.name if f.is_dir() else case_name_from_path(f)
        if case in seen:
            raise ValueError(f"{seen[case]} and {f} have the same case name {case!r}; rename one of them")
        seen[case] = f
        data.append({CommonKeys.IMAGE: str(f), "case": case})
    return data


#: long side (pixels) of the grid the networks run on by default (:class:`MattingInferer`)
DEFAULT_MAX_INTERNAL_SIZE = 512

#: keys under which a checkpoint may hold the network's state dict (training checkpoints: ``network``)
CHECKPOINT_KEYS = ("network", "model", "state_dict")


def read_state_dict(ckpt_path: Union[str, os.PathLike], map_location: Any = "cpu") -> Dict[str, Any]:
    """The network state dict of a checkpoint, bare (``model.pt``) or under one of :data:`CHECKPOINT_KEYS`.

    Loaded with ``torch.load(weights_only=True)``: a checkpoint cannot run code.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable (truncated, empty, not a weights-only file) or no state dict in it.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (train one first, or pass --ckpt_path PATH)"
        )
    try:
        checkpoint = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, empty, pickled code...
        raise ValueError(f"checkpoint {path} cannot be read as weights: {first_line(e)}") from e
    if isinstance(checkpoint, Mapping):
        for key in CHECKPOINT_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not any(torch.is_tensor(v) for v in checkpoint.values()):
        raise ValueError(f"checkpoint {path}: no network state dict (bare, or under one of {list(CHECKPOINT_KEYS)})")
    return dict(checkpoint)


def _fallback_network(
    config_file: Union[str, os.PathLike], bundle_root: Union[str, os.PathLike], overrides: Optional[Mapping[str, Any]] = None
) -> torch.nn.Module:
    """``network_def`` of the training config (the one place the network is defined)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(bundle_root)
    if overrides:
        parser.update(dict(overrides))
    return parser.get_parsed_content("network_def", instantiate=True)


def load_trained_network(
    ckpt_path: Optional[Union[str, os.PathLike]],
    prediction: Optional[Mapping[str, Any]] = None,
    allow_untrained: bool = False,
    fallback_config: Optional[Union[str, os.PathLike]] = None,
    bundle_root: Union[str, os.PathLike] = ".",
    map_location: Any = "cpu",
    fallback_overrides: Optional[Mapping[str, Any]] = None,
) -> torch.nn.Module:
    """The network of a checkpoint, built from the constructor arguments saved in it, with its weights.

    A model trained with any recipe or overrides is served without repeating them: the state dict
    holds the network's arguments (``MedicalMattingNet.get_extra_state``). Prediction settings
    (``num_samples``, ``test_time_flips``, ``sample_seed``) may be changed through ``prediction``;
    ``None`` values keep what the model was trained with.

    Args:
        ckpt_path: ``model.pt`` (a state dict) or a training checkpoint holding one.
        prediction: ``{"num_samples": ..., "test_time_flips": ..., "sample_seed": ...}``.
        allow_untrained: when ``ckpt_path`` is missing, warn and return the untrained network of
            ``fallback_config`` (smoke tests only: the outputs are meaningless).
        fallback_config: the training config whose ``network_def`` is used for a checkpoint without
            saved arguments (written before they were saved) or with ``allow_untrained``.
        bundle_root: ``bundle_root`` of ``fallback_config``.
        map_location: where the weights are loaded.
        fallback_overrides: ``ConfigParser`` overrides of ``fallback_config`` (e.g. a small network
            for smoke tests: ``{"prob_filters": [4, 8, 8, 8]}``).

    Raises:
        FileNotFoundError: the checkpoint is missing (and ``allow_untrained`` is false).
        ValueError: the checkpoint is unreadable, or its weights do not fit the network.

    Example::

        net = load_trained_network("models/model.pt", {"test_time_flips": "none"}).eval()
    """
    from scripts.networks import PREDICTION_KEYS

    prediction = {k: v for k, v in dict(prediction or {}).items() if null_setting(v) is not None}
    unknown = sorted(set(prediction) - set(PREDICTION_KEYS))
    if unknown:
        raise ValueError(f"prediction settings {unknown} are not prediction settings; allowed: {list(PREDICTION_KEYS)}")
    if none_if_null(ckpt_path) is None or not Path(ckpt_path).is_file():
        if not allow_untrained:
            read_state_dict(ckpt_path or "<no checkpoint given>")  # raises FileNotFoundError naming the path
        if fallback_config is None:
            raise FileNotFoundError(f"checkpoint not found: {ckpt_path}, and no fallback_config to build an untrained network")
        warnings.warn(f"checkpoint {ckpt_path} not found: running the UNTRAINED network (allow_untrained=true)")
        # the prediction settings are top-level keys of the training config too
        return _fallback_network(fallback_config, bundle_root, {**dict(fallback_overrides or {}), **prediction})
    state = read_state_dict(ckpt_path, map_location)
    config = MedicalMattingNet.checkpoint_config(state)
    if config is None:
        if fallback_config is None:
            raise ValueError(f"checkpoint {ckpt_path} does not say which network it belongs to (no _extra_state)")
        config = _fallback_network(fallback_config, bundle_root, fallback_overrides).config
        state["_extra_state"] = {"config": config}
    try:
        network = MedicalMattingNet(**dict(config, **prediction))
        network.load_state_dict(state, strict=True)
    except (TypeError, RuntimeError, ValueError) as e:
        raise ValueError(f"checkpoint {ckpt_path}: {first_line(e)}") from e
    return network


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


def _check_size(size: Optional[Sequence[int]], name: str) -> Optional[Tuple[int, int]]:
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
        flips: test-time flips ``"none"``, ``"h"``, ``"hv"`` (``None``: the network's ``test_time_flips``).
        max_internal_size: the networks run on a grid of at most this many pixels on the long side:
            a larger image (after ``input_size``) is shrunk, anti-aliased, keeping its aspect ratio,
            and the matte is still decoded at the full output size. ``None``: no bound. Default
            :data:`DEFAULT_MAX_INTERNAL_SIZE` (4x the 128 px training images: images up to that
            size are processed as they are, larger ones cost bounded memory and time).
        band_pixels: when the output grid has more than ``max_internal_size ** 2`` pixels, the
            matte and the uncertainty map are decoded in bands of about this many output pixels
            (``MedicalMattingNet.predict_in_rows``), so memory does not grow with the output size
            beyond the two result maps.

    The arguments are typed values: the configs turn command-line text such as ``"null"`` into them
    (``scripts.workflows.config_values``).

    Raises:
        ValueError: one line naming the argument that is not of its type or range.

    Example::

        inferer = MattingInferer(output_size=(256, 256))
        out = inferer(image, network)   # out["alpha"] (B, 1, 256, 256)
    """

    def __init__(
        self,
        output_size: Optional[Sequence[int]] = None,
        input_size: Optional[Sequence[int]] = None,
        num_samples: Optional[int] = None,
        flips: Optional[Literal["none", "h", "hv"]] = None,
        max_internal_size: Optional[int] = DEFAULT_MAX_INTERNAL_SIZE,
        band_pixels: int = 1 << 18,
    ) -> None:
        super().__init__()
        self.output_size = _check_size(output_size, "output_size")
        self.input_size = _check_size(input_size, "input_size")
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                        or num_samples < 1):
            raise ValueError(f"num_samples must be null or a positive integer, got {num_samples!r}")
        self.num_samples = num_samples
        if flips is not None and flips not in FLIP_SETS:
            raise ValueError(f"flips must be null or one of {sorted(FLIP_SETS)}, got {flips!r}")
        self.flips = flips
        limit = max_internal_size
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 16):
            raise ValueError(f"max_internal_size must be null or an integer >= 16 (pixels), got {max_internal_size!r}")
        self.max_internal_size = limit
        self.band_pixels = int(band_pixels)

    def internal_size(self, size: Sequence[int]) -> tuple:
        """The grid (h, w) the networks run on for an image of ``size`` (after ``input_size``)."""
        h, w = int(size[0]), int(size[1])
        limit = self.max_internal_size
        if limit is None or max(h, w) <= limit:
            return h, w
        scale = limit / max(h, w)
        return max(1, round(h * scale)), max(1, round(w * scale))

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        original = tuple(int(s) for s in x.shape[-2:])
        target = self.output_size or original
        grid = self.internal_size(self.input_size or original)
        if grid != original:
            shrink = grid[0] < original[0] or grid[1] < original[1]
            x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False, antialias=shrink)
        options: Dict[str, Any] = {"output_size": target, "num_samples": self.num_samples}
        if self.flips is not None:
            options["flips"] = self.flips
        limit = self.max_internal_size
        if limit is not None and target[0] * target[1] > limit * limit and hasattr(network, "predict_in_rows"):
            return network.predict_in_rows(x, band_pixels=self.band_pixels, **options)
        return network.predict(x, **options)


def run_inference(evaluator: "MattingInferenceEvaluator") -> None:
    """``evaluator.run()`` for the command line: a run where files failed ends with the one-line
    summary naming each failed file and exit status 1, without a traceback (every good file is
    written; ``inference_summary.json`` has the details)."""
    from scripts.handlers.inference_summary import InferenceFailedError

    try:
        evaluator.run()
    except InferenceFailedError as e:
        print(f"inference: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def run_matting_inferer(engine: SupervisedEvaluator, image: torch.Tensor) -> Mapping[str, torch.Tensor]:
    """The prediction step of both evaluators: ``engine.inferer(image, engine.network)`` in eval mode
    (CUDA autocast with ``amp``), checked to be ``predict``'s dict (``alpha``, ``uncertainty``, ...)."""
    with engine.mode(engine.network):
        if engine.amp:
            with torch.autocast("cuda", **engine.amp_kwargs):
                out = engine.inferer(image, engine.network)
        else:
            out = engine.inferer(image, engine.network)
    if not isinstance(out, Mapping) or "alpha" not in out or "uncertainty" not in out:
        raise TypeError("the inferer must return a dict with 'alpha' and 'uncertainty' (MedicalMattingNet.predict)")
    return out


class MattingInferenceEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` for ``MedicalMattingNet.predict``: keeps the alpha matte and the uncertainty map.

    Each iteration stores ``{"image", "pred": alpha (B, 1, H', W'), "uncertainty": (B, 1, H', W')}``
    (plus ``"case"`` when the batch has it) in ``engine.state.output``; no label is needed. It fires
    the same iteration events as ``SupervisedEvaluator``, so MONAI handlers (stats, MLflow,
    ``MattingPredictionWriter``) attach as usual. All ``SupervisedEvaluator`` arguments apply;
    ``inferer`` must return a dict with ``alpha`` and ``uncertainty`` (default :class:`MattingInferer`).

    A batch's items that failed to load (``"failures"``, ``scripts.workflows.failures.collate_with_failures``)
    and a batch whose inference raises are recorded in ``engine.state.inference_failures`` instead
    of stopping the run; the batch then has no output. A batch's NIfTI volumes (``"volumes"``) are inferred slice
    by slice (:func:`scripts.workflows.volumes.infer_volume`) into ``<volume_output_dir>/<case>_alpha.nii.gz``
    and ``<case>_uncertainty.nii.gz`` and recorded in ``engine.state.inference_volumes``.

    Args (besides ``SupervisedEvaluator``'s):
        volume_output_dir: folder of the volumes' maps (``None``: volumes are recorded as failures).
        volume_axis: slicing axis of volumes (0, 1, 2 of X, Y, Z; default 2).
        slice_batch_pixels: most pixels of the slices run through the network at once.
        intensity_range: ``None`` (the bundle's rule) or ``[low, high]`` for volumes.
        progress: show a progress bar of each volume's slices.

    Example::

        evaluator = MattingInferenceEvaluator(device, loader, network, inferer=MattingInferer((256, 256)),
                                              val_handlers=[MattingPredictionWriter("out")])
        evaluator.run()
    """

    def __init__(
        self,
        *args: Any,
        volume_output_dir: Optional[Union[str, os.PathLike]] = None,
        volume_axis: int = 2,
        slice_batch_pixels: Optional[int] = None,
        intensity_range: Optional[Sequence[float]] = None,
        progress: Union[bool, str] = False,
        **kwargs: Any,
    ) -> None:
        from scripts.workflows.volumes import DEFAULT_SLICE_BATCH_PIXELS

        if kwargs.get("inferer") is None:
            kwargs["inferer"] = MattingInferer()
        super().__init__(*args, **kwargs)
        self.volume_output_dir = none_if_null(volume_output_dir)
        self.volume_axis = int(volume_axis)
        self.slice_batch_pixels = int(none_if_null(slice_batch_pixels) or DEFAULT_SLICE_BATCH_PIXELS)
        self.intensity_range = none_if_null(intensity_range)
        self.progress = str(progress).strip().lower() in ("true", "1", "yes", "on")

    def infer_volumes(self, volumes: Sequence[Mapping[Hashable, Any]], failures: List[Dict[str, Any]]) -> None:
        """Each volume slice by slice into the output folder; a volume that fails is recorded, not raised."""
        import copy

        from scripts.workflows.volumes import infer_volume

        self.state.inference_volumes = []
        for item in volumes:
            path, case = str(item[CommonKeys.IMAGE]), str(item.get("case"))
            try:
                if self.volume_output_dir is None:
                    raise ValueError("volumes need an output folder (volume_output_dir)")
                inferer = copy.copy(self.inferer)
                if getattr(inferer, "output_size", None) is not None:  # a volume keeps its own geometry
                    inferer.output_size = None
                out = Path(self.volume_output_dir)
                with self.mode(self.network):
                    infer_volume(path, self.network, inferer,
                                 {"alpha": out / f"{case}_alpha.nii.gz", "uncertainty": out / f"{case}_uncertainty.nii.gz"},
                                 axis=self.volume_axis, channels=int(getattr(self.network, "in_channels", 1)),
                                 intensity_range=self.intensity_range, slice_batch_pixels=self.slice_batch_pixels,
                                 device=self.state.device, progress=self.progress)
                self.state.inference_volumes.append({"case": case, CommonKeys.IMAGE: path})
            except (ValueError, RuntimeError, TypeError, MemoryError, OSError) as e:
                failures.append({"case": case, CommonKeys.IMAGE: path, FAILURE_KEY: failure_reason(e)})

    def _iteration(self, engine: SupervisedEvaluator, batchdata: Dict[str, Any]) -> Dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        failures: List[Dict[str, Any]] = []
        volumes: List[Dict[str, Any]] = []
        if isinstance(batchdata, dict):
            failures = list(batchdata.pop(FAILURES_KEY, []))
            volumes = list(batchdata.pop(VOLUMES_KEY, []))
        engine.state.inference_failures = failures  # read by InferenceSummary at ITERATION_COMPLETED
        engine.infer_volumes(volumes, failures)
        engine.state.output = []
        if isinstance(batchdata, Mapping) and CommonKeys.IMAGE not in batchdata:
            return engine.state.output  # every item of the batch failed to load
        try:
            batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
            inputs = batch[0]
            out = run_matting_inferer(engine, inputs)
        except (ValueError, RuntimeError, TypeError, MemoryError) as e:  # this batch fails, the others go on
            files = getattr(batchdata.get(CommonKeys.IMAGE), "meta", {}).get("filename_or_obj", [])
            cases = batchdata.get("case") or [None] * len(files)
            files = files if isinstance(files, (list, tuple)) else [files]
            reason = failure_reason(e)
            failures.extend({"case": c, CommonKeys.IMAGE: str(f), FAILURE_KEY: reason} for c, f in zip(cases, files))
            return engine.state.output
        engine.state.output = {CommonKeys.IMAGE: inputs}
        engine.state.output[CommonKeys.PRED] = out["alpha"].float()
        engine.state.output["uncertainty"] = out["uncertainty"].float()
        if isinstance(batchdata, Mapping) and "case" in batchdata:
            engine.state.output["case"] = batchdata["case"]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
