"""A progress bar for MONAI bundle handler lists (Ignite's ``ProgressBar`` configured at construction).

Ignite's ``ProgressBar`` takes its ``output_transform`` in ``attach(engine, ...)``, which a bundle
config cannot call with arguments; :class:`ProgressBarHandler` takes everything in its constructor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ignite.engine import Engine

__all__ = ["ProgressBarHandler"]


class ProgressBarHandler:
    """Show a ``tqdm`` progress bar per epoch with the running value of ``output_transform``.

    Args:
        output_transform: maps ``engine.state.output`` to a number or ``{name: number}`` shown in the
            bar (``None``: no values).
        persist: keep the bar of each finished epoch on screen.
        enabled: ``False`` makes ``attach`` a no-op (e.g. ``--progress_bar false`` in the configs; the
            strings ``"false"``, ``"0"``, ``"no"``, ``"off"`` also disable it, as the command line may
            pass them unparsed).
        desc: text in front of the bar.

    Example::

        ProgressBarHandler(output_transform=lambda out: {"loss": out[0]["loss"]}).attach(trainer)
    """

    def __init__(
        self,
        output_transform: Callable[[Any], Any] | None = None,
        persist: bool = False,
        enabled: bool | str = True,
        desc: str | None = None,
    ) -> None:
        self.output_transform = output_transform
        self.persist = persist
        self.enabled = str(enabled).strip().lower() not in ("false", "0", "no", "off", "none", "")
        self.desc = desc
        self.bar: Any = None

    def attach(self, engine: Engine) -> None:
        """Attach Ignite's ``ProgressBar`` (when enabled)."""
        if not self.enabled:
            return
        from ignite.handlers import ProgressBar

        kwargs = {"persist": self.persist}
        if self.desc is not None:
            kwargs["desc"] = self.desc
        self.bar = ProgressBar(**kwargs)
        self.bar.attach(engine, output_transform=self.output_transform)
