"""MONAI Label's datastore and sessions, taking only plain names and image files the app reads.

An id it does not hold -- whatever it looks like -- gets the same answer as any unknown id (no
oracle for paths); refused uploads are removed before the answer (``names`` holds the checks).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Any, Callable, Dict

from monailabel.datastore.local import LocalDatastore
from monailabel.utils.sessions import Sessions

from .errors import InvalidRequestError, MattingAppError, StudyImageNotFoundError
from .names import (
    APP_SUFFIXES_LONGEST_FIRST,
    check_image_file,
    check_name,
    is_plain_name,
    is_within,
    shown,
    unknown_image,
    upload_suffix,
)

__all__ = ["SecureLocalDatastore", "SecureSessions"]

logger = logging.getLogger(__name__)


def _http(fn: Callable) -> Callable:
    """Turn :class:`MattingAppError` into the HTTP answer it carries (datastore methods run in endpoints)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MattingAppError as e:
            from fastapi import HTTPException

            logger.warning(f"datastore request refused ({e.status_code}): {e}")
            raise HTTPException(status_code=e.status_code, detail=str(e)) from e

    return wrapper


class SecureLocalDatastore(LocalDatastore):
    """``LocalDatastore`` that only takes plain ids and tags, and image files the app reads.

    Reads of an id or tag that is not a plain name behave exactly as reads of an unknown id;
    writes with one are refused with a 400, uploads of other file types with a 415, before
    anything is written.
    """

    def __init__(self, datastore_path: str, **kwargs: Any) -> None:
        kwargs.setdefault("extensions", [f"*{s}" for s in APP_SUFFIXES_LONGEST_FIRST])
        super().__init__(datastore_path, **kwargs)
        self._root = os.path.realpath(datastore_path)

    def _reload_if_changed(self) -> None:
        """Re-read the datastore file if another process wrote it since this one last read or wrote it.

        MONAI Label's background scoring and training jobs are processes of their own that write the
        same file. Its file watch (``auto_reload``) alone can miss such a write: it skips the first
        change event after each write of its own, and the kernel merges change events of one file
        that were not read yet, so the server could answer from, and later write back, a datastore
        without the job's results. ``_init_from_datastore_file`` re-reads only when the file's mtime
        differs from the one this process last read or wrote (one ``stat``).
        """
        self._init_from_datastore_file()

    def _known(self, image_id: Any) -> bool:
        self._reload_if_changed()
        return is_plain_name(image_id) and image_id in self._datastore.objects

    def json(self):
        self._reload_if_changed()
        return super().json()

    def list_images(self):
        self._reload_if_changed()
        return super().list_images()

    def get_unlabeled_images(self, label_tag=None, labels=None):
        self._reload_if_changed()
        return super().get_unlabeled_images(label_tag, labels)

    # ------------------------------------------------------------ reads
    def get_image_uri(self, image_id: str) -> str:
        if not self._known(image_id):
            return ""
        uri = super().get_image_uri(image_id)
        return uri if uri and is_within(uri, self._root) else ""

    def get_image(self, image_id: str, params=None) -> Any:
        uri = self.get_image_uri(image_id)
        return self._to_bytes(uri) if uri else None

    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        return super().get_image_info(image_id) if self.get_image_uri(image_id) else {}

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        if not (self._known(label_id) and is_plain_name(label_tag)):
            return ""
        uri = super().get_label_uri(label_id, label_tag)
        return uri if uri and is_within(uri, self._root) else ""

    def get_label(self, label_id: str, label_tag: str, params=None) -> Any:
        uri = self.get_label_uri(label_id, label_tag)
        return self._to_bytes(uri) if uri else None

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        return super().get_label_info(label_id, label_tag) if self.get_label_uri(label_id, label_tag) else {}

    def get_labels_by_image_id(self, image_id: str) -> Dict[str, str]:
        return super().get_labels_by_image_id(image_id) if self._known(image_id) else {}

    def datalist(self, full_path=True):
        pairs = super().datalist(full_path=True)
        pairs = [d for d in pairs if all(is_within(p, self._root) for p in d.values())]
        if not full_path:
            prefix = self._root.rstrip(os.sep) + os.sep
            pairs = [{k: v[len(prefix):] for k, v in d.items()} for d in pairs]
        return pairs

    @_http
    def get_dataset_archive(self, limit_cases):
        if not self.datalist():
            raise StudyImageNotFoundError("the datastore has no labelled images to archive")
        return super().get_dataset_archive(limit_cases)

    # ------------------------------------------------------------ writes
    @_http
    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        with _removed_when_refused(image_filename):
            check_name(image_id, "image id")
            upload_suffix(image_filename, "image upload")
            check_image_file(image_filename, "image upload")
        return super().add_image(image_id, image_filename, dict(image_info or {}))

    @_http
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        with _removed_when_refused(label_filename):
            check_name(label_tag, "label tag")
            if not self._known(image_id):
                raise unknown_image(image_id)
            upload_suffix(label_filename, "label upload")
            check_image_file(label_filename, "label upload")
        return super().save_label(image_id, label_filename, label_tag, dict(label_info or {}))

    @_http
    def remove_image(self, image_id: str) -> None:
        if not self.get_image_uri(image_id):
            raise unknown_image(image_id)
        return super().remove_image(image_id)

    @_http
    def remove_label(self, label_id: str, label_tag: str) -> None:
        if not self.get_label_uri(label_id, label_tag):
            raise StudyImageNotFoundError(f"no label {shown(label_tag)} for image {shown(label_id)}")
        return super().remove_label(label_id, label_tag)

    @_http
    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        if not self.get_image_uri(image_id):
            raise unknown_image(image_id)
        return super().update_image_info(image_id, dict(info))

    @_http
    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        if not self.get_label_uri(label_id, label_tag):
            raise StudyImageNotFoundError(f"no label {shown(label_tag)} for image {shown(label_id)}")
        return super().update_label_info(label_id, label_tag, dict(info))


@contextlib.contextmanager
def _removed_when_refused(upload: str):
    """Remove the uploaded temporary file when the block refuses it: MONAI Label's endpoint removes it
    in a background task, which FastAPI runs only after a successful answer."""
    try:
        yield
    except MattingAppError:
        with contextlib.suppress(OSError):
            if os.path.isfile(upload):
                os.remove(upload)
        raise


class SecureSessions(Sessions):
    """Sessions with plain ids, holding one image file the app reads; archives are not unpacked."""

    def get_session(self, session_id: str, update_ts: bool = True, fetch_cache: bool = True):
        if not is_plain_name(session_id):
            return None
        return super().get_session(session_id, update_ts=update_ts, fetch_cache=fetch_cache)

    def remove_session(self, session_id: str):
        if is_plain_name(session_id):
            super().remove_session(session_id)

    @_http
    def add_session(self, data_file: str, expiry: int = 0, uncompress: bool = False, session_id=None):
        try:
            if uncompress:
                raise InvalidRequestError("sessions of this app hold one image file; uncompress is not supported")
            if os.path.isdir(data_file):
                raise InvalidRequestError("sessions of this app hold one image file, not several")
            upload_suffix(data_file, "session upload")
            check_image_file(data_file, "session upload")
        except MattingAppError:
            if os.path.isfile(data_file):
                os.remove(data_file)  # the endpoint cleans its folder only after a successful add
            raise
        return super().add_session(data_file, expiry, False, None)
