"""Figures of the docs: the learned sampling positions of the implicit function.

The per-fold prediction grid that evaluations write is :func:`scripts.handlers.fold_figure.save_fold_figure`
(a config runs it); this module draws with the same helpers.

- :func:`save_offset_figure`: the positions where the region-aware implicit function sampled its
  k x k latent codes for chosen query pixels (red points) over the image, as in the middle of the
  paper's Table 2, with a zoomed panel per query pixel.
- :func:`learned_sampling_positions`: those positions for a ``MedicalMattingNet`` and an image
  (a forward hook on one implicit upsampler, then its ``sampling_positions``).

Figures are drawn on a bare ``matplotlib.figure.Figure`` (no pyplot global state, no display needed)
and written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.figure import Figure

from scripts.handlers.fold_figure import as_image, save_figure, to_numpy

__all__ = ["save_offset_figure", "learned_sampling_positions"]


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
    img = as_image(image, "image")
    q = to_numpy(query_points, "query_points").astype(np.float64)
    pos = to_numpy(sampled_positions, "sampled_positions").astype(np.float64)
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
    return save_figure(fig, path, dpi)


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
    qp = torch.as_tensor(np.asarray(to_numpy(query_pixels, "query_pixels")), dtype=torch.long)
    positions = module.sampling_positions(captured["feat"], captured["size"], qp)
    return positions[0].cpu(), captured["size"]
