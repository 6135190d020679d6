"""Fold assignment: seeded, balanced, every case in exactly one fold, groups kept together."""

import numpy as np
import pytest

from scripts.data.errors import DatasetValidationError
from scripts.data.folds import assign_folds, lidc_patient
from scripts.data.trimaps import trimap_from_annotations


@pytest.mark.parametrize("n, k", [(39, 4), (40, 4), (5, 5), (7, 3), (100, 10), (4, 1)])
def test_balanced_and_complete(n, k):
    cases = [f"case{i:03d}" for i in range(n)]
    for seed in range(3):
        folds = assign_folds(cases, k, seed)
        assert set(folds) == set(cases) and set(folds.values()) <= set(range(k))
        sizes = [list(folds.values()).count(f) for f in range(k)]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n


def test_seeded_and_order_independent():
    cases = [f"c{i}" for i in range(39)]
    a = assign_folds(cases, 4, 0)
    assert a == assign_folds(list(reversed(cases)), 4, 0)
    assert a != assign_folds(cases, 4, 1)


def test_grouped_keeps_patients_together_and_balances():
    rng = np.random.default_rng(0)
    cases = [f"P{p:03d}_slice{s}" for p in range(60) for s in range(int(rng.integers(1, 6)))]
    for seed in range(3):
        folds = assign_folds(cases, 4, seed, group_of=lidc_patient)
        assert set(folds) == set(cases)
        per_patient = {}
        for c, f in folds.items():
            per_patient.setdefault(lidc_patient(c), set()).add(f)
        assert all(len(v) == 1 for v in per_patient.values())
        sizes = [list(folds.values()).count(f) for f in range(4)]
        assert max(sizes) - min(sizes) <= 5  # at most the largest group size


def test_grouped_with_single_slice_patients_is_exactly_balanced():
    cases = [f"P{p}_slice0" for p in range(10)]
    folds = assign_folds(cases, 4, 0, group_of=lidc_patient)
    assert sorted(list(folds.values()).count(f) for f in range(4)) == [2, 2, 3, 3]


def test_errors():
    with pytest.raises(ValueError, match="need at least 4 cases"):
        assign_folds(["a", "b", "c"], 4, 0)
    with pytest.raises(ValueError, match="need at least 3 groups"):
        assign_folds(["A_slice1", "A_slice2", "B_slice1"], 3, 0, group_of=lidc_patient)
    with pytest.raises(ValueError, match="unique"):
        assign_folds(["a", "a"], 1, 0)
    with pytest.raises(DatasetValidationError, match="'P1-slice2'"):
        lidc_patient("P1-slice2")
    assert lidc_patient("LIDC-IDRI-0078_slice_x_slice12") == "LIDC-IDRI-0078_slice_x"


def test_derived_trimap_rule():
    alpha = np.zeros((9, 9), np.uint8)
    alpha[3:6, 3:6] = 255
    alpha[4, 6] = 90  # one soft pixel
    m1 = (alpha == 255).astype(np.uint8)
    m2 = m1.copy()
    m2[2, 4] = 1  # raters disagree here
    t0 = trimap_from_annotations(alpha, [m1, m2], dilation=0)
    assert t0[4, 6] == 128 and t0[2, 4] == 128 and t0[4, 4] == 255 and t0[0, 0] == 0
    assert (t0 == 128).sum() == 2
    t1 = trimap_from_annotations(alpha, [m1, m2], dilation=1)
    assert (t1 == 128).sum() > 2 and t1[1, 4] == 128 and t1[0, 0] == 0
