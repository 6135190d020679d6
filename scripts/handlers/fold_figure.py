"""Draw the per-fold figure of an evaluation: rows of cases, image | true alpha | predicted alpha | uncertainty | error.

Collects the first ``max_rows`` cases of the evaluator's output and calls
:func:`scripts.visualize.save_fold_figure` on ``COMPLETED``, with each row labelled by its case name
and chosen per-case metrics (from ``engine.state.metric_details``, i.e. ``IgniteMetricHandler``s
with ``save_details=True``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["FoldFigureHandler"]


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
        from scripts.visualize import save_fold_figure

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
