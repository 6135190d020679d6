"""Information-flow matting (Aksoy, Aydin and Pollefeys, CVPR 2017), hand-written.

Hand-written from the paper "Designing effective inter-pixel information flow for natural image
matting", because no maintained Python library provides it (pymatting has closed-form, KNN,
learning-based, large-kernel and random-walk matting only; OpenCV's contrib module ``alphamat``
has a C++ version, which is not a dependency of this bundle). NumPy/SciPy primitives only: a
KD-tree (``scipy.spatial.cKDTree``) for the neighbour searches and a sparse direct solve.

One sparse linear system combines four kinds of "information flow" between pixels and the trimap
(all pixel features use colours in [0, 1] and coordinates ``x~ = col / W``, ``y~ = row / H``):

1. **Colour-mixture flow** (paper Sec. 3.1). For each unknown pixel p, its ``k_cm = 20`` nearest
   neighbours (itself excluded) among all pixels in the feature space ``[colour, x~, y~]``; weights
   by locally linear embedding on the colours only: ``min ||c_p - sum_q w_pq c_q||^2`` with
   ``sum_q w_pq = 1``, i.e. ``(G + delta Id) w = 1`` normalised, ``G`` the neighbours' Gram matrix of
   ``c_q - c_p`` and ``delta = lle_reg * trace(G)`` (``lle_reg = 1e-3``, the regulariser of Roweis and
   Saul for more neighbours than dimensions; the paper does not give one) plus 1e-12. Energy
   ``sum_p (alpha_p - sum_q w_pq alpha_q)^2`` = ``alpha^T (S - W)^T (S - W) alpha``.
2. **K-to-U flow** (Sec. 3.2). For each unknown pixel, ``k_ku = 7`` nearest foreground and 7 nearest
   background pixels in ``[colour, 10 x~, 10 y~]``; LLE weights over the 14 together (as above);
   ``w^F_p`` = sum of the weights of the foreground neighbours is the alpha the known regions
   suggest. Confidence ``eta_p = ||c^F_p - c^B_p||^2 / C`` with ``c^F_p = sum_F w c / w^F_p`` (and
   ``c^B_p`` alike; C channels, the paper's ``/ 3`` for RGB). Energy
   ``sum_p eta_p (alpha_p - w^F_p)^2``.
3. **Intra-U flow** (Sec. 3.3). For each unknown pixel, ``k_u = 5`` nearest other unknown pixels in
   ``[colour, x~ / 20, y~ / 20]``, weight ``max(1 - ||f_p - f_q||, 0)``, made symmetric
   (``W + W^T``); energy = the graph Laplacian of those weights.
4. **Local flow** (Sec. 3.4): the matting Laplacian of closed-form matting with 3 x 3 windows
   (:func:`tools.baselines.laplacian.matting_laplacian`, ``local_epsilon = 1e-7``, the closed-form
   paper's value; the IFM paper gives none).

Linear system (Sec. 3.5): ``(s_cm L_CM + s_uu L_UU + s_l L_L + lam T + s_ku H) alpha =
(lam T + s_ku H) t`` with ``T`` diagonal 1 on known pixels, ``H`` diagonal ``eta`` on unknown pixels,
``t`` the trimap value on known pixels and ``w^F`` on unknown ones; the paper's weights
``s_cm = 1``, ``s_ku = 0.05``, ``s_uu = 0.01``, ``s_l = 1``, ``lam = 100``. The result is clipped to [0, 1].

Simplifications (documented in ``docs/results/classic_baselines_brain_growth.md``):

- grey images are used as one channel (colour = grey value; the LLE weights are then fitted to
  one value, so they rely on the regulariser more than for RGB; ``eta`` is the squared grey
  difference);
- ``w^F_p`` is clipped to [0, 1] before it is used as a target (LLE weights can be negative);
- not implemented: the paper's optional pre-processing (trimap trimming from known-unknown edges
  and patch-based trimming) and its rule that drops the K-to-U flow for images whose foreground and
  background colours overlap strongly (``use_ku=False`` drops it by hand); the colour-mixture flow
  is computed for unknown pixels only, the local flow for all windows; the system is solved with
  a sparse direct solver (the paper uses preconditioned conjugate gradients).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.spatial import cKDTree

from tools.baselines.laplacian import checked_inputs, matting_laplacian

__all__ = ["DEFAULTS", "estimate_alpha_ifm", "lle_weights"]

#: the parameters of the paper (and this implementation's choices for those the paper leaves open)
DEFAULTS = {
    "k_cm": 20, "k_ku": 7, "k_u": 5,
    "s_cm": 1.0, "s_ku": 0.05, "s_uu": 0.01, "s_l": 1.0, "lam": 100.0,
    "local_epsilon": 1e-7, "local_radius": 1, "lle_reg": 1e-3, "use_ku": True,
}


def lle_weights(center: np.ndarray, neighbours: np.ndarray, reg: float = 1e-3) -> np.ndarray:
    """Locally-linear-embedding weights, batched: ``min ||c - sum_k w_k n_k||^2`` s.t. ``sum_k w_k = 1``.

    Args:
        center: (P, C) colours of the pixels.
        neighbours: (P, K, C) colours of their neighbours.
        reg: Gram-matrix regulariser relative to its trace (plus 1e-12 absolute).

    Returns:
        (P, K) weights, each row summing to 1.
    """
    z = neighbours - center[:, None, :]
    gram = np.einsum("pkc,pjc->pkj", z, z)
    k = gram.shape[1]
    delta = reg * np.trace(gram, axis1=1, axis2=2) + 1e-12
    gram = gram + delta[:, None, None] * np.eye(k)
    w = np.linalg.solve(gram, np.ones((gram.shape[0], k, 1)))[..., 0]
    return w / w.sum(axis=1, keepdims=True)


def _knn(data: np.ndarray, queries: np.ndarray, k: int, exclude_self: np.ndarray | None = None) -> np.ndarray:
    """Indices (P, k) into ``data`` of the k nearest neighbours of each query; with ``exclude_self``
    (the query's own index into ``data``) the query itself is left out."""
    extra = 1 if exclude_self is not None else 0
    k_eff = min(k + extra, len(data))
    _, idx = cKDTree(data).query(queries, k=k_eff)
    idx = idx.reshape(len(queries), k_eff)
    if exclude_self is None:
        return idx
    out = np.empty((len(queries), k_eff - 1), dtype=np.int64)
    for row in range(len(queries)):  # drop the query itself (or the farthest when it is not listed)
        keep = idx[row][idx[row] != exclude_self[row]]
        out[row] = keep[: k_eff - 1]
    return out


def estimate_alpha_ifm(image: np.ndarray, trimap: np.ndarray, **params) -> np.ndarray:
    """Alpha matte by information-flow matting (see the module docstring for the terms and parameters).

    Args:
        image: (H, W) grey or (H, W, C) colour image, values in [0, 1].
        trimap: (H, W) in [0, 1]: 0 background, 1 foreground, any other value unknown.
        **params: overrides of :data:`DEFAULTS`.

    Returns:
        (H, W) float64 alpha in [0, 1]; known pixels keep (up to the soft constraint) their trimap value.
    """
    p, img, t = checked_inputs(image, trimap, params, DEFAULTS)
    h, w, c = img.shape
    t = t.ravel()
    n = h * w
    fg, bg = t == 1.0, t == 0.0
    unknown = ~(fg | bg)
    if not unknown.any():
        return t.reshape(h, w).copy()
    colour = img.reshape(n, c)
    rows, cols = np.divmod(np.arange(n), w)
    xy = np.stack([cols / w, rows / h], axis=1)
    u_idx = np.flatnonzero(unknown)
    nu = len(u_idx)

    # 1. colour-mixture flow: rows of (S - W) for the unknown pixels
    k_cm = min(int(p["k_cm"]), n - 1)
    nb = _knn(np.hstack([colour, xy]), np.hstack([colour[u_idx], xy[u_idx]]), k_cm, exclude_self=u_idx)
    wcm = lle_weights(colour[u_idx], colour[nb], p["lle_reg"])
    m = sp.csr_matrix((np.concatenate([np.ones(nu), -wcm.ravel()]),
                       (np.concatenate([np.arange(nu), np.repeat(np.arange(nu), nb.shape[1])]),
                        np.concatenate([u_idx, nb.ravel()]))), shape=(nu, n))
    l_cm = (m.T @ m).tocsr()

    # 2. K-to-U flow: alpha suggested by the nearest known pixels, and its confidence
    target = t.copy()
    eta = np.zeros(n)
    if p["use_ku"]:
        f_idx, b_idx = np.flatnonzero(fg), np.flatnonzero(bg)
        feat = np.hstack([colour, 10.0 * xy])
        nf = f_idx[_knn(feat[f_idx], feat[u_idx], int(p["k_ku"]))]
        nbk = b_idx[_knn(feat[b_idx], feat[u_idx], int(p["k_ku"]))]
        both = np.concatenate([nf, nbk], axis=1)
        wku = lle_weights(colour[u_idx], colour[both], p["lle_reg"])
        wf, wb = wku[:, : nf.shape[1]], wku[:, nf.shape[1]:]
        sf, sb = wf.sum(axis=1), wb.sum(axis=1)
        ok = (np.abs(sf) > 1e-8) & (np.abs(sb) > 1e-8)
        cf = np.einsum("pk,pkc->pc", wf, colour[nf]) / np.where(ok, sf, 1.0)[:, None]
        cb = np.einsum("pk,pkc->pc", wb, colour[nbk]) / np.where(ok, sb, 1.0)[:, None]
        eta[u_idx] = np.where(ok, np.sum((cf - cb) ** 2, axis=1) / c, 0.0)
        target[u_idx] = np.clip(sf, 0.0, 1.0)
    else:
        target[u_idx] = 0.0

    # 3. intra-U flow: symmetric weights between similar unknown pixels
    k_u = min(int(p["k_u"]), nu - 1)
    if k_u >= 1:
        feat_u = np.hstack([colour[u_idx], xy[u_idx] / 20.0])
        nbu = _knn(feat_u, feat_u, k_u, exclude_self=np.arange(nu))
        wu = np.maximum(1.0 - np.linalg.norm(feat_u[:, None, :] - feat_u[nbu], axis=2), 0.0)
        wmat = sp.csr_matrix((wu.ravel(), (np.repeat(u_idx, k_u), u_idx[nbu].ravel())), shape=(n, n))
        wmat = wmat + wmat.T
        l_uu = sp.diags(np.asarray(wmat.sum(axis=1)).ravel()) - wmat
    else:
        l_uu = sp.csr_matrix((n, n))

    # 4. local flow: the matting Laplacian
    l_l = matting_laplacian(img, p["local_epsilon"], int(p["local_radius"]))

    known = (~unknown).astype(np.float64)
    diag = p["lam"] * known + p["s_ku"] * eta
    a = p["s_cm"] * l_cm + p["s_uu"] * l_uu + p["s_l"] * l_l + sp.diags(diag)
    alpha = spla.spsolve(a.tocsc(), diag * target)
    return np.clip(np.asarray(alpha), 0.0, 1.0).reshape(h, w)
