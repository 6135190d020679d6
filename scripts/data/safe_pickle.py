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

import _compat_pickle
import importlib
import io
import pickle
from os import PathLike
from typing import IO, Any

from scripts.data.errors import UnsafePickleError

__all__ = ["ALLOWED_GLOBALS", "RestrictedUnpickler", "safe_load_pickle", "safe_loads_pickle"]

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


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals in ``allowed`` and refuses all others.

    Args:
        file: a binary file object positioned at the pickle.
        allowed: the admitted ``(module, name)`` pairs; defaults to :data:`ALLOWED_GLOBALS`.
        source: a name for the pickle used in error messages (e.g. its path).

    Example:
        >>> import io, pickle, numpy as np
        >>> blob = pickle.dumps({"x": np.zeros(3, np.uint8)})
        >>> RestrictedUnpickler(io.BytesIO(blob)).load()["x"].tolist()
        [0, 0, 0]
    """

    def __init__(self, file: IO[bytes], allowed: frozenset[tuple[str, str]] = ALLOWED_GLOBALS,
                 source: str = "<pickle>") -> None:
        super().__init__(file)
        self.allowed = allowed
        self.source = source

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
    except pickle.UnpicklingError:
        raise
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as e:
        raise pickle.UnpicklingError(f"{source}: not a valid pickle ({type(e).__name__}: {e})") from e


def safe_load_pickle(path: str | PathLike) -> Any:
    """Unpickle the file at ``path`` with :class:`RestrictedUnpickler` (see :func:`safe_loads_pickle`)."""
    with open(path, "rb") as f:
        return safe_loads_pickle(f.read(), source=str(path))
