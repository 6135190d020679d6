"""Statistics and CSV tables of metric values, shared by the evaluation's metrics writer
(:mod:`scripts.handlers.metrics_writer`) and the cross-validation aggregate (:mod:`tools.crossval`).

Light on purpose (numpy and the standard library only), so that tools can import it without
loading torch or MONAI.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scripts.atomic import write_text_atomic

__all__ = ["summarize_values", "json_number", "write_csv_atomic"]


def summarize_values(values: Iterable[float | None]) -> dict[str, float | int]:
    """``{"mean", "std", "min", "max", "n"}`` of the finite values; ``std`` is the population one (``ddof=0``).

    ``None``, NaN and infinite values are left out; with no finite value every statistic is NaN and
    ``n`` is 0.

    Example::

        summarize_values([1.0, 3.0, None])  # {'mean': 2.0, 'std': 1.0, 'min': 1.0, 'max': 3.0, 'n': 2}
    """
    arr = np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)
    if arr.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": int(arr.size),
    }


def json_number(value: Any) -> Any:
    """``value`` with NaN and infinite floats replaced by ``None`` (JSON has no NaN)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _cell(value: Any) -> str:
    # floats keep every digit (repr) so a table reads back to the same numbers
    return repr(value) if isinstance(value, float) else ("" if value is None else str(value))


def write_csv_atomic(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a CSV table atomically (``scripts.atomic``): floats as ``repr``, ``None`` as an empty cell.

    Example::

        write_csv_atomic("eval/metrics.csv", ["metric", "mean"], [["sad_unknown", 0.41]])
    """
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(list(header))
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return write_text_atomic(path, buf.getvalue())
