"""Seeded, balanced cross-validation folds, optionally grouped (LIDC: all slices of a patient together).

Hand-written: MONAI's ``partition_dataset`` balances folds but cannot keep groups together, and
scikit-learn (``GroupKFold``) is not a dependency of the bundle.

Rule:
    * ungrouped: cases are sorted, shuffled with ``numpy.random.default_rng(seed)`` and dealt round-robin,
      so fold sizes differ by at most one;
    * grouped: groups are sorted, shuffled with the same generator, then (stable) ordered by size, largest
      first, and each group goes to the fold with the fewest cases so far (lowest index on ties). Sizes
      differ by at most the largest group size, and by at most one when every group has one case.

Example:
    >>> assign_folds(["a", "b", "c", "d", "e"], num_folds=2, seed=0)  # doctest: +SKIP
    {'a': 1, 'b': 0, 'c': 0, 'd': 1, 'e': 0}
    >>> lidc_patient("LIDC-IDRI-0001_slice12")
    'LIDC-IDRI-0001'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from scripts.data.errors import DatasetValidationError

__all__ = ["assign_folds", "lidc_patient"]


def lidc_patient(case: str) -> str:
    """Patient id of a LIDC case key ``<patient>_slice<N>`` (a :class:`DatasetValidationError` otherwise)."""
    patient, sep, slice_no = case.rpartition("_slice")
    if not sep or not patient or not slice_no.isdigit():
        raise DatasetValidationError(f"case '{case}': LIDC case keys must look like '<patient>_slice<N>'")
    return patient


def assign_folds(cases: Sequence[str], num_folds: int, seed: int,
                 group_of: Callable[[str], str] | None = None) -> dict[str, int]:
    """Assign every case to exactly one fold ``0 .. num_folds-1``.

    Args:
        cases: case names (unique).
        num_folds: number of folds, at least 1 and at most the number of cases (groups when grouped).
        seed: seed of the shuffle; the same cases and seed always give the same folds.
        group_of: maps a case to its group (e.g. :func:`lidc_patient`); None means every case is its own group.

    Returns:
        ``{case: fold}``.

    Raises:
        ValueError: on duplicate cases or an impossible number of folds.
    """
    cases = list(cases)
    if len(set(cases)) != len(cases):
        raise ValueError("assign_folds: case names must be unique")
    if num_folds < 1:
        raise ValueError(f"assign_folds: num_folds must be >= 1, got {num_folds}")
    rng = np.random.default_rng(seed)
    if group_of is None:
        order = sorted(cases)
        if num_folds > len(order):
            raise ValueError(f"assign_folds: {num_folds} folds need at least {num_folds} cases, got {len(order)}")
        perm = rng.permutation(len(order))
        return {order[i]: int(pos % num_folds) for pos, i in enumerate(perm)}

    groups: dict[str, list[str]] = {}
    for case in cases:
        groups.setdefault(group_of(case), []).append(case)
    if num_folds > len(groups):
        raise ValueError(f"assign_folds: {num_folds} folds need at least {num_folds} groups, got {len(groups)}")
    names = sorted(groups)
    shuffled = [names[i] for i in rng.permutation(len(names))]
    shuffled.sort(key=lambda g: -len(groups[g]))  # stable: ties keep the seeded order
    sizes = [0] * num_folds
    folds: dict[str, int] = {}
    for g in shuffled:
        fold = int(np.argmin(sizes))
        sizes[fold] += len(groups[g])
        for case in groups[g]:
            folds[case] = fold
    return folds
