"""What a request may name and which files the app reads; where the server may run.

MONAI Label 0.8.5 trusts the ids, tags and file names of requests: ``LocalDatastore`` joins them
into paths unchecked, and ``MONAILabelApp.infer`` runs on any existing path it is given. The checks
here are the app's answers to that (docs/monailabel.md, "Security"):

- :func:`check_name`: ids, tags and session ids are plain names (:data:`PLAIN_NAME`, no ``..``),
  checked as received, so no encoding (percent, double percent, backslash, NUL, non-ASCII
  look-alikes) can turn them into a path;
- :func:`upload_suffix` / :func:`check_image_file`: an uploaded image or label has a suffix the app
  reads (``scripts.image_formats.APP_IMAGE_SUFFIXES``, lower case) and decodes as that format;
- :func:`is_within`: whether a path resolves inside a folder;
- :func:`check_studies_location`, :func:`check_bind_host`: refuse to start with the studies folder
  inside the bundle (or the other way round), or bound to a non-loopback address without
  authentication.

Example:
    >>> is_plain_name("case_001.v2"), is_plain_name("../configs/train"), is_plain_name("%2e%2e")
    (True, False, False)
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
from typing import Any, Iterable, Optional, Union

from scripts.image_formats import APP_IMAGE_SUFFIXES, NIFTI_SUFFIXES, longest_first

from .errors import (
    ImageTooLargeError,
    InvalidRequestError,
    MattingAppError,
    StudyImageNotFoundError,
    UnsupportedStudyImageError,
)

__all__ = [
    "PLAIN_NAME",
    "APP_SUFFIXES_LONGEST_FIRST",
    "is_plain_name",
    "shown",
    "check_name",
    "unknown_image",
    "upload_suffix",
    "check_study_image",
    "check_image_file",
    "is_within",
    "check_studies_location",
    "bind_host",
    "check_bind_host",
]

logger = logging.getLogger(__name__)

#: an id, tag or session id: ASCII letters, digits, ``.``, ``_``, ``-``; starts with a letter or digit
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: suffixes of the files the app reads (longest first, so ``.nii.gz`` wins over ``.nii``)
APP_SUFFIXES_LONGEST_FIRST = longest_first(APP_IMAGE_SUFFIXES)


def is_plain_name(value: Any) -> bool:
    """Whether ``value`` is a plain name (:data:`PLAIN_NAME`, no ``..``): never a path, in any encoding."""
    return isinstance(value, str) and PLAIN_NAME.fullmatch(value) is not None and ".." not in value


def shown(value: Any) -> str:
    """``value`` as text for a message: quoted, at most 128 characters."""
    return repr(str(value)[:128])


def check_name(value: Any, what: str) -> str:
    """``value`` if it is a plain name, else :class:`InvalidRequestError` (400) naming ``what``."""
    if not is_plain_name(value):
        raise InvalidRequestError(
            f"{what} {shown(value)} is not a plain name: use 1-128 ASCII letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'")
    return value


def unknown_image(image_id: Any) -> StudyImageNotFoundError:
    """The one answer to an image id the datastore does not hold (also for paths and malformed ids)."""
    return StudyImageNotFoundError(
        f"image {shown(image_id)} is not in the datastore; GET /datastore/?output=all lists the image ids")


def upload_suffix(filename: Any, what: str = "upload") -> str:
    """The image suffix of an uploaded file name (:data:`APP_SUFFIXES_LONGEST_FIRST`), else a 415."""
    name = os.path.basename(str(filename or "")).replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in APP_SUFFIXES_LONGEST_FIRST:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise UnsupportedStudyImageError(
        f"{what} {shown(filename)}: only image files are accepted ({', '.join(APP_SUFFIXES_LONGEST_FIRST)}, lower case)")


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
    import io

    from monailabel.main import Main

    parser = Main().args_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
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
