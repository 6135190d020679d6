"""Figures: the per-fold prediction grid and the learned sampling positions of the implicit function.

- :func:`save_fold_figure`: rows of cases, columns image | true alpha | predicted alpha |
  uncertainty | absolute error, with fixed colour scales (alpha 0..1 grey, uncertainty 0..1
  ``magma``, error 0..1 ``inferno``) and one colour bar per column, so figures of different folds
  and runs can be compared by eye.
- :func:`save_offset_figure`: the positions where the region-aware implicit function sampled its
  k x k latent codes for chosen query pixels (red points) over the image, as in the middle of the
  paper's Table 2, with a zoomed panel per query pixel.
- :func:`learned_sampling_positions`: those positions for a ``MedicalMattingNet`` and an image
  (a forward hook on one implicit upsampler, then its ``sampling_positions``).

Figures are drawn on a bare ``matplotlib.figure.Figure`` (rendered by the Agg canvas; pyplot and
its global state are not used, so this is safe inside handlers and without a display) and written
atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.figure import Figure

from scripts.atomic import atomic_write

__all__ = ["save_fold_figure", "save_offset_figure", "learned_sampling_positions"]

COLUMNS = ("image", "true alpha", "predicted alpha", "uncertainty", "absolute error")
_CMAPS = {"alpha": "gray", "uncertainty": "magma", "error": "inferno"}
_TOL = 1e-4


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if value is None:
        raise ValueError(f"{name} is missing")
    return np.asarray(value)


def _as_map(value: Any, name: str) -> np.ndarray:
    """A (H, W) float map in [0, 1] from (H, W), (1, H, W), (1, 1, H, W) arrays or tensors."""
    a = _to_numpy(value, name)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{name} must be a (H, W) map, got shape {tuple(a.shape)}")
    return _check_range(a, name)


def _as_image(value: Any, name: str) -> np.ndarray:
    """A (H, W) grey or (H, W, 3) RGB image in [0, 1]; accepts channel-first (1|3, H, W) and uint8 0..255."""
    a = _to_numpy(value, name)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)  # channel first -> channel last
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)):
        raise ValueError(f"{name} must be a (H, W) or (H, W, 3) image, got shape {tuple(a.shape)}")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    return _check_range(a, name)


def _check_range(a: np.ndarray, name: str) -> np.ndarray:
    a = a.astype(np.float32, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if a.size and (a.min() < -_TOL or a.max() > 1 + _TOL):
        raise ValueError(f"{name} must lie in [0, 1], got values in [{a.min():.4g}, {a.max():.4g}]")
    return np.clip(a, 0.0, 1.0)


def _metrics_text(metrics: Any) -> str:
    if metrics is None:
        return ""
    if isinstance(metrics, Mapping):
        parts = []
        for key, value in metrics.items():
            parts.append(f"{key} {value:.4g}" if isinstance(value, (int, float, np.floating)) else f"{key} {value}")
        # two metrics per line keep the row label narrow
        return "\n".join("  ".join(parts[i : i + 2]) for i in range(0, len(parts), 2))
    return str(metrics)


def _save_atomic(fig: Figure, path: Union[str, os.PathLike], dpi: int) -> Path:
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))


def save_fold_figure(
    rows: Sequence[Mapping[str, Any]],
    path: Union[str, os.PathLike],
    title: Optional[str] = None,
    max_rows: int = 8,
    dpi: int = 100,
) -> Path:
    """Draw a grid of cases (rows) x image | true alpha | predicted alpha | uncertainty | absolute error.

    Args:
        rows: one dict per case with ``image`` ((H, W) grey or (H, W, 3) RGB), ``alpha_true``,
            ``alpha_pred``, ``uncertainty`` ((H, W) maps), all in [0, 1] (numpy arrays or tensors;
            (1, H, W) and a uint8 image are accepted), and optionally ``case`` (the row label) and
            ``metrics`` (a string or a ``{name: value}`` dict printed under the case name).
            ``alpha_true`` and ``alpha_pred`` must have the same shape (the error is their difference).
        path: output file (``.png`` by default; the suffix picks the format).
        title: figure title.
        max_rows: draw at most this many rows (the first ones); the title says when rows were left out.
        dpi: resolution of the written file.

    Returns:
        the written path.

    Raises:
        ValueError: no rows, a missing map, wrong shapes, values outside [0, 1] or not finite.

    Example::

        save_fold_figure([{"case": "case01", "image": img, "alpha_true": a, "alpha_pred": p,
                           "uncertainty": u, "metrics": {"SAD": 1.2, "MSE": 0.004}}],
                         "eval/fold0_predictions.png", title="fold 0")
    """
    if not rows:
        raise ValueError("save_fold_figure needs at least one row")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    shown = list(rows)[:max_rows]
    prepared = []
    for i, row in enumerate(shown):
        label = str(row.get("case", f"row {i}"))
        image = _as_image(row.get("image"), f"{label}: image")
        alpha_true = _as_map(row.get("alpha_true"), f"{label}: alpha_true")
        alpha_pred = _as_map(row.get("alpha_pred"), f"{label}: alpha_pred")
        uncertainty = _as_map(row.get("uncertainty"), f"{label}: uncertainty")
        if alpha_true.shape != alpha_pred.shape:
            raise ValueError(
                f"{label}: alpha_true {alpha_true.shape} and alpha_pred {alpha_pred.shape} must have the same shape"
            )
        error = np.abs(alpha_pred - alpha_true)
        text = _metrics_text(row.get("metrics"))
        prepared.append((label, text, [image, alpha_true, alpha_pred, uncertainty, error]))

    n = len(prepared)
    fig = Figure(figsize=(2.3 * len(COLUMNS) + 0.6, 2.3 * n + 1.2), layout="constrained")
    axes = np.asarray(fig.subplots(n, len(COLUMNS), squeeze=False))
    styles = [
        None,  # image: grey for one channel, RGB as is
        dict(cmap=_CMAPS["alpha"], vmin=0.0, vmax=1.0),
        dict(cmap=_CMAPS["alpha"], vmin=0.0, vmax=1.0),
        dict(cmap=_CMAPS["uncertainty"], vmin=0.0, vmax=1.0),
        dict(cmap=_CMAPS["error"], vmin=0.0, vmax=1.0),
    ]
    handles = [None] * len(COLUMNS)
    for r, (label, text, maps) in enumerate(prepared):
        for c, (data, style) in enumerate(zip(maps, styles)):
            ax = axes[r, c]
            if style is None:
                style = dict(cmap="gray", vmin=0.0, vmax=1.0) if data.ndim == 2 else {}
            handles[c] = ax.imshow(data, interpolation="nearest", **style)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize=10)
        axes[r, 0].set_ylabel(label + ("\n" + text if text else ""), fontsize=9)
    for c in range(1, len(COLUMNS)):
        bar = fig.colorbar(handles[c], ax=axes[:, c], location="bottom", shrink=0.8, aspect=18, pad=0.01)
        bar.ax.tick_params(labelsize=8)
    if title or len(rows) > n:
        suffix = f" (first {n} of {len(rows)} cases)" if len(rows) > n else ""
        fig.suptitle(f"{title or ''}{suffix}".strip())
    return _save_atomic(fig, path, dpi)


def save_offset_figure(
    image: Any,
    query_points: Any,
    sampled_positions: Any,
    path: Union[str, os.PathLike],
    grid_size: Optional[Sequence[int]] = None,
    title: Optional[str] = None,
    zoom_radius: float = 4.0,
    max_zoom_panels: int = 6,
    dpi: int = 120,
) -> Path:
    """Draw the learned sampling positions of the region-aware implicit function over the image.

    Args:
        image: (H, W) grey or (H, W, 3) RGB image in [0, 1] (array or tensor).
        query_points: (Q, 2) query pixels as (row, col) in the grid of the decoded map.
        sampled_positions: (Q, k*k, 2) (or (1, Q, k*k, 2)) positions (row, col) in the same grid
            where the latent codes were sampled, e.g. from
            ``RegionAwareImplicitUpsampler.sampling_positions`` or :func:`learned_sampling_positions`.
        path: output file (``.png`` by default).
        grid_size: (H', W') of the grid the points are given in; default the image size. The image
            is stretched over that grid (pixel centres at integer coordinates).
        title: figure title.
        zoom_radius: half-width, in grid pixels, of the zoomed panel drawn around each query.
        max_zoom_panels: zoomed panels for at most this many queries (all are drawn in the overview).
        dpi: resolution of the written file.

    Returns:
        the written path.

    Example::

        q = torch.tensor([[40, 60], [64, 64]])
        pos, grid = learned_sampling_positions(net, image, q)        # (Q, 4, 2), (H', W')
        save_offset_figure(image[0, 0], q, pos, "offsets.png", grid_size=grid)
    """
    img = _as_image(image, "image")
    q = _to_numpy(query_points, "query_points").astype(np.float64)
    pos = _to_numpy(sampled_positions, "sampled_positions").astype(np.float64)
    if pos.ndim == 4 and pos.shape[0] == 1:
        pos = pos[0]
    if q.ndim != 2 or q.shape[1] != 2:
        raise ValueError(f"query_points must be (Q, 2) as (row, col), got shape {tuple(q.shape)}")
    if pos.ndim != 3 or pos.shape[0] != q.shape[0] or pos.shape[2] != 2:
        raise ValueError(f"sampled_positions must be (Q={q.shape[0]}, k*k, 2), got shape {tuple(pos.shape)}")
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(pos))):
        raise ValueError("query_points and sampled_positions must be finite")
    gh, gw = (int(s) for s in (grid_size if grid_size is not None else img.shape[:2]))
    extent = (-0.5, gw - 0.5, gh - 0.5, -0.5)  # image stretched over the grid, pixel centres at integers
    style = dict(cmap="gray", vmin=0.0, vmax=1.0) if img.ndim == 2 else {}

    nz = min(len(q), max(0, int(max_zoom_panels)))
    fig = Figure(figsize=(4.2 + 2.4 * ((nz + 1) // 2), 4.6), layout="constrained")
    ncols = (nz + 1) // 2
    spec = fig.add_gridspec(2, 2 + ncols)
    overview = fig.add_subplot(spec[:, :2])
    zooms = [fig.add_subplot(spec[i // ncols, 2 + i % ncols]) for i in range(nz)]  # reading order

    def draw(ax, linewidth: float, size: float) -> None:
        ax.imshow(img, extent=extent, interpolation="nearest", **style)
        for (qr, qc), p in zip(q, pos):
            for pr, pc in p:
                ax.plot([qc, pc], [qr, pr], color="yellow", linewidth=linewidth, alpha=0.7)
        ax.scatter(pos[..., 1].ravel(), pos[..., 0].ravel(), s=size, c="red", edgecolors="white",
                   linewidths=0.3, zorder=3, label="sampled codes")
        ax.scatter(q[:, 1], q[:, 0], s=size * 1.6, marker="+", c="cyan", linewidths=1.2, zorder=4, label="query")

    draw(overview, 0.5, 10)
    overview.set_xlim(-0.5, gw - 0.5)
    overview.set_ylim(gh - 0.5, -0.5)
    overview.set_xticks([])
    overview.set_yticks([])
    overview.legend(loc="lower right", fontsize=7, framealpha=0.7)
    overview.set_title(f"grid {gh} x {gw}, {pos.shape[1]} codes per query", fontsize=9)
    for i, ax in enumerate(zooms):
        draw(ax, 1.0, 28)
        qr, qc = q[i]
        ax.set_xlim(qc - zoom_radius, qc + zoom_radius)
        ax.set_ylim(qr + zoom_radius, qr - zoom_radius)
        ax.set_title(f"query ({int(qr)}, {int(qc)})", fontsize=8)
        ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title)
    return _save_atomic(fig, path, dpi)


def learned_sampling_positions(
    network: torch.nn.Module,
    image: torch.Tensor,
    query_pixels: Any,
    output_size: Optional[Sequence[int]] = None,
    upsampler: str = "up2",
) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Where one implicit upsampler of a ``MedicalMattingNet`` sampled its codes for chosen pixels.

    Runs ``network.predict(image, output_size)`` once with a forward hook on the upsampler
    ``network.matting_unet.implicit_upsamplers()[upsampler]`` to capture its input features and
    target grid, then calls its ``sampling_positions``.

    Args:
        network: a ``MedicalMattingNet`` (region-aware or local-ensemble upsampling).
        image: (1, C, H, W) image in [0, 1].
        query_pixels: (Q, 2) (row, col) pixels of that upsampler's target grid.
        output_size: output size of the prediction (default the image size).
        upsampler: ``"up2"`` (the last implicit decoding, to the output grid for ``scales >= 2``),
            ``"up3"`` (F3 to F2's grid) or ``"up1"`` (``scales = 1``).

    Returns:
        positions (Q, k*k, 2) as (row, col) in the target grid, and that grid's (H', W').

    Example::

        pos, grid = learned_sampling_positions(net.eval(), image, torch.tensor([[64, 64]]))
    """
    ups = network.matting_unet.implicit_upsamplers()
    if upsampler not in ups:
        raise ValueError(f"no implicit upsampler {upsampler!r} in this network (it has: {sorted(ups)})")
    module = ups[upsampler]
    captured: Dict[str, Any] = {}

    def hook(_module, args):
        captured["feat"], captured["size"] = args[0].detach(), tuple(int(s) for s in args[1])

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            network.predict(image[:1], output_size=output_size)
    finally:
        handle.remove()
    qp = torch.as_tensor(np.asarray(_to_numpy(query_pixels, "query_pixels")), dtype=torch.long)
    positions = module.sampling_positions(captured["feat"], captured["size"], qp)
    return positions[0].cpu(), captured["size"]
