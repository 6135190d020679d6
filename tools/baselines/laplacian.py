"""The matting Laplacian of closed-form matting and the trimap-constrained solve, for grey or colour images.

Hand-written from Levin, Lischinski and Weiss, "A closed-form solution to natural image matting"
(PAMI 2008), Eq. (12): for every (2r+1) x (2r+1) window ``w_k`` lying inside the image, with the
window's colour mean ``mu_k`` (C,) and covariance ``S_k`` (C, C) (divided by ``|w_k|``),

    L_ij = sum over k with i, j in w_k of
           delta_ij - (1 + (I_i - mu_k)^T (S_k + eps / |w_k| Id)^-1 (I_j - mu_k)) / |w_k|.

It works for any number of channels C, so a grey image is used as one channel (pymatting's
``cf_laplacian`` needs three). Replicating a grey image to three equal channels gives the grey
Laplacian with ``eps / 3`` (the covariance is ``s^2 11^T`` and ``1^T (s^2 11^T + e Id)^-1 1 =
3 / (3 s^2 + e)``); ``tests/test_baselines.py`` checks this and checks the colour case against
pymatting. Written here (rather than calling pymatting) so that the closed-form study
(:mod:`tools.studies.closed_form_study`) can vary the channels, and because information-flow
matting (:mod:`tools.baselines.information_flow`) needs it for grey images.

:func:`solve_alpha` solves ``L alpha = 0`` with the trimap either as hard constraints (known pixels
fixed, the unknown block solved exactly, as in pymatting's ``estimate_alpha_cf``) or as soft
constraints ``(L + lam D) alpha = lam D t`` (``D`` diagonal 1 on known pixels, as in the authors'
MATLAB code, ``lam = 100``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["as_channels", "check_trimap", "matting_laplacian", "solve_alpha"]


def as_channels(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) image in [0, 1] -> float64 (H, W, C); ``ValueError`` for anything else."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] < 1:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {np.shape(image)}")
    img = img.astype(np.float64)
    if not np.all(np.isfinite(img)):
        raise ValueError("image contains NaN or infinite values")
    return img


def check_trimap(trimap: np.ndarray, shape: tuple[int, int], need_both: bool = True) -> np.ndarray:
    """A float64 (H, W) trimap in [0, 1]: 0 background, 1 foreground, anything else unknown.

    Raises ``ValueError`` for a wrong shape, values outside [0, 1] (e.g. a 0..255 trimap), NaN, or,
    with ``need_both``, a trimap without any foreground or without any background pixel.
    """
    t = np.asarray(trimap, dtype=np.float64)
    if t.shape != tuple(shape):
        raise ValueError(f"trimap must have the image's shape {tuple(shape)}, got {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("trimap contains NaN or infinite values")
    if t.size and (t.min() < 0.0 or t.max() > 1.0):
        raise ValueError(f"trimap values must lie in [0, 1] (0 background, 1 foreground, else unknown), "
                         f"got [{t.min():g}, {t.max():g}]; divide a 0..255 trimap by 255")
    if need_both and (not np.any(t == 1.0) or not np.any(t == 0.0)):
        raise ValueError("trimap needs at least one foreground (1) and one background (0) pixel")
    return t


def checked_inputs(image: np.ndarray, trimap: np.ndarray, params: dict, defaults: dict
                   ) -> tuple[dict, np.ndarray, np.ndarray]:
    """The common input checks of the hand-written solvers: ``(parameters, (H, W, C) image, (H, W) trimap)``.

    ``params`` override ``defaults`` (an unknown name is a ``TypeError``); the image must lie in
    [0, 1] and the trimap pass :func:`check_trimap` (``ValueError`` otherwise).
    """
    unknown_keys = set(params) - set(defaults)
    if unknown_keys:
        raise TypeError(f"unknown parameter(s) {sorted(unknown_keys)}; expected some of {sorted(defaults)}")
    img = as_channels(image)
    t = check_trimap(trimap, img.shape[:2])
    if img.min() < -1e-6 or img.max() > 1 + 1e-6:
        raise ValueError(f"image values must lie in [0, 1], got [{img.min():g}, {img.max():g}]")
    return {**defaults, **params}, img, t


def matting_laplacian(image: np.ndarray, epsilon: float = 1e-7, radius: int = 1) -> sp.csr_matrix:
    """The (H*W, H*W) matting Laplacian (Levin et al. 2008, Eq. 12) of a grey or colour image.

    Args:
        image: (H, W) grey or (H, W, C) image, values in [0, 1] (any scale works; eps scales with it).
        epsilon: regulariser of the window covariance (``eps / |w|`` added to its diagonal).
        radius: window radius r (windows of (2r+1)^2 pixels fully inside the image).
    """
    img = as_channels(image)
    h, w, c = img.shape
    size = 2 * int(radius) + 1
    if radius < 1 or h < size or w < size:
        raise ValueError(f"radius must be >= 1 and the image at least {size} x {size}, got radius {radius}, {h} x {w}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    n = size * size
    index = np.arange(h * w, dtype=np.int64).reshape(h, w)
    win_idx = sliding_window_view(index, (size, size)).reshape(-1, n)  # (K, n)
    win = sliding_window_view(img, (size, size), axis=(0, 1)).reshape(-1, c, n).transpose(0, 2, 1)  # (K, n, c)
    mean = win.mean(axis=1, keepdims=True)
    d = win - mean
    cov = np.einsum("kna,knb->kab", d, d) / n
    inv = np.linalg.inv(cov + (epsilon / n) * np.eye(c))
    affinity = (1.0 + np.einsum("kia,kab,kjb->kij", d, inv, d)) / n  # (K, n, n)
    rows = np.repeat(win_idx, n, axis=1).ravel()
    cols = np.tile(win_idx, (1, n)).ravel()
    a = sp.coo_matrix((affinity.ravel(), (rows, cols)), shape=(h * w, h * w)).tocsr()  # duplicates summed
    degree = np.asarray(a.sum(axis=1)).ravel()  # = number of windows containing the pixel
    return (sp.diags(degree) - a).tocsr()


def solve_alpha(laplacian: sp.spmatrix, trimap: np.ndarray, lam: float | None = None) -> np.ndarray:
    """Minimise ``alpha^T L alpha`` under the trimap (unclipped result, shape of ``trimap``).

    Args:
        laplacian: (N, N) symmetric positive semi-definite matrix, N = trimap.size.
        trimap: (H, W) in [0, 1]; pixels exactly 0 / 1 are known, all others unknown.
        lam: None: hard constraints (known pixels fixed, ``L_UU x_U = -L_UK t_K``);
            a number: soft constraints ``(L + lam D) x = lam D t``.
    """
    t = check_trimap(trimap, np.shape(trimap), need_both=False).ravel()
    known = (t == 0.0) | (t == 1.0)
    lap = sp.csr_matrix(laplacian)
    if lap.shape != (t.size, t.size):
        raise ValueError(f"laplacian must be ({t.size}, {t.size}), got {lap.shape}")
    if lam is not None:
        if not lam > 0:
            raise ValueError(f"lam must be > 0, got {lam}")
        d = sp.diags(known.astype(np.float64))
        x = spla.spsolve((lap + lam * d).tocsc(), lam * (known * t))
        return np.asarray(x).reshape(np.shape(trimap))
    x = t.copy()
    unknown = ~known
    if unknown.any():
        l_uu = lap[unknown][:, unknown].tocsc()
        rhs = -(lap[unknown][:, known] @ t[known])
        x[unknown] = spla.spsolve(l_uu, rhs)
    return x.reshape(np.shape(trimap))
