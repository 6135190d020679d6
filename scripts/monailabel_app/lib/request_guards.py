"""Checks of the request options MONAI Label parses or acts on, before any app method runs.

:func:`install_request_guards` wraps the module-level functions of ``monailabel.endpoints.*``, which the
routes call by module-global name (:func:`guard_function`): ``params`` JSON (:func:`parse_json_object`),
infer uploads and sessions, training options and the training switch, model uploads. It also
serves ``POST /infer`` and ``POST /batch/infer`` from the thread pool through the inference slots
(``slots.SLOTS``), with a check of whether the client has gone (:func:`client_gone`). Refusals
become their HTTP answer (:func:`http_error`), naming no server file (:func:`redact_paths`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import logging
import math
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Dict, FrozenSet, Optional, Union

from . import slots
from .errors import InvalidRequestError, MattingAppError, StudyImageNotFoundError, UnsupportedStudyImageError
from .names import check_image_file, check_study_image, shown, unknown_image, upload_suffix

__all__ = [
    "client_gone",
    "trusted_inputs",
    "MAX_JSON_DEPTH",
    "parse_json_object",
    "finite_float",
    "redact_paths",
    "http_error",
    "guard_function",
    "install_request_guards",
    "BATCH_NEEDS_RUN_SYNC",
]

logger = logging.getLogger(__name__)


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
        raise InvalidRequestError(f"{what} must be a number, got {shown(value)}") from e
    if not math.isfinite(number) or not low <= number <= high:
        raise InvalidRequestError(f"{what} must be a finite number in [{low:g}, {high:g}], got {shown(value)}")
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



def guard_function(module, name: str, check: Callable[[Dict[str, Any]], None]) -> None:
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
            raise http_error(e) from e
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

    guard_function(ds_ep, "add_image", json_field("params"))
    guard_function(ds_ep, "save_label", json_field("params"))
    guard_function(ds_ep, "update_image_info", json_field("info"))
    guard_function(ds_ep, "update_label_info", json_field("info"))

    def check_train(a):
        app = app_instance()
        if "model" in a:
            app.check_train_request(a.get("model"), a.get("params") or {})
        else:  # POST /train/: {model: options}
            params = a.get("params") or {}
            for model in app.info()["trainers"]:
                app.check_train_request(model, params.get(model) or {})

    guard_function(train_ep, "run_model", check_train)
    guard_function(train_ep, "run", check_train)

    def check_model_change(a):
        app_instance().check_model_change(a.get("model"))

    guard_function(model_ep, "update_model", check_model_change)
    guard_function(model_ep, "delete_model", check_model_change)

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
                raise http_error(e) from e
            except InferenceCancelled as e:
                from fastapi import HTTPException

                slots.SLOTS.cancelled += 1
                logger.warning(f"inference cancelled, the client disconnected: {redact_paths(str(e))} "
                               f"(slot freed; {slots.SLOTS.cancelled} cancelled so far)")
                raise HTTPException(status_code=499, detail="cancelled: the client disconnected") from None

        run_inference.__medical_matting_guard__ = True
        infer_ep.run_inference = run_inference
    _run_inference_in_threads()


def _run_inference_in_threads() -> None:
    """Serve ``POST /infer/{model}`` and ``POST /batch/infer/{model}`` from the thread pool, not the event loop.

    MONAI Label 0.8.5 declares both routes ``async`` and runs the whole inference inside them
    (``/batch/infer?run_sync=true`` too), which blocks the event loop: while one image is processed
    no other request (not even ``/info/``) is answered. Each route is replaced by a plain function
    with the same parameters (and dependencies), which FastAPI runs in its thread pool;
    ``slots.SLOTS`` bounds how many inferences run at once.
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
                raise StudyImageNotFoundError(f"session {shown(session_id)} not found")
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
            with slots.SLOTS.slot(large=slots.is_large_work(header, settings)):
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
