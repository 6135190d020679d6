"""Phantom synthesis: presets, matting equation structure, raters, trimap, determinism, speed."""

import json
import time

import numpy as np
import pytest
from scipy import ndimage

from scripts.data.phantom import PHANTOM_PRESETS, PhantomPreset, make_phantom_case, make_phantom_dataset
from scripts.data.prepare import prepare_dataset

EXPECTED = {"brain-growth": ((128, 128), 1, 7), "lidc": ((128, 128), 1, 4), "isic": ((256, 256), 3, 3)}


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_shapes_raters_and_value_ranges(preset):
    hw, channels, raters = EXPECTED[preset]
    cases = make_phantom_dataset(3, seed=5, preset=preset)
    assert list(cases) == ["case001", "case002", "case003"]
    for case in cases.values():
        image, alpha, masks, trimap = case["image"], case["alpha"], case["masks"], case["trimap"]
        assert image.dtype == np.uint8 and image.shape == (hw if channels == 1 else (*hw, 3))
        assert alpha.dtype == np.uint8 and alpha.shape == hw
        assert alpha.min() == 0 and alpha.max() == 255  # background and a fully opaque lesion core
        soft = (alpha > 0) & (alpha < 255)
        assert soft.any()  # a soft border exists
        assert len(masks) == raters
        for m in masks:
            assert m.dtype == np.uint8 and m.shape == hw and set(np.unique(m)) <= {0, 1} and m.any()
        assert trimap.dtype == np.uint8 and set(np.unique(trimap)) <= {0, 128, 255}
        unknown = trimap == 128
        # the unknown region covers the whole soft border and every rater disagreement
        assert unknown[soft].all()
        stack = np.stack(masks).astype(bool)
        assert unknown[stack.any(0) & ~stack.all(0)].all()
        # outside the unknown region the trimap is the alpha matte
        np.testing.assert_array_equal(trimap[~unknown], alpha[~unknown])


def test_raters_disagree_and_follow_the_matte():
    case = make_phantom_case(np.random.default_rng(3), "brain-growth")
    masks = np.stack(case["masks"]).astype(bool)
    assert len({m.tobytes() for m in masks}) > 1  # not identical copies
    alpha = case["alpha"]
    core = ndimage.binary_erosion(alpha == 255, iterations=3)
    far = ndimage.binary_erosion(alpha == 0, iterations=3)
    assert masks[:, core].all() and not masks[:, far].any()
    disagree = masks.any(0) & ~masks.all(0)
    assert disagree.any()


def test_border_softness_varies_around_the_contour():
    # width of the soft band measured along rays from the lesion centre differs around the contour
    case = make_phantom_case(np.random.default_rng(11), "brain-growth")
    a = case["alpha"].astype(float) / 255
    cy, cx = ndimage.center_of_mass(a == 1)
    widths = []
    for ang in np.linspace(0, 2 * np.pi, 32, endpoint=False):
        r = np.arange(0, 64, 0.25)
        ys, xs = cy + r * np.sin(ang), cx + r * np.cos(ang)
        prof = ndimage.map_coordinates(a, [ys, xs], order=1)
        widths.append(0.25 * np.count_nonzero((prof > 0.05) & (prof < 0.95)))
    assert max(widths) > 2.5 * max(min(widths), 0.25)


def test_image_obeys_matting_structure():
    # the lesion core and the far background have separated intensity distributions; the border mixes them
    case = make_phantom_case(np.random.default_rng(2), "lidc")
    image, alpha = case["image"].astype(float), case["alpha"]
    fg, bg = image[alpha == 255].mean(), image[alpha == 0].mean()
    half = image[(alpha > 100) & (alpha < 155)].mean()
    assert fg - bg > 40
    assert min(fg, bg) < half < max(fg, bg)
    assert image[alpha == 0].std() > 1  # textured / noisy, not flat


def test_determinism_and_seed_dependence(tmp_path):
    a = make_phantom_dataset(4, seed=7, preset="isic")
    b = make_phantom_dataset(4, seed=7, preset="isic")
    c = make_phantom_dataset(4, seed=8, preset="isic")
    for k in a:
        for key in ("image", "alpha", "trimap"):
            assert np.array_equal(a[k][key], b[k][key])
        assert all(np.array_equal(x, y) for x, y in zip(a[k]["masks"], b[k]["masks"]))
    assert not np.array_equal(a["case001"]["image"], c["case001"]["image"])
    # cases of one dataset differ from each other
    assert not np.array_equal(a["case001"]["alpha"], a["case002"]["alpha"])
    # identical bytes on disk for the same seed
    out1 = prepare_dataset("phantom", tmp_path / "p1", num_cases=3, seed=7, preset="lidc", folds=3)
    out2 = prepare_dataset("phantom", tmp_path / "p2", num_cases=3, seed=7, preset="lidc", folds=3)
    files1 = sorted(p.relative_to(out1) for p in out1.rglob("*") if p.is_file())
    assert files1 == sorted(p.relative_to(out2) for p in out2.rglob("*") if p.is_file())
    assert all((out1 / f).read_bytes() == (out2 / f).read_bytes() for f in files1)


def test_phantom_dataset_on_disk(tmp_path):
    out = prepare_dataset("phantom", tmp_path / "ph", num_cases=6, seed=1, preset="isic", folds=4)
    dl = json.loads((out / "datalist.json").read_text())
    assert dl["name"] == "phantom" and dl["preset"] == "isic" and dl["raters"] == 3
    assert dl["spatial_shape"] == [256, 256] and dl["channels"] == 3
    assert sorted(it["fold"] for it in dl["training"]) == [0, 0, 1, 1, 2, 3]


def test_dozens_of_cases_in_seconds():
    start = time.perf_counter()
    make_phantom_dataset(24, seed=0, preset="brain-growth")
    assert time.perf_counter() - start < 10.0  # ~0.5 s on an idle 2-core machine


def test_custom_preset_and_bad_arguments():
    case = make_phantom_case(np.random.default_rng(0), PhantomPreset("tiny", (48, 64), 1, 2))
    assert case["image"].shape == (48, 64) and len(case["masks"]) == 2
    with pytest.raises(ValueError, match="unknown phantom preset"):
        make_phantom_case(np.random.default_rng(0), "nope")
    with pytest.raises(ValueError, match="num_cases"):
        make_phantom_dataset(0)
    assert set(PHANTOM_PRESETS) == set(EXPECTED)
