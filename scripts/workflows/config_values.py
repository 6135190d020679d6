"""Command-line and config spellings of optional settings, turned into typed values where they come in.

``python -m monai.bundle run ... --key value`` parses each value with fire, which gives Python
literals their type (``512``, ``[48,48]``, ``None``) and passes anything else as text: ``--max_internal_size
null`` arrives as the text ``"null"``. The configs convert such settings here before they reach a
class (``MattingInferer`` takes typed arguments only), so the text rules live in one place:

- :func:`none_if_null`: ``"null"``, ``"none"`` and ``""`` mean "not set";
- :func:`null_setting`: ``"null"`` and ``""`` mean "not set", ``"none"`` is kept (a value of
  ``test_time_flips``: no flips);
- :func:`int_or_none`: as :func:`none_if_null`, and digit text is an integer.

Example (``configs/inference.yaml``)::

    max_internal_size: "$scripts.workflows.config_values.int_or_none(@max_internal_size)"
"""

from __future__ import annotations

from typing import Any

__all__ = ["none_if_null", "null_setting", "int_or_none"]


def none_if_null(value: Any) -> Any:
    """``None`` for ``None`` and the texts ``"null"`` / ``"none"`` / ``""`` (any case, spaces ignored); else ``value``."""
    if isinstance(value, str) and value.strip().lower() in ("null", "none", ""):
        return None
    return value


def null_setting(value: Any) -> Any:
    """``None`` for ``None`` and the texts ``"null"`` / ``""``; else ``value`` (``"none"`` is a value of ``test_time_flips``)."""
    if isinstance(value, str) and value.strip().lower() in ("null", ""):
        return None
    return value


def int_or_none(value: Any) -> Any:
    """:func:`none_if_null`, with digit text (``"256"``) as an integer; any other value unchanged, for the
    class that receives it to refuse with its own message."""
    value = none_if_null(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value
