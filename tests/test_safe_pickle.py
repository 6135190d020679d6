"""The restricted unpickler admits containers and numpy arrays and refuses (without running) anything else."""

import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scripts.data.errors import DataPreparationError, UnsafePickleError
from scripts.data.safe_pickle import RestrictedUnpickler, safe_load_pickle, safe_loads_pickle


class _TouchWithOpen:
    """Unpickling calls builtins.open(path, "w"), which creates the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _TouchWithSystem:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _TouchWithSubprocess:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (subprocess.call, (["touch", self.path],))


class _EvalTouch:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (eval, (f"open({self.path!r}, 'w')",))


@pytest.mark.parametrize("payload", [_TouchWithOpen, _TouchWithSystem, _TouchWithSubprocess, _EvalTouch])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_code_running_pickle_is_refused_and_does_not_run(tmp_path, payload, protocol):
    marker = tmp_path / "marker"
    # the payload sits inside an ordinary-looking dataset dict
    blob = pickle.dumps({"case01": {"image": np.zeros((2, 2), np.uint8), "evil": payload(marker)}}, protocol=protocol)
    path = tmp_path / "evil.pkl"
    path.write_bytes(blob)
    with pytest.raises(UnsafePickleError, match="refused to load global") as err:
        safe_load_pickle(path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    # sanity: the same bytes really would create the marker with a bare pickle.loads
    if payload is _TouchWithOpen:
        pickle.loads(blob)
        assert marker.exists()


def test_getattr_gadget_is_refused(tmp_path):
    # a classic bypass: builtins.getattr(builtins-module, "eval") -- getattr is not admitted
    blob = b"\x80\x04cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR."
    with pytest.raises(UnsafePickleError, match="builtins.getattr"):
        safe_loads_pickle(blob)


def test_unsafe_error_is_a_value_error_and_unpickling_error():
    assert issubclass(UnsafePickleError, ValueError)
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)
    assert issubclass(UnsafePickleError, DataPreparationError)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_and_containers_round_trip(protocol):
    rng = np.random.default_rng(0)
    data = {
        "case01": {"series_uid": "case01", "image": rng.integers(0, 256, (8, 6), dtype=np.uint8),
                   "masks": [rng.integers(0, 2, (8, 6)).astype(np.uint8) for _ in range(3)],
                   "alpha": rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)},
        "other": (1, 2.5, True, None, b"raw", {1, 2}, frozenset({3}), np.float32(1.5), np.int64(7),
                  np.zeros((2, 2), np.float64), np.ones(3, bool), np.arange(4, dtype=np.int16)),
    }
    back = safe_loads_pickle(pickle.dumps(data, protocol=protocol))
    assert back["case01"]["series_uid"] == "case01"
    for key in ("image", "alpha"):
        assert back["case01"][key].dtype == data["case01"][key].dtype
        np.testing.assert_array_equal(back["case01"][key], data["case01"][key])
    for a, b in zip(back["case01"]["masks"], data["case01"]["masks"]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(back["other"], data["other"]):
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b and type(a) is type(b)


def test_allow_list_can_be_narrowed():
    blob = pickle.dumps(np.zeros(2, np.uint8))
    with pytest.raises(UnsafePickleError):
        RestrictedUnpickler(io.BytesIO(blob), allowed=frozenset()).load()


def test_garbage_is_an_unpickling_error():
    with pytest.raises(pickle.UnpicklingError):
        safe_loads_pickle(b"\x80\x04not a pickle at all")
    with pytest.raises(pickle.UnpicklingError):
        safe_loads_pickle(pickle.dumps({"a": 1})[:-3])  # truncated


def test_real_brain_growth_pickle_loads(brain_growth_dir, tmp_path):
    import zipfile

    with zipfile.ZipFile(brain_growth_dir / "brain_growth_alpha.zip") as zf:
        data = safe_loads_pickle(zf.read("brain_growth_alpha.pkl"))
    assert sorted(data) == [f"case{i:02d}" for i in range(1, 40)]
    assert data["case01"]["image"].dtype == np.uint8 and len(data["case01"]["masks"]) == 7
    assert Path(tmp_path).exists()


# ------------------------------------------------------------------------------ allocation bounds
def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _int(n: int) -> bytes:
    return f"I{n}\n".encode()


_GB = 1 << 30
_NDARRAY = _global("numpy", "ndarray")
_RECON = _global("numpy.core.multiarray", "_reconstruct")
#: crafted pickles that would allocate tens of GB (or more) if the named callable were simply called
HUGE_PICKLES = {
    "bytearray(50 GB)": b"\x80\x02" + _global("builtins", "bytearray") + b"(" + _int(50 * _GB) + b"tR.",
    "bytes(50 GB)": b"\x80\x02" + _global("builtins", "bytes") + b"(" + _int(50 * _GB) + b"tR.",
    "list(range(10**10))": b"\x80\x02" + _global("builtins", "list") + b"(" + _global("builtins", "range")
    + b"(" + _int(10**10) + b"tRtR.",
    "frozenset(range(10**10))": b"\x80\x02" + _global("builtins", "frozenset") + b"(" + _global("builtins", "range")
    + b"(" + _int(10**10) + b"tRtR.",
    "ndarray(shape=(10**6, 10**5), f8)": b"\x80\x02" + _NDARRAY + b"((" + _int(10**6) + _int(10**5) + b"tVf8\ntR.",
    "_reconstruct(ndarray, (10**11,), B)": b"\x80\x02" + _RECON + b"(" + _NDARRAY + b"(" + _int(10**11) + b"tVB\ntR.",
    # a small array whose BUILD state declares a huge shape (object dtype: numpy would allocate the pointers first)
    "object array state (10**10,)": b"\x80\x02" + _RECON + b"(" + _NDARRAY + b"(" + _int(0) + b"tVB\ntR"
    + b"(" + _int(1) + b"(" + _int(10**10) + b"t" + _global("numpy", "dtype") + b"(VO\n\x89\x88tR"
    + b"(" + _int(3) + b"V|\nNNN" + _int(-1) + _int(-1) + _int(63) + b"tb" + b"\x89]tb.",
    # a dtype rebuilt with a 2 GB element size, then 100 elements of it
    "dtype elsize 2**31-1": b"\x80\x02" + _RECON + b"(" + _NDARRAY + b"(" + _int(100) + b"t" + _global("numpy", "dtype")
    + b"(VV8\n\x89\x88tR" + b"(" + _int(3) + b"V|\nNNN" + _int(2**31 - 1) + _int(1) + _int(0) + b"tbtR.",
    # memo references: one 1 MB bytes object copied into a bytearray 2000 times (2 GB from a small file)
    "bytearray(memo) x 2000": b"\x80\x03B" + (1 << 20).to_bytes(4, "little") + b"\x00" * (1 << 20) + b"q\x00("
    + (_global("builtins", "bytearray") + b"(h\x00tR") * 2000 + b"l.",
    "str(container)": b"\x80\x02" + _global("builtins", "str") + b"(]tR.",
    "_codecs.encode(zlib)": b"\x80\x02" + _global("_codecs", "encode") + b"(Vx\nVzlib\ntR.",
}

_CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a regression fails here instead of eating the machine
from scripts.data.safe_pickle import safe_loads_pickle
results = {}
for name, hexblob in json.loads(sys.stdin.read()).items():
    t0 = time.perf_counter()
    try:
        safe_loads_pickle(bytes.fromhex(hexblob), source=name)
        outcome = "loaded"
    except BaseException as e:
        outcome = f"{type(e).__name__}: {e}"
    results[name] = [outcome, time.perf_counter() - t0]
print(json.dumps(results))
"""


def test_crafted_pickles_that_would_allocate_tens_of_gb_are_refused_fast(bundle_root):
    payloads = {name: blob.hex() for name, blob in HUGE_PICKLES.items()}
    proc = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(payloads), capture_output=True, text=True,
                          cwd=bundle_root, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (outcome, seconds) in results.items():
        assert outcome.startswith(("UnsafePickleError", "UnpicklingError")), (name, outcome)
        assert seconds < 2.0, (name, seconds)
    allocating = [n for n in HUGE_PICKLES if n not in ("str(container)", "_codecs.encode(zlib)")]
    for name in allocating:
        outcome = results[name][0]
        assert ("refused to allocate" in outcome and "MAX_ALLOCATION_FACTOR" in outcome) or "carries" in outcome \
            or "without as many items" in outcome, (name, outcome)
    assert "scalar arguments only" in results["str(container)"][0]
    assert "latin1" in results["_codecs.encode(zlib)"][0]


def test_allocation_budget_scales_with_the_pickle_and_is_named():
    data = {"case01": {"image": np.zeros((64, 64), np.uint8)}}
    assert safe_loads_pickle(pickle.dumps(data, protocol=2))["case01"]["image"].shape == (64, 64)
    blob = pickle.dumps(data, protocol=4)
    with pytest.raises(UnsafePickleError, match=r"refused to allocate 4,096 bytes .*limit of 100 bytes"):
        RestrictedUnpickler(io.BytesIO(blob), max_bytes=100).load()
    # BUILD is admitted on arrays and dtypes only
    with pytest.raises(UnsafePickleError, match="BUILD is admitted on numpy arrays and dtypes only"):
        safe_loads_pickle(b"\x80\x02]}b.")
