"""Bayesian matting (Chuang, Curless, Salesin and Szeliski, CVPR 2001), hand-written.

Hand-written from the paper "A Bayesian approach to digital matting", because no maintained
Python library provides it (pymatting has closed-form, KNN, learning-based, large-kernel and
random-walk matting only). NumPy/SciPy only.

Per unknown pixel with colour C, the MAP estimate of foreground F, background B and alpha:

- **Order** (onion peel): unknown pixels are visited in order of their distance to the known
  region (``scipy.ndimage.distance_transform_edt``; ties in raster order), so each pixel sees the
  estimates of the pixels between it and the known regions.
- **Samples**: in a ``window`` x ``window`` neighbourhood (25), the foreground samples are the known
  foreground pixels and the already estimated unknown pixels (their F), weighted
  ``alpha_i^2 g_i``; background samples likewise with weights ``(1 - alpha_i)^2 g_i``; ``g_i`` is a
  spatial Gaussian fall-off with ``sigma = 8`` pixels (the paper's value). A pixel with fewer than
  ``min_samples`` (10) foreground or background samples is put back and visited in a later pass;
  when a whole pass makes no progress the window grows by 50 % (up to the whole image).
- **Colour clusters**: each sample set is split into oriented Gaussians with the binary-split
  clustering of Orchard and Bouman (1991), as in the paper: the cluster whose weighted covariance
  has the largest eigenvalue is split by the plane through its weighted mean perpendicular to that
  eigenvector, until that eigenvalue is below ``cluster_var`` (1e-3, i.e. a standard deviation of
  about 8 grey levels of 255) or there are ``max_clusters`` (3) clusters. Weighted mean and
  covariance per cluster; ``cov_reg`` (1e-5) is added to the covariance diagonal.
- **MAP solve** for every pair of foreground and background clusters, alternating (paper Eq. 9
  and 10) from alpha = the mean alpha of the window's known and estimated pixels:
  the 2C x 2C linear system in (F, B) for fixed alpha, with the camera noise ``sigma_c`` (0.01 in
  intensity units of [0, 1]), then ``alpha = (C - B).(F - B) / ||F - B||^2`` clipped to [0, 1]
  (F and B clipped to [0, 1] too), until alpha changes by less than ``tol`` (1e-5) or ``max_iter``
  (50) rounds. The pair with the largest ``log L(C|F,B,alpha) + log L(F) + log L(B)`` =
  ``-||C - alpha F - (1 - alpha) B||^2 / sigma_c^2 - (F - Fm)^T SF^-1 (F - Fm) / 2 - (B - Bm)^T SB^-1 (B - Bm) / 2``
  is kept.

The paper does not give numerical values for the window, the noise, the minimum number of samples
or the clustering threshold; the values above are our choices (documented with the results).
Grey images are used as one channel (the clusters are 1-D Gaussians).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tools.baselines.laplacian import checked_inputs

__all__ = ["DEFAULTS", "estimate_alpha_bayesian", "orchard_bouman", "solve_pairs"]

DEFAULTS = {
    "window": 25, "sigma": 8.0, "sigma_c": 0.01, "min_samples": 10, "max_clusters": 3,
    "cluster_var": 1e-3, "cov_reg": 1e-5, "max_iter": 50, "tol": 1e-5,
}


def orchard_bouman(samples: np.ndarray, weights: np.ndarray, max_clusters: int = 3, min_var: float = 1e-3,
                   cov_reg: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Binary-split colour clustering (Orchard and Bouman 1991) of weighted samples.

    Args:
        samples: (N, C) colours; weights: (N,) non-negative weights (not all zero).

    Returns:
        means (K, C) and covariances (K, C, C) (``cov_reg`` added on the diagonal), K <= max_clusters.
    """
    c = samples.shape[1]
    clusters = [np.arange(len(samples))]

    def stats(idx):
        wt = weights[idx]
        total = wt.sum()
        if total <= 0:
            wt, total = np.ones(len(idx)), float(len(idx))
        mean = wt @ samples[idx] / total
        d = samples[idx] - mean
        cov = (wt[:, None] * d).T @ d / total
        return mean, cov

    summaries = [stats(clusters[0])]
    while len(clusters) < max_clusters:
        eig = [np.linalg.eigh(cov) for _, cov in summaries]
        top = [vals[-1] for vals, _ in eig]
        k = int(np.argmax(top))
        if top[k] < min_var:
            break
        direction = eig[k][1][:, -1]
        idx = clusters[k]
        side = (samples[idx] - summaries[k][0]) @ direction <= 0
        if side.all() or not side.any():
            break
        clusters[k: k + 1] = [idx[side], idx[~side]]
        summaries[k: k + 1] = [stats(idx[side]), stats(idx[~side])]
    means = np.array([m for m, _ in summaries])
    covs = np.array([cov + cov_reg * np.eye(c) for _, cov in summaries])
    return means, covs


def solve_pairs(colour: np.ndarray, f_means: np.ndarray, f_covs: np.ndarray, b_means: np.ndarray,
                b_covs: np.ndarray, alpha0: float, sigma_c: float = 0.01, max_iter: int = 50,
                tol: float = 1e-5) -> tuple[np.ndarray, np.ndarray, float]:
    """MAP (F, B, alpha) of one pixel over every pair of foreground and background clusters.

    Returns the best pair's F (C,), B (C,) and alpha.
    """
    c = colour.shape[0]
    fi, bi = np.meshgrid(np.arange(len(f_means)), np.arange(len(b_means)), indexing="ij")
    fi, bi = fi.ravel(), bi.ravel()
    pairs = len(fi)
    f_inv = np.linalg.inv(f_covs)[fi]  # (P, C, C)
    b_inv = np.linalg.inv(b_covs)[bi]
    fm, bm = f_means[fi], b_means[bi]
    eye = np.eye(c)
    inv_var = 1.0 / sigma_c**2
    rhs_f0 = np.einsum("pab,pb->pa", f_inv, fm)
    rhs_b0 = np.einsum("pab,pb->pa", b_inv, bm)
    alpha = np.full(pairs, float(alpha0))
    f, b = fm.copy(), bm.copy()
    if c == 1:  # grey: the 2 x 2 systems by Cramer's rule (same equations, far less overhead)
        fi_, bi_, rf, rb, col = f_inv[:, 0, 0], b_inv[:, 0, 0], rhs_f0[:, 0], rhs_b0[:, 0], float(colour[0])
        for _ in range(max_iter):
            a11 = fi_ + alpha * alpha * inv_var
            a12 = alpha * (1 - alpha) * inv_var
            a22 = bi_ + (1 - alpha) * (1 - alpha) * inv_var
            r1 = rf + col * alpha * inv_var
            r2 = rb + col * (1 - alpha) * inv_var
            det = a11 * a22 - a12 * a12
            f1 = np.clip((r1 * a22 - a12 * r2) / det, 0.0, 1.0)
            b1 = np.clip((a11 * r2 - a12 * r1) / det, 0.0, 1.0)
            diff = f1 - b1
            norm = diff * diff
            new = np.where(norm > 1e-12, (col - b1) * diff / np.maximum(norm, 1e-12), alpha)
            new = np.clip(new, 0.0, 1.0)
            done = np.max(np.abs(new - alpha)) < tol
            alpha = new
            if done:
                break
        f, b = f1[:, None], b1[:, None]
        max_iter = 0  # skip the general loop
    for _ in range(max_iter):
        a = alpha[:, None, None]
        system = np.empty((pairs, 2 * c, 2 * c))
        system[:, :c, :c] = f_inv + eye * a**2 * inv_var
        system[:, :c, c:] = eye * (a * (1 - a)) * inv_var
        system[:, c:, :c] = system[:, :c, c:]
        system[:, c:, c:] = b_inv + eye * (1 - a) ** 2 * inv_var
        rhs = np.concatenate([rhs_f0 + colour * alpha[:, None] * inv_var,
                              rhs_b0 + colour * (1 - alpha[:, None]) * inv_var], axis=1)
        fb = np.clip(np.linalg.solve(system, rhs[..., None])[..., 0], 0.0, 1.0)
        f, b = fb[:, :c], fb[:, c:]
        diff = f - b
        norm = np.sum(diff**2, axis=1)
        new = np.where(norm > 1e-12, np.sum((colour - b) * diff, axis=1) / np.maximum(norm, 1e-12), alpha)
        new = np.clip(new, 0.0, 1.0)
        done = np.max(np.abs(new - alpha)) < tol
        alpha = new
        if done:
            break
    resid = colour - alpha[:, None] * f - (1 - alpha[:, None]) * b
    df, db = f - fm, b - bm
    score = (-np.sum(resid**2, axis=1) * inv_var - 0.5 * np.einsum("pa,pab,pb->p", df, f_inv, df)
             - 0.5 * np.einsum("pa,pab,pb->p", db, b_inv, db))
    k = int(np.argmax(score))
    return f[k], b[k], float(alpha[k])


def estimate_alpha_bayesian(image: np.ndarray, trimap: np.ndarray, **params) -> np.ndarray:
    """Alpha matte by Bayesian matting (see the module docstring for the steps and parameters).

    Args:
        image: (H, W) grey or (H, W, C) colour image, values in [0, 1].
        trimap: (H, W) in [0, 1]: 0 background, 1 foreground, any other value unknown.
        **params: overrides of :data:`DEFAULTS`.

    Returns:
        (H, W) float64 alpha in [0, 1]; known pixels keep their trimap value exactly.
    """
    p, img, t = checked_inputs(image, trimap, params, DEFAULTS)
    h, w, c = img.shape
    fg, bg = t == 1.0, t == 0.0
    unknown = ~(fg | bg)
    alpha = np.where(fg, 1.0, 0.0)
    alpha[unknown] = np.nan
    f_img = np.where(fg[..., None], img, np.nan)
    b_img = np.where(bg[..., None], img, np.nan)
    dist = ndimage.distance_transform_edt(unknown)
    todo = np.flatnonzero(unknown.ravel())
    todo = todo[np.lexsort((todo, dist.ravel()[todo]))]
    need_f = min(int(p["min_samples"]), int(fg.sum()))
    need_b = min(int(p["min_samples"]), int(bg.sum()))
    window = int(p["window"])
    while len(todo):
        half = window // 2
        yy, xx = np.mgrid[-half: half + 1, -half: half + 1]
        falloff = np.exp(-(yy**2 + xx**2) / (2.0 * p["sigma"] ** 2))
        deferred = []
        for flat in todo:
            y, x = divmod(int(flat), w)
            y0, y1, x0, x1 = max(y - half, 0), min(y + half + 1, h), max(x - half, 0), min(x + half + 1, w)
            g = falloff[y0 - y + half: y1 - y + half, x0 - x + half: x1 - x + half]
            a_win = alpha[y0:y1, x0:x1]
            f_win, b_win = f_img[y0:y1, x0:x1], b_img[y0:y1, x0:x1]
            f_ok = ~np.isnan(f_win[..., 0])
            b_ok = ~np.isnan(b_win[..., 0])
            f_w = a_win[f_ok] ** 2 * g[f_ok]
            b_w = (1.0 - a_win[b_ok]) ** 2 * g[b_ok]
            if np.count_nonzero(f_w > 0) < need_f or np.count_nonzero(b_w > 0) < need_b:
                deferred.append(flat)
                continue
            fmeans, fcovs = orchard_bouman(f_win[f_ok], f_w, p["max_clusters"], p["cluster_var"], p["cov_reg"])
            bmeans, bcovs = orchard_bouman(b_win[b_ok], b_w, p["max_clusters"], p["cluster_var"], p["cov_reg"])
            alpha0 = float(np.nanmean(a_win))
            fv, bv, av = solve_pairs(img[y, x], fmeans, fcovs, bmeans, bcovs, alpha0, p["sigma_c"],
                                     int(p["max_iter"]), p["tol"])
            f_img[y, x], b_img[y, x], alpha[y, x] = fv, bv, av
        if len(deferred) == len(todo):
            if window >= 2 * max(h, w) + 1:
                raise RuntimeError("Bayesian matting: not enough foreground/background samples anywhere")
            window = int(window * 1.5) | 1
        todo = np.asarray(deferred, dtype=np.int64)
    return alpha
