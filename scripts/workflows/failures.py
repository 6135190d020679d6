"""Failure capture of folder inference: one file that fails becomes a recorded failure, not an abort.

The inference workflow (``configs/inference.yaml``) wraps its pre- and post-processing in
:class:`CatchFailuresd`, routes NIfTI volumes past the 2-D pipeline with :class:`RouteVolumesd` and
collates with :func:`collate_with_failures`; ``MattingInferenceEvaluator``
(``scripts.workflows.inference``) records the failures of a batch and
``scripts.handlers.inference_summary.InferenceSummary`` reports them, each under :data:`FAILURE_KEY`
with the file of :func:`source_file` and the one-line reason of :func:`failure_reason`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Hashable, Mapping, Optional, Sequence

from monai.utils import CommonKeys

__all__ = [
    "FAILURE_KEY",
    "FAILURES_KEY",
    "VOLUME_KEY",
    "VOLUMES_KEY",
    "first_line",
    "failure_reason",
    "source_file",
    "CatchFailuresd",
    "RouteVolumesd",
    "collate_with_failures",
]


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type and "empty or truncated file" when it has none)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__ + " (empty or truncated file)"


#: key of a data item (or batch) that could not be processed: the one-line reason
FAILURE_KEY = "failure"
#: batch key listing the items of a batch that failed before collation (:func:`collate_with_failures`)
FAILURES_KEY = "failures"


def failure_reason(error: BaseException) -> str:
    """One line saying why: the innermost cause's message (MONAI wraps transform errors in
    ``RuntimeError("applying transform ...")``), with its type."""
    while error.__cause__ is not None and error.__cause__ is not error:
        error = error.__cause__
    return first_line(error) if isinstance(error, (ValueError, TypeError, OSError)) else (
        f"{type(error).__name__}: {first_line(error)}")


def source_file(item: Mapping[Hashable, Any]) -> str:
    """The input file an item came from: its image's ``filename_or_obj`` metadata, the image path, else its case."""
    image = item.get(CommonKeys.IMAGE)
    meta = getattr(image, "meta", None)
    if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
        name = meta["filename_or_obj"]
        return str(name[0] if isinstance(name, (list, tuple)) else name)
    return str(image) if isinstance(image, (str, os.PathLike)) else str(item.get("case", "?"))


class CatchFailuresd:
    """Run ``transform`` on a data item; an exception becomes a recorded failure instead of an abort.

    A failed item is ``{"case", "image": <the input's file>, "failure": <one-line reason>}``; an
    item that already failed passes through untouched, so the same wrapper serves the
    pre-processing (unreadable, truncated, too large, wrong shape, NaN...) and the
    post-processing (a file that cannot be written). :func:`collate_with_failures` keeps failed
    items out of the network's batch and ``MattingInferenceEvaluator`` reports them
    (``scripts.handlers.inference_summary.InferenceSummary`` writes them to a summary file).

    Args:
        transform: the wrapped transform (e.g. ``Compose([...])``).

    Example::

        Dataset(datalist, transform=CatchFailuresd(preprocessing))
    """

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        if FAILURE_KEY in data:
            return dict(data)
        try:
            return self.transform(data)
        except Exception as e:  # one bad file must not abort the others
            source = source_file(data)
            reason = failure_reason(e)
            if os.path.basename(source) not in reason:  # decoder errors do not say which file they read
                reason = f"{source}: {reason}"
            return {"case": data.get("case"), CommonKeys.IMAGE: source, FAILURE_KEY: reason}


#: key of a data item that is a NIfTI volume, inferred slice by slice (:class:`RouteVolumesd`)
VOLUME_KEY = "volume"
#: batch key listing the volumes of a batch (:func:`collate_with_failures`)
VOLUMES_KEY = "volumes"


class RouteVolumesd:
    """Send NIfTI volumes past the 2-D pipeline: a volume item is checked from its header and kept as a
    path (``{"case", "image", "volume": True}``), for :func:`scripts.workflows.volumes.infer_volume`
    to read slice by slice; every other item goes through ``transform``.

    Args:
        transform: the 2-D image pipeline (``Compose([...])``).
        max_pixels: most pixels of a slice (``scripts.data.image_limits.check_image_header``).
        max_voxels: most voxels of a volume, every dimension counted.
    """

    def __init__(self, transform: Any, max_pixels: Optional[int] = None, max_voxels: Optional[int] = None) -> None:
        self.transform = transform
        self.max_pixels = max_pixels
        self.max_voxels = max_voxels

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        from scripts.data import image_limits
        from scripts.workflows.volumes import is_volume, volume_shape

        path = data.get(CommonKeys.IMAGE)
        if isinstance(path, (str, os.PathLike)) and is_volume(path):
            image_limits.check_image_header(path, self.max_pixels or image_limits.MAX_IMAGE_PIXELS,
                                            self.max_voxels or image_limits.MAX_IMAGE_VOXELS)
            volume_shape(path)  # one 3-D volume, or a one-line refusal naming the file
            return {"case": data.get("case"), CommonKeys.IMAGE: str(path), VOLUME_KEY: True}
        return self.transform(data)


def collate_with_failures(items: Sequence[Mapping[Hashable, Any]]) -> Dict[Hashable, Any]:
    """``list_data_collate`` of the items that loaded, plus ``"failures"``: the items that did not, and
    ``"volumes"``: the volumes (:class:`RouteVolumesd`), inferred slice by slice by the evaluator."""
    from monai.data import list_data_collate

    good = [item for item in items if FAILURE_KEY not in item and VOLUME_KEY not in item]
    batch: Dict[Hashable, Any] = dict(list_data_collate(good)) if good else {}
    batch[FAILURES_KEY] = [dict(item) for item in items if FAILURE_KEY in item]
    batch[VOLUMES_KEY] = [dict(item) for item in items if VOLUME_KEY in item and FAILURE_KEY not in item]
    return batch
