"""Write per-case and per-fold metric tables (JSON and CSV) at the end of an evaluation.

The metric values come from MONAI ``IgniteMetricHandler``s created with ``save_details=True``: at
the end of the epoch each leaves its per-image values in ``engine.state.metric_details[name]``
(shape (N, 1), in iteration order) and the mean in ``engine.state.metrics[name]``. This handler
collects the case names per iteration (``engine.state.output["case"]``) and, on ``COMPLETED``, writes

- ``metrics_per_case.json`` / ``metrics_per_case.csv``: one row per case, one column per metric;
- ``metrics.json`` / ``metrics.csv``: per metric the mean, the standard deviation (population,
  ``ddof=0``), min, max and the number of cases, plus the ``info`` entries (fold, checkpoint, ...).

``metrics.json`` is written last, each file atomically: its presence means the evaluation finished
(the cross-validation runner skips such folds).

MONAI's ``MetricsSaver`` writes CSV only and takes the case names from image metadata, which the
workflows do not keep (``set_track_meta(False)`` for speed), hence this handler.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from scripts.atomic import write_text_atomic
from scripts.handlers.metric_tables import json_number, summarize_values, write_csv_atomic

__all__ = ["MattingMetricsWriter", "summarize_values"]


def _cases_of(output: Any, case_key: str) -> list[str]:
    if isinstance(output, Mapping):
        cases = output.get(case_key)
        if cases is None:
            return []
        return [str(c) for c in (cases if isinstance(cases, (list, tuple)) else [cases])]
    if isinstance(output, Sequence):
        return [str(o.get(case_key)) for o in output if isinstance(o, Mapping) and case_key in o]
    return []


class MattingMetricsWriter:
    """Ignite handler writing the per-case and per-fold metric tables of an evaluator.

    Args:
        output_dir: folder of the four files.
        metric_names: metrics to write (default: every entry of ``engine.state.metric_details``), in
            this column order.
        info: extra entries of ``metrics.json`` (e.g. ``{"fold": 0, "checkpoint": "models/model.pt"}``).
        case_key: key of the case names in ``engine.state.output``.
        prefix: file name prefix (``""`` -> ``metrics.json``; ``"val_"`` -> ``val_metrics.json``).

    Example::

        MattingMetricsWriter("eval/fold0", info={"fold": 0}).attach(evaluator)
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        metric_names: Sequence[str] | None = None,
        info: Mapping[str, Any] | None = None,
        case_key: str = "case",
        prefix: str = "",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.metric_names = list(metric_names) if metric_names is not None else None
        self.info = dict(info or {})
        self.case_key = case_key
        self.prefix = prefix
        self.logger = logging.getLogger(__name__)
        self.cases: list[str] = []
        self.summary: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_STARTED`` (reset), ``ITERATION_COMPLETED`` (case names) and ``COMPLETED``."""
        self.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine) -> None:
        self.cases = []

    def collect(self, engine: Engine) -> None:
        self.cases.extend(_cases_of(engine.state.output, self.case_key))

    def path(self, name: str) -> Path:
        """Path of one of the files, e.g. ``path("metrics.json")``."""
        return self.output_dir / f"{self.prefix}{name}"

    def write(self, engine: Engine) -> dict[str, Any]:
        """Write the four files; return the summary (also kept in ``self.summary``)."""
        details = getattr(engine.state, "metric_details", None) or {}
        names = self.metric_names if self.metric_names is not None else list(details)
        missing = [n for n in names if n not in details]
        if missing:
            raise KeyError(
                f"no per-case values for metrics {missing}: create their IgniteMetricHandler with save_details=True."
            )
        columns: dict[str, list[float]] = {}
        for name in names:
            values = details[name]
            values = values.detach().cpu().to(torch.float64).reshape(-1).tolist() if isinstance(values, torch.Tensor) \
                else np.asarray(values, dtype=np.float64).reshape(-1).tolist()
            columns[name] = values
        n = len(next(iter(columns.values()))) if columns else 0
        cases = self.cases if len(self.cases) == n else [f"case_{i}" for i in range(n)]
        if len(self.cases) != n:
            self.logger.warning(f"{len(self.cases)} case names for {n} metric values; rows are numbered instead.")

        rows = [{"case": case, **{name: columns[name][i] for name in names}} for i, case in enumerate(cases)]
        stats = {name: summarize_values(columns[name]) for name in names}
        self.summary = {**self.info, "num_cases": n, "metrics": stats}

        json_rows = [{k: json_number(v) for k, v in row.items()} for row in rows]
        write_text_atomic(self.path("metrics_per_case.json"), json.dumps(json_rows, indent=1) + "\n")
        write_csv_atomic(self.path("metrics_per_case.csv"), ["case", *names],
                         ([row["case"], *(row[name] for name in names)] for row in rows))
        write_csv_atomic(self.path("metrics.csv"), ["metric", "mean", "std", "min", "max", "n"],
                         ([name, s["mean"], s["std"], s["min"], s["max"], s["n"]] for name, s in stats.items()))
        json_summary = {
            **self.summary,
            "metrics": {name: {k: json_number(v) for k, v in s.items()} for name, s in stats.items()},
        }
        write_text_atomic(self.path("metrics.json"), json.dumps(json_summary, indent=1) + "\n")
        self.logger.info(f"wrote per-case and summary metrics of {n} cases to {self.output_dir}")
        return self.summary
