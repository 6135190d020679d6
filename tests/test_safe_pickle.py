"""The restricted unpickler admits containers and numpy arrays and refuses (without running) anything else."""

import io
import os
import pickle
import subprocess
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
