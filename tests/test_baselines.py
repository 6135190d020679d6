"""Classic baselines: matting Laplacian, information-flow and Bayesian matting, the runner, the closed-form study."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tools.baselines import classic_matting
from tools.baselines.bayesian import estimate_alpha_bayesian, orchard_bouman, solve_pairs
from tools.studies.closed_form_study import variant_alpha
from tools.baselines.information_flow import estimate_alpha_ifm, lle_weights
from tools.baselines.laplacian import matting_laplacian, solve_alpha


def blurred_disk(size: int = 32, radius: float = 8.0, blur: float = 1.5, rgb: bool = False):
    """(image, trimap, true alpha): a blurred disk on a darker background, trimap unknown where 0 < alpha < 1."""
    yy, xx = np.mgrid[:size, :size]
    disk = (np.hypot(yy - size / 2, xx - size / 2) < radius).astype(np.float64)
    alpha = ndimage.gaussian_filter(disk, blur)
    image = 0.2 + 0.6 * alpha  # foreground 0.8, background 0.2: the compositing equation holds
    if rgb:
        image = np.stack([0.1 + 0.8 * alpha, 0.7 - 0.5 * alpha, 0.3 + 0.2 * alpha], axis=-1)
    trimap = np.where(alpha > 0.98, 1.0, np.where(alpha < 0.02, 0.0, 0.5))
    return image, trimap, alpha


def unknown_mae(pred, alpha, trimap):
    u = trimap == 0.5
    return float(np.abs(pred - alpha)[u].mean()), float(np.abs(0.5 - alpha)[u].mean())


# --- matting Laplacian ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("radius", [1, 2])
def test_matting_laplacian_matches_pymatting_on_colour(radius):
    import pymatting

    image = np.random.default_rng(0).random((14, 11, 3))
    ours = matting_laplacian(image, 1e-5, radius)
    ref = pymatting.cf_laplacian(image, 1e-5, radius)
    assert abs(ours - ref).max() < 1e-10
    assert abs(ours - ours.T).max() < 1e-12
    assert np.abs(np.asarray(ours.sum(axis=1))).max() < 1e-10  # constants are in the null space


def test_grey_laplacian_equals_replicated_rgb_with_a_third_of_eps():
    grey = np.random.default_rng(1).random((12, 12))
    one = matting_laplacian(grey, 1e-2)
    three = matting_laplacian(np.repeat(grey[..., None], 3, axis=-1), 3e-2)
    assert abs(one - three).max() < 1e-8
    assert abs(one - matting_laplacian(np.repeat(grey[..., None], 3, axis=-1), 1e-2)).max() > 1e-2


def test_solve_alpha_hard_and_soft_constraints():
    image, trimap, alpha = blurred_disk(24, 6.0)
    lap = matting_laplacian(image, 1e-7)
    hard = solve_alpha(lap, trimap)
    known = trimap != 0.5
    assert np.array_equal(hard[known], trimap[known])
    soft = solve_alpha(lap, trimap, lam=100.0)
    assert np.abs(soft[known] - trimap[known]).max() < 1e-2
    mae, trivial = unknown_mae(np.clip(hard, 0, 1), alpha, trimap)
    assert mae < 0.1 * trivial
    with pytest.raises(ValueError, match="0..255"):
        solve_alpha(lap, trimap * 255)
    with pytest.raises(ValueError, match="radius"):
        matting_laplacian(image, radius=0)


# --- information-flow matting --------------------------------------------------------------------------------------

def test_lle_weights_sum_to_one_and_reconstruct():
    rng = np.random.default_rng(2)
    neighbours = rng.random((5, 4, 3))
    mix = rng.dirichlet(np.ones(4), size=5)
    center = np.einsum("pk,pkc->pc", mix, neighbours)  # inside the neighbours' hull
    w = lle_weights(center, neighbours, reg=1e-9)
    assert np.allclose(w.sum(axis=1), 1.0)
    assert np.abs(np.einsum("pk,pkc->pc", w, neighbours) - center).max() < 1e-5


@pytest.mark.parametrize("rgb", [False, True])
def test_information_flow_on_a_blurred_disk(rgb):
    image, trimap, alpha = blurred_disk(rgb=rgb)
    pred = estimate_alpha_ifm(image, trimap)
    assert pred.shape == alpha.shape and pred.min() >= 0 and pred.max() <= 1
    mae, trivial = unknown_mae(pred, alpha, trimap)
    assert mae < 0.1 * trivial, (mae, trivial)
    known = trimap != 0.5
    assert np.abs(pred[known] - trimap[known]).max() < 0.02  # soft constraints, lam = 100


def test_information_flow_terms_matter_and_errors():
    image, trimap, alpha = blurred_disk()
    full = estimate_alpha_ifm(image, trimap)
    no_ku = estimate_alpha_ifm(image, trimap, use_ku=False)
    assert np.abs(full - no_ku).max() > 1e-4  # the K-to-U flow changes the result
    with pytest.raises(ValueError, match="0..255"):
        estimate_alpha_ifm(image, trimap * 255)
    with pytest.raises(ValueError, match="shape"):
        estimate_alpha_ifm(image, trimap[:-1])
    with pytest.raises(ValueError, match="foreground"):
        estimate_alpha_ifm(image, np.where(trimap == 1, 0.5, trimap))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        estimate_alpha_ifm(image * 255, trimap)
    with pytest.raises(TypeError, match="k_cmm"):
        estimate_alpha_ifm(image, trimap, k_cmm=3)
    all_known = np.where(trimap == 0.5, 0.0, trimap)
    assert np.array_equal(estimate_alpha_ifm(image, all_known), all_known)


# --- Bayesian matting ----------------------------------------------------------------------------------------------

def test_orchard_bouman_splits_two_groups():
    rng = np.random.default_rng(3)
    samples = np.concatenate([0.2 + 0.01 * rng.standard_normal((40, 1)), 0.8 + 0.01 * rng.standard_normal((60, 1))])
    means, covs = orchard_bouman(samples, np.ones(100), max_clusters=3, min_var=1e-3)
    assert len(means) == 2
    assert np.allclose(sorted(means[:, 0]), [0.2, 0.8], atol=0.01)
    assert np.all(covs[:, 0, 0] < 1e-3)
    one, _ = orchard_bouman(samples[:40], np.ones(40), max_clusters=3, min_var=1e-3)
    assert len(one) == 1


@pytest.mark.parametrize("channels", [1, 3])
def test_solve_pairs_recovers_the_mixing_alpha(channels):
    f, b = np.full(channels, 0.9), np.full(channels, 0.1)
    if channels == 3:
        f, b = np.array([0.9, 0.2, 0.6]), np.array([0.1, 0.7, 0.3])
    colour = 0.3 * f + 0.7 * b
    tight = np.eye(channels)[None] * 1e-6
    f_means, f_covs = f[None], tight
    if channels == 3:  # a second foreground cluster that cannot explain the colour (in grey every F > C could)
        f_means, f_covs = np.vstack([f, [0.5, 0.5, 0.5]]), np.concatenate([tight, tight])
    fv, bv, av = solve_pairs(colour, f_means, f_covs, b[None], tight, alpha0=0.5, max_iter=200, tol=1e-9)
    assert av == pytest.approx(0.3, abs=1e-3)
    assert np.allclose(fv, f, atol=1e-3) and np.allclose(bv, b, atol=1e-3)


@pytest.mark.parametrize("rgb", [False, True])
def test_bayesian_on_a_blurred_disk(rgb):
    image, trimap, alpha = blurred_disk(24, 6.0, 1.2, rgb=rgb)
    pred = estimate_alpha_bayesian(image, trimap)
    known = trimap != 0.5
    assert np.array_equal(pred[known], trimap[known])
    mae, trivial = unknown_mae(pred, alpha, trimap)
    assert mae < 0.1 * trivial, (mae, trivial)


def test_bayesian_errors_and_window_growth():
    image, trimap, alpha = blurred_disk(24, 6.0, 1.2)
    with pytest.raises(ValueError, match="background"):
        estimate_alpha_bayesian(image, np.where(trimap == 0, 0.5, trimap))
    with pytest.raises(ValueError, match="0..255"):
        estimate_alpha_bayesian(image, trimap * 255)
    with pytest.raises(TypeError, match="windw"):
        estimate_alpha_bayesian(image, trimap, windw=3)
    # a 3 x 3 window has too few samples for most unknown pixels: the window grows and all get an alpha
    pred = estimate_alpha_bayesian(image, trimap, window=3)
    assert np.all(np.isfinite(pred))
    assert unknown_mae(pred, alpha, trimap)[0] < 0.1


# --- the runner ----------------------------------------------------------------------------------------------------

def write_dataset(folder, cases: int = 2):
    """A tiny prepared dataset (8-bit PNGs + datalist.json) of blurred disks, trimap 0/128/255."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(cases):
        image, trimap, alpha = blurred_disk(24, 5.0 + i, 1.2)
        for sub, arr in (("images", image), ("alpha", alpha), ("trimaps", trimap)):
            (folder / sub).mkdir(exist_ok=True)
            Image.fromarray(np.rint(arr * 255).astype(np.uint8)).save(folder / sub / f"c{i}.png")
        items.append({"case": f"c{i}", "fold": i % 2, "image": f"images/c{i}.png", "alpha": f"alpha/c{i}.png",
                      "trimap": f"trimaps/c{i}.png"})
    (folder / "datalist.json").write_text(json.dumps({"name": "disks", "num_folds": 2, "training": items}))
    return folder


def test_run_method_new_methods_use_the_trimap():
    image, trimap, alpha = blurred_disk(24, 6.0, 1.2)
    img8, tri8 = np.rint(image * 255).astype(np.uint8), np.rint(trimap * 255).astype(np.uint8)
    for method in ("ifm", "bayes", "cf"):
        pred = classic_matting.run_method(method, img8, tri8)
        assert unknown_mae(pred, alpha, trimap)[0] < 0.05, method
    with pytest.raises(ValueError, match="unknown method"):
        classic_matting.run_method("fba", img8, tri8)


def test_evaluate_classic_skips_unchanged_and_reruns_on_force_or_missing_mattes(tmp_path, monkeypatch, capsys):
    data = write_dataset(tmp_path / "data")
    out, mattes = tmp_path / "res.json", tmp_path / "mattes"
    calls = []
    real = classic_matting.run_method
    monkeypatch.setattr(classic_matting, "run_method", lambda m, i, t: calls.append(m) or real(m, i, t))

    res = classic_matting.evaluate_classic(data, ["ifm", "cf"], out=out, mattes_dir=mattes)
    assert calls == ["ifm", "ifm", "cf", "cf"]
    stored = json.loads(out.read_text())
    assert stored == json.loads(json.dumps(res))
    entry = stored["methods"]["ifm"]
    assert entry["settings"]["parameters"]["k_cm"] == 20 and entry["seconds"] > 0
    assert len(entry["cases"]) == 2 and 0 <= entry["mean"]["sad_unknown"] < 0.05
    assert sorted(p.name for p in (mattes / "ifm").iterdir()) == ["c0.png", "c1.png"]

    calls.clear()
    classic_matting.evaluate_classic(data, ["ifm", "cf"], out=out, mattes_dir=mattes)
    assert calls == [] and "unchanged settings" in capsys.readouterr().out
    (mattes / "cf" / "c1.png").unlink()
    classic_matting.evaluate_classic(data, ["ifm", "cf"], out=out, mattes_dir=mattes)
    assert calls == ["cf", "cf"]
    calls.clear()
    classic_matting.evaluate_classic(data, ["cf"], out=out, force=True)
    assert calls == ["cf", "cf"]
    assert set(json.loads(out.read_text())["methods"]) == {"ifm", "cf"}  # earlier results are kept

    calls.clear()  # other settings (here: parameters) -> run again
    spec = classic_matting.METHODS["ifm"]
    monkeypatch.setitem(classic_matting.METHODS, "ifm", classic_matting.Method(
        spec.label, spec.implementation, spec.image_rule, {**spec.parameters, "k_u": 4}, spec.code_files))
    classic_matting.evaluate_classic(data, ["ifm"], out=out)
    assert calls == ["ifm", "ifm"]


# --- the closed-form study -----------------------------------------------------------------------------------------

def test_closed_form_study_base_is_pymatting_and_the_0_255_trimap_gives_trimap_nonzero():
    import pymatting

    image, trimap, _ = blurred_disk(24, 6.0, 1.2)
    img8, tri8 = np.rint(image * 255).astype(np.uint8), np.rint(trimap * 255).astype(np.uint8)
    ref = pymatting.estimate_alpha_cf(np.repeat((img8 / 255.0)[..., None], 3, -1),
                                      classic_matting.trimap_for_pymatting(tri8))
    assert np.abs(variant_alpha(img8, tri8, {}) - ref).max() < 1e-3  # direct solve vs pymatting's CG tolerance
    wrong = variant_alpha(img8, tri8, {"trimap": "0..255 as 0..1"})
    assert np.array_equal(wrong, (tri8 > 0).astype(np.float64))
    soft = variant_alpha(img8, tri8, {"trimap": "0..255 as 0..1", "lam": 100.0})
    assert np.all(soft[tri8 > 0] == 1.0)  # the raw values 128 / 255 clip to 1
    near = ndimage.binary_dilation(tri8 > 0, iterations=2)  # only a thin band leaks out of the non-zero pixels
    assert np.all(soft[~near] < 0.05) and np.any(soft[~(tri8 > 0)] > 0)
