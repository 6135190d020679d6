"""What each supported dataset looks like: image size, channels, rater count, sources, fold grouping.

Example:
    >>> from scripts.data.specs import get_spec
    >>> spec = get_spec("brain-growth")
    >>> spec.spatial_shape, spec.channels, spec.raters
    ((128, 128), 1, 7)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RemoteFile", "DatasetSpec", "DATASET_SPECS", "get_spec"]


@dataclass(frozen=True)
class RemoteFile:
    """A published file: its address and pinned sha256.

    Args:
        url: the public address.
        sha256: the expected sha256 hex digest.
    """

    url: str
    sha256: str


@dataclass(frozen=True)
class DatasetSpec:
    """Layout of one matting dataset.

    Args:
        name: dataset name as used by ``--dataset`` and in ``datalist.json``.
        spatial_shape: (H, W) of every image, alpha matte, mask and trimap.
        channels: 1 for grey images stored (H, W), 3 for RGB images stored (H, W, 3).
        raters: number of raters' masks per case.
        trimaps_required: whether published trimaps must be given (else derived from the raters).
        group_folds_by_patient: whether case keys are ``<patient>_slice<N>`` and folds are grouped by patient.
        source: default published pickle (or None when there is no public address).
        trimaps: default published trimaps zip (or None).

    Example:
        >>> DatasetSpec("toy", (64, 64), 1, 2).raters
        2
    """

    name: str
    spatial_shape: tuple[int, int]
    channels: int
    raters: int
    trimaps_required: bool = False
    group_folds_by_patient: bool = False
    source: RemoteFile | None = None
    trimaps: RemoteFile | None = None


DATASET_SPECS: dict[str, DatasetSpec] = {
    "brain-growth": DatasetSpec(
        "brain-growth", (128, 128), 1, 7, trimaps_required=True,
        source=RemoteFile("https://github.com/wangsssky/MedicalMatting/raw/main/dataset/brain_growth_alpha.zip",
                          "89abde1eebe4131c2df68f7099b9115cc2624c44bba83fea8e293feb7a3501db"),
        trimaps=RemoteFile("https://github.com/wangsssky/MedicalMatting/raw/main/dataset/trimap_brain.zip",
                           "421d90aaa128473074700dfef9967a32617fdbd771b06dc2d9f59d0ab6c9dfdb"),
    ),
    "lidc": DatasetSpec("lidc", (128, 128), 1, 4, group_folds_by_patient=True),
    "isic": DatasetSpec("isic", (256, 256), 3, 3),
    "phantom": DatasetSpec("phantom", (128, 128), 1, 7),  # shape / raters come from the phantom preset
}


def get_spec(name: str) -> DatasetSpec:
    """Return the :class:`DatasetSpec` called ``name`` (a ``ValueError`` naming the choices otherwise)."""
    try:
        return DATASET_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown dataset '{name}', choose one of {sorted(DATASET_SPECS)}") from None
