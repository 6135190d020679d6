"""Restricted unpickler for the Medical Matting ``.pkl`` files.

The published datasets are pickles of plain containers (dict, list, str, ...) and numpy arrays. A
bare ``pickle.load`` would run any callable named in the file, so this module resolves globals
through an explicit allow-list and refuses every other name *before* it is imported or called.

Hand-written because neither MONAI nor numpy ships a restricted unpickler for numpy arrays
(``torch.load(weights_only=True)`` solves the same problem for torch files only).

Example:
    >>> from scripts.data.safe_pickle import safe_load_pickle
    >>> data = safe_load_pickle("brain_growth_alpha.pkl")  # doctest: +SKIP
    >>> data["case01"]["image"].shape  # doctest: +SKIP
    (128, 128)
"""

from __future__ import annotations

import _codecs
import _compat_pickle
import importlib
import io
import math
import pickle
import struct
from os import PathLike
from typing import IO, Any

import numpy as np

from scripts.data.errors import UnsafePickleError

__all__ = ["ALLOWED_GLOBALS", "MAX_ALLOCATION_FACTOR", "MIN_ALLOCATION_BUDGET", "RestrictedUnpickler",
           "safe_load_pickle", "safe_loads_pickle"]

#: a pickle may allocate at most this many times its own size (plus :data:`MIN_ALLOCATION_BUDGET`) in arrays,
#: bytes and containers: its arrays' data is in the file, so a legitimate pickle needs about 1 to 3 times
MAX_ALLOCATION_FACTOR = 8
#: allocation allowance of every pickle, whatever its size (bytes)
MIN_ALLOCATION_BUDGET = 64 << 20

#: ``(module, name)`` pairs the unpickler may resolve. Containers, scalars and the numpy array / dtype /
#: scalar reconstructors (under both the numpy 1.x ``numpy.core`` and the numpy 2.x ``numpy._core``
#: module names). ``_codecs.encode`` is what protocol-2 pickles use to rebuild ``bytes``; it only
#: converts data.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
                               "int", "float", "complex", "bool", "slice", "range")]
    + [("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype")]
    + [(f"numpy.{core}.multiarray", n) for core in ("core", "_core") for n in ("_reconstruct", "scalar")]
    + [(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")]
)

#: bytes charged per item of a list / tuple / set / dict (pointer plus a share of the object)
_ITEM_BYTES = 64
_SCALARS = (str, bytes, bytearray, int, float, complex, bool, type(None))
_LATIN1 = ("latin1", "iso88591", "l1")

# numpy 1.x <-> 2.x renamed numpy.core to numpy._core; try the other spelling when one is missing
_NUMPY_CORE_ALIASES = {"numpy.core.": "numpy._core.", "numpy._core.": "numpy.core."}


def _import_attribute(module: str, name: str) -> Any:
    candidates = [module]
    for prefix, other in _NUMPY_CORE_ALIASES.items():
        if module.startswith(prefix):
            candidates.append(other + module[len(prefix):])
    last_error: Exception | None = None
    for candidate in candidates:
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError) as e:
            last_error = e
    raise pickle.UnpicklingError(f"allowed global {module}.{name} cannot be resolved: {last_error}")


_RECONSTRUCT = _import_attribute("numpy.core.multiarray", "_reconstruct")
_SCALAR = _import_attribute("numpy.core.multiarray", "scalar")
_FROMBUFFER = _import_attribute("numpy.core.numeric", "_frombuffer")


def _count(value: Any) -> int:
    """Number of items of ``value`` (a huge ``range`` counts as too many rather than overflowing)."""
    if isinstance(value, range):
        return max(0, (value.stop - value.start + value.step - (1 if value.step > 0 else -1)) // value.step)
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    try:
        return len(value)
    except TypeError:
        return 1


def _array_bytes(shape: Any, dtype: Any, what: str, source: str) -> int:
    """``prod(shape) * itemsize`` computed with Python integers (no overflow), or an error for a bad shape."""
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not all(isinstance(n, (int, np.integer)) and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"{source}: {what}: bad array shape {shape!r}")
    itemsize = np.dtype(dtype).itemsize if not isinstance(dtype, np.dtype) else dtype.itemsize
    return math.prod(int(n) for n in shape) * max(int(itemsize), 1)


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler that resolves only the globals in ``allowed`` and bounds every allocation they make.

    Built on the pure-Python ``pickle._Unpickler`` so that every call of an admitted callable
    (``REDUCE``, ``NEWOBJ``, ``OBJ``/``INST``) and every ``BUILD`` passes through one check first:

    - only the admitted ``(module, name)`` globals resolve (:data:`ALLOWED_GLOBALS`); others raise
      :class:`UnsafePickleError` before they are imported;
    - the memory a call would allocate (an array's ``prod(shape) * itemsize``, ``bytearray(n)``,
      ``list(range(n))``, ...) is estimated *before* the call and added to a running total; when the
      total would exceed ``max_bytes`` (default ``MAX_ALLOCATION_FACTOR`` times the pickle's size plus
      ``MIN_ALLOCATION_BUDGET``: a legitimate pickle holds its arrays' bytes itself) the load stops with
      an :class:`UnsafePickleError` naming the limit. Memo references cannot multiply a copy unnoticed:
      every copy is counted;
    - ``BUILD`` is admitted on numpy arrays and dtypes only; an array's state must carry the data it
      declares (bytes of at least ``nbytes``, or a list of exactly ``prod(shape)`` objects);
    - scalar constructors take scalar arguments only (``str(x)`` of a container could be huge) and
      ``_codecs.encode`` only the ``latin1`` encoding pickles use.

    Args:
        file: a binary file object positioned at the pickle.
        allowed: the admitted ``(module, name)`` pairs; defaults to :data:`ALLOWED_GLOBALS`.
        source: a name for the pickle used in error messages (e.g. its path).
        max_bytes: the allocation budget in bytes; ``None``: from the size of ``file`` (see above).

    Example:
        >>> import io, pickle, numpy as np
        >>> blob = pickle.dumps({"x": np.zeros(3, np.uint8)})
        >>> RestrictedUnpickler(io.BytesIO(blob)).load()["x"].tolist()
        [0, 0, 0]
    """

    def __init__(self, file: IO[bytes], allowed: frozenset[tuple[str, str]] = ALLOWED_GLOBALS,
                 source: str = "<pickle>", max_bytes: int | None = None) -> None:
        super().__init__(file)
        self.allowed = allowed
        self.source = source
        if max_bytes is None:
            try:
                position = file.tell()
                size = file.seek(0, io.SEEK_END) - position
                file.seek(position)
            except (AttributeError, OSError, ValueError):
                size = 0
            max_bytes = MAX_ALLOCATION_FACTOR * size + MIN_ALLOCATION_BUDGET
        self.max_bytes = int(max_bytes)
        self.allocated = 0

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - documented in the class
        # Python 2 names (protocol <= 2, e.g. __builtin__.set) are mapped as pickle's own find_class does;
        # the mapped name must still be on the allow-list
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) not in self.allowed:
            raise UnsafePickleError(
                f"{self.source}: refused to load global '{module}.{name}': only builtin containers/scalars "
                "and numpy arrays are admitted (the pickle may try to run code)"
            )
        return _import_attribute(module, name)

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        raise UnsafePickleError(f"{self.source}: persistent ids are not admitted ({pid!r})")

    # ------------------------------------------------------------------ the allocation budget
    def _charge(self, nbytes: int, what: str) -> None:
        """Add ``nbytes`` to the running total, or refuse (before allocating) when it would exceed the budget."""
        if nbytes > self.max_bytes - self.allocated:
            raise UnsafePickleError(
                f"{self.source}: refused to allocate {nbytes:,} bytes for {what}: the pickle's allocations would "
                f"exceed its limit of {self.max_bytes:,} bytes (MAX_ALLOCATION_FACTOR={MAX_ALLOCATION_FACTOR} x "
                f"the pickle's size + MIN_ALLOCATION_BUDGET={MIN_ALLOCATION_BUDGET:,})"
            )
        self.allocated += nbytes

    def _call(self, func: Any, args: tuple, kwargs: dict | None = None) -> Any:
        """Check and charge one call of an admitted callable, then make it."""
        kwargs = kwargs or {}
        name = getattr(func, "__qualname__", repr(func))
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise pickle.UnpicklingError(f"{self.source}: bad arguments for {name}")
        if func is np.ndarray:
            shape = args[0] if args else kwargs.get("shape", ())
            dtype = args[1] if len(args) > 1 else kwargs.get("dtype", float)
            self._charge(_array_bytes(shape, dtype, name, self.source), f"numpy.ndarray of shape {shape!r}")
        elif func is _RECONSTRUCT:
            if len(args) != 3 or args[0] is not np.ndarray:
                raise UnsafePickleError(f"{self.source}: _reconstruct admits only numpy.ndarray, got {args[:1]!r}")
            self._charge(_array_bytes(args[1], args[2], name, self.source), f"numpy.ndarray of shape {args[1]!r}")
        elif func is _SCALAR:
            if not args or not isinstance(args[0], np.dtype):
                raise pickle.UnpicklingError(f"{self.source}: numpy scalar needs a dtype")
            self._charge(args[0].itemsize, f"a numpy scalar of {args[0]}")
        elif func is _FROMBUFFER:
            pass  # a view of a buffer that is already there (the reshape checks the size)
        elif func is np.dtype:
            pass  # a dtype's size only matters where an array is made of it (checked there)
        elif func is _codecs.encode:
            text = args[0] if args else kwargs.get("obj")
            encoding = args[1] if len(args) > 1 else kwargs.get("encoding", "utf-8")
            if not isinstance(text, str) or str(encoding).lower().replace("-", "").replace("_", "") not in _LATIN1:
                raise UnsafePickleError(f"{self.source}: _codecs.encode is admitted for latin1 text only")
            self._charge(len(text), "_codecs.encode")
        elif func in (bytes, bytearray):
            value = args[0] if args else kwargs.get("source", b"")
            self._charge(value if isinstance(value, int) else _count(value) * (4 if isinstance(value, str) else 1),
                         f"{func.__name__}(...)")
        elif func in (list, tuple, set, frozenset, dict):
            if len(args) > 1:
                raise pickle.UnpicklingError(f"{self.source}: {func.__name__} takes at most one argument")
            self._charge(_ITEM_BYTES * (_count(args[0]) if args else 0) + _ITEM_BYTES * len(kwargs),
                         f"{func.__name__}(...)")
        elif func in (str, int, float, complex, bool, slice, range):
            values = (*args, *kwargs.values())
            if not all(isinstance(v, _SCALARS) for v in values):
                raise UnsafePickleError(f"{self.source}: {func.__name__}() is admitted with scalar arguments only")
            self._charge(sum(_count(v) for v in values if isinstance(v, (str, bytes, bytearray))) * 4,
                         f"{func.__name__}(...)")
        else:  # a narrower or wider allow-list given by the caller: no estimate, refuse what we cannot bound
            raise UnsafePickleError(f"{self.source}: no allocation bound is known for {name}")
        return func(*args, **kwargs)

    def load_reduce(self) -> None:  # noqa: D102
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self) -> None:  # noqa: D102
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    def load_newobj_ex(self) -> None:  # noqa: D102
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _new(self, cls: Any, args: tuple, kwargs: dict) -> Any:
        if not isinstance(cls, type) or cls in (np.ndarray, np.dtype):
            raise UnsafePickleError(f"{self.source}: NEWOBJ of {cls!r} is not admitted")
        return self._call(cls, tuple(args), dict(kwargs))

    def _instantiate(self, klass: Any, args: list) -> None:  # OBJ and INST (protocols 0 and 1)
        self.append(self._call(klass, tuple(args)))

    def load_build(self) -> None:  # noqa: D102
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.dtype):
            inst.__setstate__(state)
            return
        if not isinstance(inst, np.ndarray) or type(inst) is not np.ndarray:
            raise UnsafePickleError(f"{self.source}: BUILD is admitted on numpy arrays and dtypes only, "
                                    f"not on {type(inst).__name__}")
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError(f"{self.source}: bad numpy array state")
        shape, dtype, data = state[-4], state[-3], state[-1]
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError(f"{self.source}: bad numpy array state (dtype {dtype!r})")
        nbytes = _array_bytes(shape, dtype, "numpy array state", self.source)
        if dtype.hasobject:
            if not isinstance(data, list) or len(data) != math.prod(shape):
                raise pickle.UnpicklingError(f"{self.source}: numpy object array of shape {shape!r} without "
                                             "as many items")
        elif not isinstance(data, (bytes, bytearray, str)) or len(data) < nbytes:
            raise pickle.UnpicklingError(f"{self.source}: numpy array of shape {shape!r} and {dtype} declares "
                                         f"{nbytes:,} bytes but carries {_count(data):,}")
        self._charge(nbytes, f"numpy.ndarray of shape {shape!r}")
        inst.__setstate__(state)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build


def safe_loads_pickle(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`.

    Args:
        data: the pickle bytes.
        source: a name used in error messages.

    Raises:
        UnsafePickleError: the pickle names a global outside the allow-list.
        pickle.UnpicklingError: the bytes are not a valid pickle.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except UnsafePickleError:
        raise
    except pickle.UnpicklingError as e:  # pickle's own messages ("pickle exhausted ...") do not name the file
        if str(e).startswith(f"{source}:"):
            raise
        raise pickle.UnpicklingError(f"{source}: not a valid pickle ({e})") from e
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError, LookupError,
            struct.error) as e:
        raise pickle.UnpicklingError(f"{source}: not a valid pickle ({type(e).__name__}: {e})") from e


def safe_load_pickle(path: str | PathLike) -> Any:
    """Unpickle the file at ``path`` with :class:`RestrictedUnpickler` (see :func:`safe_loads_pickle`)."""
    with open(path, "rb") as f:
        return safe_loads_pickle(f.read(), source=str(path))
