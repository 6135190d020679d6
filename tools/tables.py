"""The one formatting of the markdown tables the tools write (reports, aggregates, study printouts)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["fmt", "md_row", "md_rule"]


def fmt(value: float | None, std: float | None = None, digits: int = 4) -> str:
    """``0.1234``, ``0.1234 +/- 0.0056`` with ``std``, ``n/a`` for a missing value.

    Example::

        fmt(0.12345), fmt(0.5, 0.01), fmt(None)   # '0.1235', '0.5000 +/- 0.0100', 'n/a'
    """
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if std is None else f"{value:.{digits}f} +/- {std:.{digits}f}"


def md_row(cells: Iterable[object]) -> str:
    """``| a | b |`` from the cells (each written with ``str``; an empty cell is ``| |``)."""
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def md_rule(columns: int, align: str = "---") -> str:
    """The rule under a header of ``columns`` columns (``align`` ``---:`` for right-aligned numbers)."""
    return "|" + f" {align} |" * columns
