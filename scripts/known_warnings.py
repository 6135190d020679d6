"""Filters for the three library warnings that every bundle run printed and that say nothing about it.

Each filter matches one message exactly (its start), so any other warning of the same libraries
still shows:

- ``NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully`` (a Python
  warning) and ``nvImageCodec is not available; skipping pydicom decoder plugin registration`` (a
  log record of ``monai.data.nvimgcodec_pydicom_plugin``): MONAI's ``LoadImage`` builds every
  reader it knows, the GPU DICOM decoder included, even when ``reader="PILReader"`` is given; the
  bundle reads no DICOM and installs no nvImageCodec.
- ``The given NumPy array is not writable``: ``torch.as_tensor`` inside ``LoadImage`` wraps the
  read-only array that Pillow returns; the next transform (intensity scaling, type conversion) makes
  a new tensor, so nothing ever writes into it.

MONAI's notice that a config file can run code (printed by ``python -m monai.bundle run`` before
any config is read) cannot be filtered from here; the tools that run the bundle's own configs
pass :data:`BUNDLE_CONFIG_NOTICE_FILTER` to their child processes instead
(``PYTHONWARNINGS``, ``tools.processes.bundle_env``).

Hand-written: a few ``warnings.filterwarnings`` calls, applied when the ``scripts`` package is
imported (every config imports it).
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["KNOWN_WARNING_MESSAGES", "BUNDLE_CONFIG_NOTICE_FILTER", "silence_known_warnings"]

#: the start of each filtered Python warning (a regular expression, matched at the message's start)
KNOWN_WARNING_MESSAGES = (
    r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully",
    r"The given NumPy array is not writable",
)
#: ``PYTHONWARNINGS`` entry for MONAI's config trust notice, for child processes that run the bundle's own configs
BUNDLE_CONFIG_NOTICE_FILTER = "ignore:parsing config_file:UserWarning"
_NVIMGCODEC_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"


class _DropMessage(logging.Filter):
    """Drops the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def silence_known_warnings() -> None:
    """Install the filters of this module (idempotent)."""
    for message in KNOWN_WARNING_MESSAGES:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    logger = logging.getLogger(_NVIMGCODEC_LOGGER)
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage("nvImageCodec is not available"))

