"""What a request may name, write and run on the MONAI Label server (see docs/monailabel.md, "Security").

MONAI Label 0.8.5 trusts the ids, tags and file names of requests: ``LocalDatastore`` joins them
into paths unchecked, and ``MONAILabelApp.infer`` runs on any existing path it is given. This
module holds the app's answers to that, used by ``main.py``:

- :func:`check_name`: ids, tags and session ids are plain names (:data:`PLAIN_NAME`, no ``..``),
  checked as received, so no encoding (percent, double percent, backslash, NUL, non-ASCII
  look-alikes) can turn them into a path;
- :func:`upload_suffix` / :func:`check_image_file`: an uploaded image or label has a suffix the app
  reads (``scripts.image_formats.APP_IMAGE_SUFFIXES``, lower case) and decodes as that format;
- :class:`SecureLocalDatastore`: MONAI Label's ``LocalDatastore`` whose every entry point checks
  the above; an id it does not hold -- whatever it looks like -- gets the same answer as any
  unknown id (no oracle for paths);
- :class:`SecureSessions`: sessions with plain ids, one image file each, no archive unpacking;
- :class:`ConfigSnapshot`: the bundle's ``configs/`` copied at server start into a private folder
  with their sha256; inference and training read the copy and training refuses when either the
  copy or the bundle's configs changed;
- :func:`check_studies_location`, :func:`check_bind_host`: refuse to start with the studies folder
  inside the bundle (or the other way round), or bound to a non-loopback address without
  authentication;
- :func:`install_request_guards`: checks of the request options that MONAI Label parses or acts
  on before any app method runs (``params`` JSON, infer uploads and sessions, training options
  and the training switch, model uploads). It wraps the helper functions of
  ``monailabel.endpoints.*``, which the routes call by module-global name.

Example:
    >>> is_plain_name("case_001.v2"), is_plain_name("../configs/train"), is_plain_name("%2e%2e")
    (True, False, False)
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import inspect
import ipaddress
import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterable, Mapping, Optional, Union

from monailabel.datastore.local import LocalDatastore
from monailabel.utils.sessions import Sessions

from scripts.digest import sha256_file
from scripts.image_formats import APP_IMAGE_SUFFIXES, NIFTI_SUFFIXES, longest_first

from .errors import (
    ConfigChangedError,
    ImageTooLargeError,
    InvalidRequestError,
    MattingAppError,
    ServerBusyError,
    StudyImageNotFoundError,
    UnsupportedStudyImageError,
)

__all__ = [
    "PLAIN_NAME",
    "is_plain_name",
    "check_name",
    "unknown_image",
    "upload_suffix",
    "check_study_image",
    "check_image_file",
    "InferenceSlots",
    "configure_slots",
    "is_large_work",
    "redact_paths",
    "http_error",
    "is_within",
    "check_studies_location",
    "bind_host",
    "check_bind_host",
    "ConfigSnapshot",
    "SecureLocalDatastore",
    "SecureSessions",
    "trusted_inputs",
    "parse_json_object",
    "install_request_guards",
]

logger = logging.getLogger(__name__)

#: an id, tag or session id: ASCII letters, digits, ``.``, ``_``, ``-``; starts with a letter or digit
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: suffixes of the files the app reads (longest first, so ``.nii.gz`` wins over ``.nii``)
APP_SUFFIXES_LONGEST_FIRST = longest_first(APP_IMAGE_SUFFIXES)


# ---------------------------------------------------------------------------------- names
def is_plain_name(value: Any) -> bool:
    """Whether ``value`` is a plain name (:data:`PLAIN_NAME`, no ``..``): never a path, in any encoding."""
    return isinstance(value, str) and PLAIN_NAME.fullmatch(value) is not None and ".." not in value


def _shown(value: Any) -> str:
    return repr(str(value)[:128])


def check_name(value: Any, what: str) -> str:
    """``value`` if it is a plain name, else :class:`InvalidRequestError` (400) naming ``what``."""
    if not is_plain_name(value):
        raise InvalidRequestError(
            f"{what} {_shown(value)} is not a plain name: use 1-128 ASCII letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'")
    return value


def unknown_image(image_id: Any) -> StudyImageNotFoundError:
    """The one answer to an image id the datastore does not hold (also for paths and malformed ids)."""
    return StudyImageNotFoundError(
        f"image {_shown(image_id)} is not in the datastore; GET /datastore/?output=all lists the image ids")


def upload_suffix(filename: Any, what: str = "upload") -> str:
    """The image suffix of an uploaded file name (:data:`APP_SUFFIXES_LONGEST_FIRST`), else a 415."""
    name = os.path.basename(str(filename or "")).replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in APP_SUFFIXES_LONGEST_FIRST:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise UnsupportedStudyImageError(
        f"{what} {_shown(filename)}: only image files are accepted ({', '.join(APP_SUFFIXES_LONGEST_FIRST)}, lower case)")


def check_study_image(path: Union[str, os.PathLike], max_pixels: Optional[int] = None, what: str = "image"):
    """The image's header (``scripts.data.image_limits.check_image_header``), read before any decoding.

    Raises:
        ImageTooLargeError: (413) above the documented maximum size, or a decompression bomb.
        UnsupportedStudyImageError: (415) the header cannot be read.
    """
    from scripts.data import image_limits

    path = str(path)
    try:
        return image_limits.check_image_header(path, max_pixels or image_limits.MAX_IMAGE_PIXELS)
    except image_limits.ImageTooLargeError as e:  # the server's file names stay out of the answer
        raise ImageTooLargeError(str(e).replace(path, what)) from None
    except image_limits.UnreadableImageError as e:
        raise UnsupportedStudyImageError(str(e).replace(path, what)) from None


def check_image_file(path: Union[str, os.PathLike], what: str = "upload") -> None:
    """Decode ``path`` as the image format its suffix says, after checking its size from the header.

    Raises:
        ImageTooLargeError: (413) larger than the app reads (:func:`check_study_image`).
        UnsupportedStudyImageError: (415) not a readable image of that format (truncated, corrupt...).
    """
    path = str(path)
    suffix = upload_suffix(path, what)
    check_study_image(path, what=what)
    try:
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib
            import numpy as np

            img = nib.load(path)
            np.asanyarray(img.dataobj)
            if not 2 <= len(img.shape) <= 4:
                raise ValueError(f"{len(img.shape)}-D volume")
        else:
            from PIL import Image

            with Image.open(path) as img:
                img.load()
    except MattingAppError:
        raise
    except Exception as e:  # any decoder error: the file is not what its name says
        raise UnsupportedStudyImageError(f"{what}: not a readable {suffix} image ({type(e).__name__})") from e


def is_within(path: Union[str, os.PathLike], root: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` resolves (symlinks followed) to ``root`` or below it."""
    p, r = os.path.realpath(path), os.path.realpath(root)
    return p == r or p.startswith(r.rstrip(os.sep) + os.sep)


# ---------------------------------------------------------------------------------- startup checks
def check_studies_location(studies: str, bundle_root: Union[str, os.PathLike]) -> None:
    """Refuse a studies folder inside the bundle (requests write there) or a bundle inside the studies."""
    if studies.startswith(("http://", "https://")):
        return
    if is_within(studies, bundle_root) or is_within(bundle_root, studies):
        raise RuntimeError(
            f"--studies {os.path.realpath(studies)} and the bundle {os.path.realpath(bundle_root)} overlap: "
            "the datastore must live outside the bundle folder; use a studies folder elsewhere")


def bind_host(argv: Iterable[str]) -> Optional[str]:
    """The address ``monailabel start_server`` binds, read by MONAI Label's own argument parser.

    Every spelling argparse accepts (``-i ADDR``, ``-iADDR``, ``--host=ADDR``, abbreviations such as
    ``--ho`` / ``--hos=``, repeated options: the last wins) gives what the server will use, so the
    check cannot read another value than the bind. ``None`` when the process is not
    ``start_server`` (e.g. a training subprocess).

    Raises:
        RuntimeError: the arguments cannot be parsed as ``start_server``'s (the bind address is unknown).
    """
    argv = [str(a) for a in argv]
    if "start_server" not in argv:
        return None
    import contextlib as _contextlib
    import io

    from monailabel.main import Main

    parser = Main().args_parser()
    err = io.StringIO()
    try:
        with _contextlib.redirect_stderr(err):
            args, _ = parser.parse_known_args(argv[1:])
    except SystemExit:
        raise RuntimeError(f"the start_server arguments cannot be parsed, so the bind address is unknown: "
                           f"{err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else argv[1:]}") from None
    host = getattr(args, "host", None)
    if getattr(args, "action", None) != "start_server" or not isinstance(host, str):
        raise RuntimeError("the start_server arguments do not say which address the server binds")
    return host


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind_host(host: Optional[str], auth_enabled: bool, allow_remote: bool) -> None:
    """Refuse a non-loopback bind address without authentication unless the operator allowed it."""
    if host is None or _is_loopback(host) or auth_enabled:
        return
    message = (f"the server listens on {host} without authentication: anyone who reaches the port can "
               "upload, infer and (if enabled) train")
    if not allow_remote:
        raise RuntimeError(
            f"{message}; start it with --host 127.0.0.1 behind an authenticating reverse proxy, or set "
            "MONAI_LABEL_AUTH_ENABLE=true, or accept the risk with --conf allow_remote_without_auth true")
    logger.warning("!" * 100)
    logger.warning(f"!!! SECURITY: {message} (--conf allow_remote_without_auth true)")
    logger.warning("!" * 100)


# ---------------------------------------------------------------------------------- configs
class ConfigSnapshot:
    """The bundle's configs as they were at server start, in a private folder, with their sha256.

    The server process takes it once (``configs/`` of the bundle, plus any extra config file) into a
    ``mkdtemp`` folder (mode 0700) outside the bundle and the datastore, and publishes it in the
    environment variable :attr:`ENV`; the background training processes MONAI Label starts inherit
    the variable and use the same copy. :meth:`verify` refuses (:class:`ConfigChangedError`) when a
    copied file or the bundle's own file no longer has its start-up hash.

    Args:
        bundle_root: the bundle folder.
        folder: the snapshot folder (mirrors the bundle's relative paths).
        files: bundle-relative path -> sha256.
    """

    ENV = "MEDICAL_MATTING_CONFIG_SNAPSHOT"
    PREFIX = "medical_matting_configs_"
    OWNER = ".owner_pid"
    _cache: Dict[str, "ConfigSnapshot"] = {}

    def __init__(self, bundle_root: Union[str, os.PathLike], folder: Union[str, os.PathLike], files: Mapping[str, str]):
        self.bundle_root = Path(bundle_root).resolve()
        self.folder = Path(folder)
        self.files = dict(files)

    @classmethod
    def take(cls, bundle_root: Union[str, os.PathLike], extra: Iterable[Union[str, os.PathLike]] = ()) -> "ConfigSnapshot":
        """Copy ``<bundle_root>/configs`` (and ``extra`` files inside the bundle) into a new private folder."""
        root = Path(bundle_root).resolve()
        sources = sorted(p for p in (root / "configs").rglob("*") if p.is_file())
        sources += [Path(e).resolve() for e in extra if Path(e).is_file()]
        folder = Path(tempfile.mkdtemp(prefix=cls.PREFIX))
        files: Dict[str, str] = {}
        for src in sources:
            rel = cls._key(root, src)
            if rel in files:
                continue
            dest = folder / rel.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            files[rel] = sha256_file(dest)
        owner = os.getpid()
        (folder / cls.OWNER).write_text(str(owner))
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(folder, ignore_errors=True))
        cls._remove_stale(folder.parent)
        return cls(root, folder, files)

    @classmethod
    def _remove_stale(cls, parent: Path) -> None:
        """Remove snapshots of server processes that are gone (killed servers do not run ``atexit``)."""
        for old in parent.glob(f"{cls.PREFIX}*"):
            try:
                if os.stat(old).st_uid != os.getuid():
                    continue
                os.kill(int((old / cls.OWNER).read_text()), 0)
            except ProcessLookupError:
                shutil.rmtree(old, ignore_errors=True)
            except (OSError, ValueError):
                continue

    @classmethod
    def for_bundle(cls, bundle_root: Union[str, os.PathLike], extra: Iterable[Union[str, os.PathLike]] = ()) -> "ConfigSnapshot":
        """This process's snapshot of ``bundle_root``: inherited from the server, or taken now."""
        root = str(Path(bundle_root).resolve())
        if root in cls._cache:
            return cls._cache[root]
        inherited = json.loads(os.environ.get(cls.ENV) or "{}")
        if root in inherited:
            snap = cls(root, inherited[root]["folder"], inherited[root]["files"])
        else:
            snap = cls.take(root, extra)
            inherited[root] = {"folder": str(snap.folder), "files": snap.files}
            os.environ[cls.ENV] = json.dumps(inherited)
            logger.info(f"medical_matting: configs of {root} snapshotted to {snap.folder} ({len(snap.files)} files)")
        cls._cache[root] = snap
        return snap

    @staticmethod
    def _key(root: Path, path: Union[str, os.PathLike]) -> str:
        """Bundle-relative POSIX path of a config in the bundle; its absolute path otherwise."""
        p = Path(path)
        p = p.resolve() if p.is_absolute() else (root / p).resolve()
        return p.relative_to(root).as_posix() if is_within(p, root) else p.as_posix()

    def _original(self, key: str) -> Path:
        return Path(key) if key.startswith("/") else self.bundle_root / key

    def path(self, config: Union[str, os.PathLike]) -> Path:
        """The snapshot copy of a config given relative to the bundle root (or as an absolute path)."""
        key = self._key(self.bundle_root, config)
        if key not in self.files:
            raise ConfigChangedError(f"config {config} was not part of the configs snapshotted at server start")
        return self.folder / key.lstrip("/")

    def verify(self) -> None:
        """:class:`ConfigChangedError` when a config differs from its start-up hash (copy or bundle)."""
        changed = []
        for rel, digest in self.files.items():
            for path in (self.folder / rel.lstrip("/"), self._original(rel)):
                if not path.is_file() or sha256_file(path) != digest:
                    changed.append(str(path))
        if changed:
            raise ConfigChangedError(
                f"configs changed since the server started ({', '.join(changed[:4])}); training refused: "
                "restart the server to use the new configs")


# ---------------------------------------------------------------------------------- datastore
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

    def _known(self, image_id: Any) -> bool:
        return is_plain_name(image_id) and image_id in self._datastore.objects

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
            raise StudyImageNotFoundError(f"no label {_shown(label_tag)} for image {_shown(label_id)}")
        return super().remove_label(label_id, label_tag)

    @_http
    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        if not self.get_image_uri(image_id):
            raise unknown_image(image_id)
        return super().update_image_info(image_id, dict(info))

    @_http
    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        if not self.get_label_uri(label_id, label_tag):
            raise StudyImageNotFoundError(f"no label {_shown(label_tag)} for image {_shown(label_id)}")
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


# ---------------------------------------------------------------------------------- request guards
_TRUSTED: contextvars.ContextVar[FrozenSet[str]] = contextvars.ContextVar("medical_matting_trusted", default=frozenset())


_CLIENT_GONE: contextvars.ContextVar[Optional[Callable[[], bool]]] = contextvars.ContextVar(
    "medical_matting_client_gone", default=None)


def client_gone() -> bool:
    """Whether the client of the current infer request has disconnected (``False`` outside a request).

    Asked by the volume inference between batches of slices, so abandoned work stops early and
    frees its slot."""
    check = _CLIENT_GONE.get()
    return bool(check is not None and check())


def _disconnect_check(http_request: Any) -> Callable[[], bool]:
    """A check, callable from the request's worker thread, of whether its client has disconnected.

    Starlette's ``Request.is_disconnected`` is a coroutine of the event loop; the worker thread
    (FastAPI's thread pool, run by anyio) asks it through ``anyio.from_thread.run``.
    """
    import anyio.from_thread

    def gone() -> bool:
        try:
            return bool(anyio.from_thread.run(http_request.is_disconnected))
        except RuntimeError:  # not in an anyio worker thread (a direct call): no client to lose
            return False

    return gone


def trusted_inputs() -> FrozenSet[str]:
    """Files the current infer request may read besides datastore ids (its checked upload or session image)."""
    return _TRUSTED.get()


#: deepest nesting of a request's JSON options (the app's options are flat; Python's parser recurses)
MAX_JSON_DEPTH = 32


def _nesting_depth(text: Union[str, bytes]) -> int:
    """Deepest bracket nesting of a JSON text, counted outside strings, without parsing it."""
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def parse_json_object(text: Any, what: str) -> Dict[str, Any]:
    """A request's JSON form field as a dict; :class:`InvalidRequestError` (400) otherwise. NaN/inf refused."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        return dict(text)

    def _no_constant(name):
        raise ValueError(f"{name} is not allowed")

    if isinstance(text, (str, bytes)) and _nesting_depth(text) > MAX_JSON_DEPTH:
        raise InvalidRequestError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidRequestError(f"{what} must be a JSON object: {_first_line(e)}") from e
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def finite_float(value: Any, what: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float in [low, high]; :class:`InvalidRequestError` otherwise."""
    if isinstance(value, bool):
        raise InvalidRequestError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(f"{what} must be a number, got {_shown(value)}") from e
    if not math.isfinite(number) or not low <= number <= high:
        raise InvalidRequestError(f"{what} must be a finite number in [{low:g}, {high:g}], got {_shown(value)}")
    return number


#: an absolute path in a message (POSIX or Windows): answers never name the server's files
_ABSOLUTE_PATH = re.compile(r"""(?<![^\s'"(\[=])(?:[A-Za-z]:\\|/)(?:[^\s'",;:()\[\]/\\]+[/\\])+[^\s'",;:()\[\]]+""")


def redact_paths(text: str) -> str:
    """``text`` with every absolute path replaced by its file name (no server folder in an answer).

    Example:
        >>> redact_paths("cannot read /tmp/medical_matting_upload_x1.png: truncated")
        'cannot read medical_matting_upload_x1.png: truncated'
    """
    return _ABSOLUTE_PATH.sub(lambda m: re.split(r"[/\\]", m.group(0).rstrip("/\\"))[-1] or "<path>", str(text))


def http_error(e: MattingAppError):
    """The HTTP answer to a refusal: its status and the one-line reason (messages name no server file:
    the app's own say ``image`` / ``upload``, decoder messages go through :func:`redact_paths`)."""
    from fastapi import HTTPException

    logger.warning(f"request refused ({e.status_code}): {e}")
    return HTTPException(status_code=e.status_code, detail=str(e))


_http_error = http_error


def _wrap(module, name: str, check: Callable[[Dict[str, Any]], None]) -> None:
    """Replace ``module.name`` by a version that runs ``check`` on its bound arguments first.

    ``check`` may change the arguments in place; a :class:`MattingAppError` becomes its HTTP answer.
    """
    original = getattr(module, name, None)
    if original is None:
        raise RuntimeError(f"{module.__name__}.{name} not found: this app's request checks need monailabel 0.8.5")
    if getattr(original, "__medical_matting_guard__", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def guarded(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        try:
            check(bound.arguments)
        except MattingAppError as e:
            raise _http_error(e) from e
        return original(*bound.args, **bound.kwargs)

    guarded.__medical_matting_guard__ = True
    setattr(module, name, guarded)


def install_request_guards(app_instance: Callable[[], Any]) -> None:
    """Check request options in ``monailabel.endpoints`` before MONAI Label parses or acts on them.

    ``app_instance`` returns the running app (``monailabel.interfaces.utils.app.app_instance``); the
    app provides ``check_infer_params``, ``check_train_request``, ``check_model_change`` and
    ``datastore()`` / ``sessions()``. Idempotent.
    """
    from monailabel.endpoints import datastore as ds_ep
    from monailabel.endpoints import infer as infer_ep
    from monailabel.endpoints import model as model_ep
    from monailabel.endpoints import train as train_ep

    def json_field(field: str):
        def check(a):
            a[field] = json.dumps(parse_json_object(a.get(field), field))

        return check

    _wrap(ds_ep, "add_image", json_field("params"))
    _wrap(ds_ep, "save_label", json_field("params"))
    _wrap(ds_ep, "update_image_info", json_field("info"))
    _wrap(ds_ep, "update_label_info", json_field("info"))

    def check_train(a):
        app = app_instance()
        if "model" in a:
            app.check_train_request(a.get("model"), a.get("params") or {})
        else:  # POST /train/: {model: options}
            params = a.get("params") or {}
            for model in app.info()["trainers"]:
                app.check_train_request(model, params.get(model) or {})

    _wrap(train_ep, "run_model", check_train)
    _wrap(train_ep, "run", check_train)

    def check_model_change(a):
        app_instance().check_model_change(a.get("model"))

    _wrap(model_ep, "update_model", check_model_change)
    _wrap(model_ep, "delete_model", check_model_change)

    original_infer = infer_ep.run_inference
    if not getattr(original_infer, "__medical_matting_guard__", False):

        @functools.wraps(original_infer)
        def run_inference(background_tasks, model, image="", session_id="", params="{}", file=None, label=None,
                          output=None):
            from scripts.workflows.volumes import InferenceCancelled

            try:
                return _guarded_inference(original_infer, app_instance(), background_tasks, model, image,
                                          session_id, params, file, label, output)
            except MattingAppError as e:
                raise _http_error(e) from e
            except InferenceCancelled as e:
                from fastapi import HTTPException

                SLOTS.cancelled += 1
                logger.warning(f"inference cancelled, the client disconnected: {redact_paths(str(e))} "
                               f"(slot freed; {SLOTS.cancelled} cancelled so far)")
                raise HTTPException(status_code=499, detail="cancelled: the client disconnected") from None

        run_inference.__medical_matting_guard__ = True
        infer_ep.run_inference = run_inference
    _run_inference_in_threads()


class InferenceSlots:
    """Bounded concurrent inferences: at most ``workers`` at once, of which at most ``large_workers``
    on large work (more pixels x slices than the internal grid holds: a large image or any volume),
    so large work never takes every slot from small images; more than ``max_waiting`` waiting
    requests are refused with 503 (their threads would otherwise fill the server's thread pool).

    Example::

        with SLOTS.slot(large=pixels > 512 * 512):
            ...  # run the inference
    """

    def __init__(self, workers: int = 2, large_workers: int = 1, max_waiting: int = 16, wait_s: float = 600.0):
        import threading

        self.workers, self.large_workers, self.max_waiting, self.wait_s = workers, large_workers, max_waiting, wait_s
        self._all = threading.BoundedSemaphore(workers)
        self._large = threading.BoundedSemaphore(large_workers)
        self._lock = threading.Lock()
        self.waiting = 0
        #: inferences stopped early because their client disconnected
        self.cancelled = 0

    @contextlib.contextmanager
    def slot(self, large: bool):
        with self._lock:
            if self.waiting >= self.max_waiting:
                raise ServerBusyError(f"{self.waiting} inference requests are already waiting; retry later")
            self.waiting += 1
        acquired = []
        try:
            for sem in ([self._large] if large else []) + [self._all]:
                if not sem.acquire(timeout=self.wait_s):
                    raise ServerBusyError(f"no inference slot became free within {self.wait_s:.0f} s; retry later")
                acquired.append(sem)
        except BaseException:
            for sem in reversed(acquired):
                sem.release()
            raise
        finally:
            with self._lock:
                self.waiting -= 1
        try:
            yield
        finally:
            for sem in reversed(acquired):
                sem.release()


#: the server's inference slots (``--conf infer_workers N``, default 2, sets ``workers``)
SLOTS = InferenceSlots()


def configure_slots(workers: int) -> None:
    """Replace :data:`SLOTS` with ``workers`` concurrent inferences (>= 2: one stays free for small images)."""
    global SLOTS
    workers = max(2, int(workers))
    SLOTS = InferenceSlots(workers=workers, large_workers=workers - 1)


def _run_inference_in_threads() -> None:
    """Serve ``POST /infer/{model}`` and ``POST /batch/infer/{model}`` from the thread pool, not the event loop.

    MONAI Label 0.8.5 declares both routes ``async`` and runs the whole inference inside them
    (``/batch/infer?run_sync=true`` too), which blocks the event loop: while one image is processed
    no other request (not even ``/info/``) is answered. Each route is replaced by a plain function
    with the same parameters (and dependencies), which FastAPI runs in its thread pool; :data:`SLOTS`
    bounds how many inferences run at once.
    """
    from monailabel.endpoints import batch_infer as batch_ep
    from monailabel.endpoints import infer as infer_ep

    def api_run_inference(**kw):
        token = _CLIENT_GONE.set(_disconnect_check(kw[_HTTP_REQUEST]))
        try:
            return infer_ep.run_inference(kw["background_tasks"], kw["model"], kw.get("image", ""),
                                          kw.get("session_id", ""), kw.get("params", "{}"), kw.get("file"),
                                          kw.get("label"), kw.get("output"))
        finally:
            _CLIENT_GONE.reset(token)

    def api_run_batch(**kw):
        if not kw.get("run_sync"):
            from fastapi import HTTPException

            raise HTTPException(status_code=400, detail=BATCH_NEEDS_RUN_SYNC)
        return batch_ep.run(kw["model"], kw.get("images"), kw.get("params"), kw.get("run_sync"))

    _replace_route(infer_ep.router, "/infer/{model}", api_run_inference, with_request=True)
    _replace_route(batch_ep.router, "/batch/infer/{model}", api_run_batch)


#: name of the parameter through which FastAPI hands the replaced infer route its ``Request``
_HTTP_REQUEST = "medical_matting_http_request"
#: why ``POST /batch/infer`` without ``run_sync=true`` is refused
BATCH_NEEDS_RUN_SYNC = ("batch inference runs only with run_sync=true (POST /batch/infer/{model}?run_sync=true): "
                        "MONAI Label's background batch runs in a separate process, outside the server's "
                        "inference slots")


def _replace_route(module_router, path: str, call: Callable[..., Any], with_request: bool = False) -> None:
    """Replace the ``POST`` route ending in ``path`` by the plain function ``call`` with its signature
    (``with_request``: plus the request itself, as the keyword :data:`_HTTP_REQUEST`)."""
    import sys

    from fastapi.routing import APIRoute

    # the endpoint module's router (FastAPI >= 0.120 serves included routers from it) and, when the
    # server runs, the application's router (older FastAPI copies the routes into it)
    ml_app = sys.modules.get("monailabel.app")
    routers = [module_router] + ([ml_app.app.router] if ml_app is not None else [])
    for router in routers:
        for i, route in enumerate(router.routes):
            if not (isinstance(route, APIRoute) and route.path.endswith(path) and "POST" in route.methods):
                continue
            if getattr(route.endpoint, "__medical_matting_guard__", False):
                continue
            endpoint = functools.partial(call)  # a fresh callable per route, same parameters
            signature = inspect.signature(route.endpoint)
            if with_request:
                from starlette.requests import Request

                extra = inspect.Parameter(_HTTP_REQUEST, inspect.Parameter.KEYWORD_ONLY, annotation=Request)
                signature = signature.replace(parameters=[*signature.parameters.values(), extra])
            endpoint.__signature__ = signature
            endpoint.__doc__ = route.endpoint.__doc__
            endpoint.__medical_matting_guard__ = True
            router.routes[i] = APIRoute(route.path, endpoint, methods=list(route.methods), name=route.name,
                                        summary=route.summary, tags=route.tags, dependencies=route.dependencies)
        changed = getattr(router, "_mark_routes_changed", None)
        if callable(changed):
            changed()


def _guarded_inference(original, app, background_tasks, model, image, session_id, params, file, label, output):
    """Check an infer request, resolve its input, and run MONAI Label's inference in a slot.

    An uploaded image is copied to a private temporary file that is removed on every path (answered,
    refused, failed, client gone): removal does not wait for a background task, which FastAPI runs
    only after a successful answer.
    """
    options = app.check_infer_params(model, parse_json_object(params, "params"))
    if label is not None:
        raise InvalidRequestError("medical_matting takes no label input")
    trusted = set()
    upload: Optional[str] = None
    try:
        if file is not None:
            suffix = upload_suffix(file.filename, "infer upload")
            fd, upload = tempfile.mkstemp(prefix="medical_matting_upload_", suffix=suffix)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(file.file, out)
            check_image_file(upload, "infer upload")
            image, session_id, source = upload, "", upload
            trusted.add(upload)
        elif session_id:
            sessions = app.sessions()
            session = sessions.get_session(session_id) if sessions is not None else None
            if session is None:
                raise StudyImageNotFoundError(f"session {_shown(session_id)} not found")
            if not os.path.isfile(session.image):
                raise UnsupportedStudyImageError("the session holds no single image file")
            upload_suffix(session.image, "session image")
            trusted.add(session.image)
            source = session.image
        else:
            source = app.datastore().get_image_uri(image)
            if not source:
                raise unknown_image(image)
        settings = app.model_settings(model)
        header = check_study_image(source, settings.get("max_image_pixels"), "image")
        token = _TRUSTED.set(frozenset(trusted))
        try:
            with SLOTS.slot(large=is_large_work(header, settings)):
                if client_gone():  # left while waiting for the slot
                    from scripts.workflows.volumes import InferenceCancelled

                    raise InferenceCancelled("the request was waiting for a slot", 0, 0)
                return original(background_tasks, model, image, session_id, json.dumps(options), None, None, output)
        finally:
            _TRUSTED.reset(token)
    finally:
        if upload is not None:
            with contextlib.suppress(OSError):
                os.remove(upload)


def is_large_work(header, settings: Mapping[str, Any]) -> bool:
    """Whether an image is large work for :data:`SLOTS`: more pixels x slices than the internal grid."""
    internal = int(settings.get("max_internal_size") or 0)
    return internal > 0 and header.slice_pixels * header.slices > internal * internal
