"""Errors of the MONAI Label app, each carrying the HTTP status the server answers with.

``MedicalMattingApp.infer`` / ``train`` (``main.py``) turn them into ``fastapi.HTTPException`` with
``status_code`` and the message as ``detail``; everything else stays a 500 (a server bug).

Example:
    >>> err = StudyImageNotFoundError("image 'case9' is not in the datastore")
    >>> err.status_code
    404
"""

from __future__ import annotations

__all__ = [
    "MattingAppError",
    "InvalidRequestError",
    "StudyImageNotFoundError",
    "UnsupportedStudyImageError",
    "NoTrainedWeightsError",
    "InvalidCheckpointError",
    "NoTrainingLabelsError",
    "TrainingDisabledError",
    "ConfigChangedError",
    "UnknownTaskError",
    "ImageTooLargeError",
    "ServerBusyError",
]


class MattingAppError(RuntimeError):
    """Base class: a request the app refuses, with a clear message and an HTTP status."""

    status_code: int = 400


class InvalidRequestError(MattingAppError):
    """A request parameter has a value the app does not know."""

    status_code = 400


class StudyImageNotFoundError(MattingAppError):
    """The requested image id is neither in the datastore nor an existing file."""

    status_code = 404


class UnsupportedStudyImageError(MattingAppError):
    """The image format or shape cannot be handled (not PNG/JPEG/TIFF/BMP or NIfTI, wrong channels...)."""

    status_code = 415


class NoTrainedWeightsError(MattingAppError):
    """``models/model.pt`` does not exist and untrained inference is not allowed."""

    status_code = 409


class InvalidCheckpointError(MattingAppError):
    """The checkpoint cannot be read or does not match the bundle's ``network_def``."""

    status_code = 500


class NoTrainingLabelsError(MattingAppError):
    """Training was requested but the datastore holds no usable (image, final label) pairs."""

    status_code = 409


class TrainingDisabledError(MattingAppError):
    """Training (or replacing the served model) through the server was not enabled by the operator."""

    status_code = 403


class ConfigChangedError(MattingAppError):
    """The bundle's configs differ from the ones hashed at server start: training is refused."""

    status_code = 409


class UnknownTaskError(MattingAppError):
    """The request names a model or trainer the app does not serve."""

    status_code = 404


class ImageTooLargeError(MattingAppError):
    """The image (by its header) or the upload is larger than the app reads (``scripts.data.image_limits``)."""

    status_code = 413


class ServerBusyError(MattingAppError):
    """Too many inference requests are already waiting; the client should retry later."""

    status_code = 503


class FinalLabelExistsError(MattingAppError):
    """Saving a prediction would replace a human final label, and the request did not ask for it."""

    status_code = 409
