"""Exceptions raised while reading, validating and writing matting datasets.

All of them derive from :class:`ValueError`, so callers that only care about "bad input" can catch
``ValueError``; the subclasses say which stage refused the input.
"""

from __future__ import annotations

import pickle

__all__ = ["DataPreparationError", "DatasetSourceError", "DatasetValidationError", "UnsafePickleError"]


class DataPreparationError(ValueError):
    """Base class of every error raised by ``scripts.data`` on bad input."""


class DatasetSourceError(DataPreparationError):
    """A source file cannot be used: missing, wrong hash, not a (complete) zip, unexpected content."""


class DatasetValidationError(DataPreparationError):
    """A case of the dataset breaks the expected layout (shape, dtype, value range, rater count, trimap)."""


class UnsafePickleError(pickle.UnpicklingError, DataPreparationError):
    """A pickle asked for a global that the restricted unpickler does not admit (it was not run)."""
