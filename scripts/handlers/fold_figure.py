"""The per-fold figure of an evaluation: rows of cases, image | true alpha | predicted alpha | uncertainty | error.

- :func:`save_fold_figure` draws the grid with fixed colour scales (alpha 0..1 grey, uncertainty
  0..1 ``magma``, error 0..1 ``inferno``) and one colour bar per column, so figures of different
  folds and runs can be compared by eye;
- :class:`FoldFigureHandler` collects the first ``max_rows`` cases of the evaluator's output and calls
  it on ``COMPLETED``, with each row labelled by its case name and chosen per-case metrics (from
  ``engine.state.metric_details``, i.e. ``IgniteMetricHandler``s with ``save_details=True``).

Figures are drawn on a bare ``matplotlib.figure.Figure`` (rendered by the Agg canvas; pyplot and its
global state are not used, so this is safe inside handlers and without a display) and written
atomically (:mod:`scripts.atomic`). ``tools.visualize`` draws the other figures of the docs with the
same helpers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from scripts.atomic import atomic_write

__all__ = ["FoldFigureHandler", "save_fold_figure", "save_figure", "as_image", "as_map", "to_numpy", "MAP_COLORMAPS"]

COLUMNS = ("image", "true alpha", "predicted alpha", "uncertainty", "absolute error")
#: matplotlib colour map of each kind of map in the figures
MAP_COLORMAPS = {"alpha": "gray", "uncertainty": "magma", "error": "inferno"}
_TOL = 1e-4


def to_numpy(value: Any, name: str) -> np.ndarray:
    """``value`` (array, tensor or nested list) as a numpy array; ``ValueError`` naming ``name`` when it is None."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if value is None:
        raise ValueError(f"{name} is missing")
    return np.asarray(value)


def as_map(value: Any, name: str) -> np.ndarray:
    """A (H, W) float map in [0, 1] from (H, W), (1, H, W), (1, 1, H, W) arrays or tensors."""
    a = to_numpy(value, name)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{name} must be a (H, W) map, got shape {tuple(a.shape)}")
    return _check_range(a, name)


def as_image(value: Any, name: str) -> np.ndarray:
    """A (H, W) grey or (H, W, 3) RGB image in [0, 1]; accepts channel-first (1|3, H, W) and uint8 0..255."""
    a = to_numpy(value, name)
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


def save_figure(fig: Any, path: str | os.PathLike, dpi: int) -> Path:
    """Write a matplotlib ``Figure`` atomically (:mod:`scripts.atomic`); the suffix picks the format."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))


def save_fold_figure(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    title: str | None = None,
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
        image = as_image(row.get("image"), f"{label}: image")
        alpha_true = as_map(row.get("alpha_true"), f"{label}: alpha_true")
        alpha_pred = as_map(row.get("alpha_pred"), f"{label}: alpha_pred")
        uncertainty = as_map(row.get("uncertainty"), f"{label}: uncertainty")
        if alpha_true.shape != alpha_pred.shape:
            raise ValueError(
                f"{label}: alpha_true {alpha_true.shape} and alpha_pred {alpha_pred.shape} must have the same shape"
            )
        error = np.abs(alpha_pred - alpha_true)
        text = _metrics_text(row.get("metrics"))
        prepared.append((label, text, [image, alpha_true, alpha_pred, uncertainty, error]))

    from matplotlib.figure import Figure  # imported when drawing: configs import this module

    n = len(prepared)
    fig = Figure(figsize=(2.3 * len(COLUMNS) + 0.6, 2.3 * n + 1.2), layout="constrained")
    axes = np.asarray(fig.subplots(n, len(COLUMNS), squeeze=False))
    styles = [
        None,  # image: grey for one channel, RGB as is
        dict(cmap=MAP_COLORMAPS["alpha"], vmin=0.0, vmax=1.0),
        dict(cmap=MAP_COLORMAPS["alpha"], vmin=0.0, vmax=1.0),
        dict(cmap=MAP_COLORMAPS["uncertainty"], vmin=0.0, vmax=1.0),
        dict(cmap=MAP_COLORMAPS["error"], vmin=0.0, vmax=1.0),
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
    return save_figure(fig, path, dpi)




class FoldFigureHandler:
    """Ignite handler saving the per-fold prediction figure of an evaluator.

    The evaluator output must be a batched dict (``MattingEvaluator``) with ``image``, ``alpha``
    (true), ``pred`` (predicted alpha), ``uncertainty`` and ``case``.

    Args:
        path: the figure file (``.png``).
        max_rows: number of cases drawn (the first ones in evaluation order).
        title: figure title.
        metric_labels: ``{metric name in metric_details: label}`` printed under each case name,
            e.g. ``{"sad_unknown": "SAD", "mse_unknown": "MSE"}``.
        dpi: resolution.

    Example::

        FoldFigureHandler("eval/fold0/figure_fold0.png", title="fold 0").attach(evaluator)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        max_rows: int = 8,
        title: str | None = None,
        metric_labels: Mapping[str, str] | None = None,
        dpi: int = 100,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}.")
        self.path = Path(path)
        self.max_rows = int(max_rows)
        self.title = title
        self.metric_labels = dict(metric_labels or {})
        self.dpi = dpi
        self.logger = logging.getLogger(__name__)
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_STARTED`` (reset), ``ITERATION_COMPLETED`` (collect) and ``COMPLETED`` (draw)."""
        self.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.draw)

    def reset(self, engine: Engine) -> None:
        self.rows = []
        self._seen = 0

    def collect(self, engine: Engine) -> None:
        out = engine.state.output
        if not isinstance(out, Mapping):
            raise TypeError("FoldFigureHandler needs the batched dict output of MattingEvaluator (decollate=False).")
        batch = out["pred"].shape[0]
        cases = list(out.get("case") or [f"case_{self._seen + i}" for i in range(batch)])
        for i in range(batch):
            index = self._seen + i
            if len(self.rows) >= self.max_rows:
                break
            image = out["image"][i].detach().float().cpu()
            image = image[0] if image.shape[0] == 1 else image[:3].permute(1, 2, 0)
            self.rows.append(
                {
                    "index": index,
                    "case": str(cases[i]),
                    "image": image.clamp(0.0, 1.0).numpy(),
                    "alpha_true": out["alpha"][i, 0].detach().float().cpu().numpy(),
                    "alpha_pred": out["pred"][i, 0].detach().float().cpu().clamp(0.0, 1.0).numpy(),
                    "uncertainty": out["uncertainty"][i, 0].detach().float().cpu().clamp(0.0, 1.0).numpy(),
                }
            )
        self._seen += batch

    def draw(self, engine: Engine) -> Path | None:
        """Save the figure (nothing to draw: no file, a warning)."""
        if not self.rows:
            self.logger.warning("FoldFigureHandler: no cases were evaluated, no figure written.")
            return None
        details = getattr(engine.state, "metric_details", None) or {}
        rows = []
        for row in self.rows:
            metrics = {}
            for name, label in self.metric_labels.items():
                values = details.get(name)
                if isinstance(values, torch.Tensor) and values.reshape(-1).numel() > row["index"]:
                    metrics[label] = float(values.reshape(-1)[row["index"]])
            rows.append({k: v for k, v in row.items() if k != "index"} | ({"metrics": metrics} if metrics else {}))
        title = self.title or ""
        if self._seen > len(rows):
            title = f"{title} (first {len(rows)} of {self._seen} cases)".strip()
        path = save_fold_figure(rows, self.path, title=title or None, max_rows=self.max_rows, dpi=self.dpi)
        self.logger.info(f"saved the fold figure to {path}")
        return path
