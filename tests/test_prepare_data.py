"""scripts.prepare_data end to end: real brain-growth, exact values, LoadImaged orientation, datalist API,
validation errors, atomic output, LIDC patient grouping, derived trimaps, summary."""

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.data import writer as writer_module
from scripts.data.datalist import load_datalist, split_folds
from scripts.data.errors import DataPreparationError, DatasetValidationError
from scripts.data.folds import lidc_patient
from scripts.data.phantom import make_phantom_case
from scripts.data.prepare import load_cases, main, prepare_dataset
from scripts.data.specs import DatasetSpec
from scripts.data.safe_pickle import safe_loads_pickle
from scripts.data.summary import dataset_statistics
from scripts.data.writer import read_png


def _load_monai(paths: dict) -> dict:
    from monai.transforms import LoadImaged

    loader = LoadImaged(list(paths), reader="PILReader", reverse_indexing=False, image_only=True,
                        ensure_channel_first=True)
    return {k: np.asarray(v) for k, v in loader(paths).items()}


# ----------------------------------------------------------------------------------------- real brain-growth
@pytest.fixture(scope="module")
def brain_growth_prepared(brain_growth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bg") / "brain-growth"
    prepare_dataset("brain-growth", out, source=brain_growth_dir / "brain_growth_alpha.zip",
                    trimaps=brain_growth_dir / "trimap_brain.zip", folds=4, seed=0)
    with zipfile.ZipFile(brain_growth_dir / "brain_growth_alpha.zip") as zf:
        source = safe_loads_pickle(zf.read("brain_growth_alpha.pkl"))
    with zipfile.ZipFile(brain_growth_dir / "trimap_brain.zip") as zf:
        trimaps = {Path(n).stem: np.array(Image.open(io.BytesIO(zf.read(n))))
                   for n in zf.namelist() if n.endswith(".png")}
    return out, source, trimaps


def test_brain_growth_cases_and_folds(brain_growth_prepared):
    out, source, _ = brain_growth_prepared
    dl = json.loads((out / "datalist.json").read_text())
    assert dl["name"] == "brain-growth" and dl["num_folds"] == 4 and dl["seed"] == 0
    assert dl["raters"] == 7 and dl["spatial_shape"] == [128, 128] and dl["channels"] == 1
    cases = [it["case"] for it in dl["training"]]
    assert len(cases) == 39 and len(set(cases)) == 39 and set(cases) == set(source)
    folds = [{it["case"] for it in dl["training"] if it["fold"] == k} for k in range(4)]
    assert sorted(len(f) for f in folds) == [9, 10, 10, 10]
    assert set().union(*folds) == set(source)
    assert sum(len(f) for f in folds) == 39  # disjoint


def test_brain_growth_values_equal_the_source(brain_growth_prepared):
    out, source, trimaps = brain_growth_prepared
    dl = load_datalist(out)
    for it in dl["training"]:
        rec = source[it["case"]]
        for key in ("image", "alpha"):
            got = read_png(it[key])
            assert got.dtype == np.uint8 and np.array_equal(got, rec[key]), (it["case"], key)
        assert len(it["masks"]) == 7
        for path, mask in zip(it["masks"], rec["masks"]):
            assert np.array_equal(read_png(path), mask), (it["case"], path)
        assert np.array_equal(read_png(it["trimap"]), trimaps[it["case"]]), it["case"]


def test_brain_growth_monai_loader_keeps_orientation(brain_growth_prepared):
    out, source, trimaps = brain_growth_prepared
    dl = load_datalist(out)
    for it in dl["training"][:3]:
        rec = source[it["case"]]
        assert not np.array_equal(rec["image"], rec["image"].T)  # a transpose would be detected
        got = _load_monai({"image": it["image"], "alpha": it["alpha"], "trimap": it["trimap"],
                           "m0": it["masks"][0], "m6": it["masks"][6]})
        assert got["image"].shape == (1, 128, 128)
        np.testing.assert_array_equal(got["image"][0], rec["image"])
        np.testing.assert_array_equal(got["alpha"][0], rec["alpha"])
        np.testing.assert_array_equal(got["m0"][0], rec["masks"][0])
        np.testing.assert_array_equal(got["m6"][0], rec["masks"][6])
        np.testing.assert_array_equal(got["trimap"][0], trimaps[it["case"]])


def test_brain_growth_summary(brain_growth_prepared):
    out, source, trimaps = brain_growth_prepared
    s = dataset_statistics(out)
    assert s["cases"] == 39 and sorted(s["fold_sizes"]) == [9, 10, 10, 10] and s["mask_values"] == [0, 1]
    assert s["image_range"] == (min(int(r["image"].min()) for r in source.values()),
                                max(int(r["image"].max()) for r in source.values()))
    unknown = np.mean([np.mean(t == 128) for t in trimaps.values()])
    assert s["unknown_fraction"] == pytest.approx(unknown)


# ------------------------------------------------------------------------------------------ synthetic sources
def _records(preset: str, keys: list, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    records, trimaps = {}, {}
    for key in keys:
        c = make_phantom_case(rng, preset)
        records[key] = {"series_uid": key, "image": c["image"], "alpha": c["alpha"], "masks": list(c["masks"])}
        trimaps[key] = c["trimap"]
    return records, trimaps


def _write_pickle(path: Path, records: dict) -> Path:
    path.write_bytes(pickle.dumps(records, protocol=4))
    return path


def _write_trimap_zip(path: Path, trimaps: dict) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for case, t in trimaps.items():
            buf = io.BytesIO()
            Image.fromarray(t, mode="L").save(buf, format="PNG")
            zf.writestr(f"trimap/{case}.png", buf.getvalue())
    return path


@pytest.fixture
def bg_like(tmp_path):
    """A small brain-growth-like source (7 raters, 128x128 grey) with trimaps."""
    records, trimaps = _records("brain-growth", [f"case{i:02d}" for i in range(1, 6)])
    return tmp_path, records, trimaps


def _prepare_bg(tmp_path, records, trimaps, **kw):
    src = _write_pickle(tmp_path / "src.pkl", records)
    tri = _write_trimap_zip(tmp_path / "tri.zip", trimaps)
    return prepare_dataset("brain-growth", kw.pop("out", tmp_path / "out"), source=src, trimaps=tri,
                           folds=kw.pop("folds", 2), **kw)


def _mutate(records, case, key, value):
    rec = dict(records[case])
    rec[key] = value
    return {**records, case: rec}


@pytest.mark.parametrize("change, message", [
    (lambda r: _mutate(r, "case02", "masks", r["case02"]["masks"][:6]), "expected 7 raters' masks, got 6"),
    (lambda r: _mutate(r, "case03", "masks", [m * 2 for m in r["case03"]["masks"]]), "mask 0 must be binary"),
    (lambda r: _mutate(r, "case04", "image", r["case04"]["image"].astype(np.float32)), "image must be uint8"),
    (lambda r: _mutate(r, "case05", "alpha", r["case05"]["alpha"][:100]), r"alpha must have shape \(128, 128\)"),
    (lambda r: _mutate(r, "case01", "image", np.zeros((128, 128, 3), np.uint8)), "image must have shape"),
    (lambda r: {k: v for k, v in r.items()} | {"case02": {"image": r["case02"]["image"]}}, "missing key"),
    (lambda r: _mutate(r, "case03", "masks", [m.astype(np.float32) for m in r["case03"]["masks"]]),
     "integer or bool"),
    (lambda r: {**r, "../evil": r["case01"]}, "name must be"),
])
def test_invalid_case_is_a_clear_error_and_leaves_nothing(bg_like, change, message):
    tmp_path, records, trimaps = bg_like
    with pytest.raises(DatasetValidationError, match=message) as err:
        _prepare_bg(tmp_path, change(records), {**trimaps, "../evil": trimaps["case01"]})
    assert "case" in str(err.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_trimap_missing_or_wrong_size(bg_like):
    tmp_path, records, trimaps = bg_like
    with pytest.raises(DatasetValidationError, match="case 'case03': no trimap PNG"):
        _prepare_bg(tmp_path, records, {k: v for k, v in trimaps.items() if k != "case03"})
    with pytest.raises(DatasetValidationError, match=r"case 'case02': trimap must have shape"):
        _prepare_bg(tmp_path, records, {**trimaps, "case02": trimaps["case02"][:64, :64]})
    assert not (tmp_path / "out").exists()
    # a dataset whose trimaps are required but not given (and without a published default)
    spec = DatasetSpec("toy", (128, 128), 1, 7, trimaps_required=True)
    with pytest.raises(DataPreparationError, match="--trimaps is required for toy"):
        load_cases(spec, _write_pickle(tmp_path / "s.pkl", records), None, tmp_path / "dl")


def test_synthetic_values_exact_and_derived_nothing(bg_like):
    tmp_path, records, trimaps = bg_like
    out = _prepare_bg(tmp_path, records, trimaps, seed=3)
    dl = load_datalist(out)
    assert [it["case"] for it in dl["training"]] == sorted(records)
    for it in dl["training"]:
        assert Path(it["image"]).is_absolute()
        assert np.array_equal(read_png(it["image"]), records[it["case"]]["image"])
        assert np.array_equal(read_png(it["trimap"]), trimaps[it["case"]])


def test_num_cases_keeps_the_first_cases(bg_like):
    tmp_path, records, trimaps = bg_like
    out = _prepare_bg(tmp_path, records, trimaps, num_cases=3)
    assert [it["case"] for it in load_datalist(out)["training"]] == ["case01", "case02", "case03"]


# --------------------------------------------------------------------------------------------- atomic output
def test_failure_midway_leaves_no_dataset(bg_like, monkeypatch):
    tmp_path, records, trimaps = bg_like
    calls = {"n": 0}
    real = writer_module.write_png

    def flaky(path, array):
        calls["n"] += 1
        if calls["n"] == 20:
            raise OSError("disk full (simulated)")
        real(path, array)

    monkeypatch.setattr(writer_module, "write_png", flaky)
    with pytest.raises(OSError, match="simulated"):
        _prepare_bg(tmp_path, records, trimaps)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_existing_output_is_protected(bg_like, monkeypatch):
    tmp_path, records, trimaps = bg_like
    out = _prepare_bg(tmp_path, records, trimaps, seed=0)
    before = (out / "datalist.json").read_bytes()
    with pytest.raises(DataPreparationError, match="--overwrite"):
        _prepare_bg(tmp_path, records, trimaps, seed=1)
    # a failing overwrite keeps the old dataset intact
    monkeypatch.setattr(writer_module, "write_png", lambda p, a: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError, match="boom"):
        _prepare_bg(tmp_path, records, trimaps, seed=1, overwrite=True)
    assert (out / "datalist.json").read_bytes() == before and load_datalist(out)
    monkeypatch.undo()
    # a successful overwrite replaces it
    _prepare_bg(tmp_path, records, trimaps, seed=1, overwrite=True)
    assert json.loads((out / "datalist.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # a non-empty folder that is not a prepared dataset is never replaced
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(DataPreparationError, match="not a prepared dataset"):
        _prepare_bg(tmp_path, records, trimaps, out=other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    # an empty folder is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_datalist(_prepare_bg(tmp_path, records, trimaps, out=empty))["name"] == "brain-growth"


# ------------------------------------------------------------------------------------------ LIDC and ISIC
def test_lidc_folds_grouped_by_patient_and_trimaps_derived(tmp_path):
    keys = [f"LIDC-IDRI-{p:04d}_slice{s}" for p, n in enumerate([3, 1, 2, 2, 1, 4, 1, 2]) for s in range(n)]
    records, _ = _records("lidc", keys, seed=4)
    src = _write_pickle(tmp_path / "lidc.pkl", records)
    out = prepare_dataset("lidc", tmp_path / "lidc", source=src, folds=4, seed=2)
    dl = load_datalist(out)
    assert dl["raters"] == 4 and "derived" in dl["trimaps"]
    fold_of = {it["case"]: it["fold"] for it in dl["training"]}
    by_patient = {}
    for case, fold in fold_of.items():
        by_patient.setdefault(lidc_patient(case), set()).add(fold)
    assert all(len(f) == 1 for f in by_patient.values())  # every patient in one fold
    sizes = sorted(list(fold_of.values()).count(k) for k in range(4))
    assert sizes == [4, 4, 4, 4]  # 16 slices, groups 4,3,2,2,2,1,1,1: greedy reaches a perfect balance
    for it in dl["training"]:
        trimap = read_png(it["trimap"])
        alpha = records[it["case"]]["alpha"]
        masks = np.stack(records[it["case"]]["masks"]).astype(bool)
        assert trimap[(alpha > 0) & (alpha < 255)].min() == 128
        assert (trimap[masks.any(0) & ~masks.all(0)] == 128).all()
        assert set(np.unique(trimap)) <= {0, 128, 255}


def test_lidc_bad_key_is_refused(tmp_path):
    records, _ = _records("lidc", ["LIDC-0001_slice1", "LIDC-0002_slice1", "noslice"], seed=4)
    with pytest.raises(DatasetValidationError, match="case 'noslice'.*<patient>_slice<N>"):
        prepare_dataset("lidc", tmp_path / "o", source=_write_pickle(tmp_path / "l.pkl", records), folds=2)


def test_isic_rgb_preserved_and_loaded_channel_first(tmp_path):
    records, trimaps = _records("isic", ["ISIC_0000001", "ISIC_0000002"], seed=5)
    src = _write_pickle(tmp_path / "isic.pkl", records)
    tri = _write_trimap_zip(tmp_path / "tri.zip", trimaps)
    out = prepare_dataset("isic", tmp_path / "isic", source=src, trimaps=tri, folds=2)
    dl = load_datalist(out)
    assert dl["channels"] == 3 and dl["spatial_shape"] == [256, 256]
    it = dl["training"][0]
    rgb = records[it["case"]]["image"]
    assert np.array_equal(read_png(it["image"]), rgb)
    got = _load_monai({"image": it["image"], "trimap": it["trimap"]})
    assert got["image"].shape == (3, 256, 256)
    np.testing.assert_array_equal(np.moveaxis(got["image"], 0, -1), rgb)
    np.testing.assert_array_equal(got["trimap"][0], trimaps[it["case"]])


# ------------------------------------------------------------------------------------------ datalist API, CLI
def test_split_folds_and_datalist_errors(tmp_path):
    out = prepare_dataset("phantom", tmp_path / "ph", num_cases=9, folds=3, seed=0, preset="lidc")
    dl = load_datalist(out)
    seen = []
    for k in range(3):
        train, test = split_folds(dl, k)
        assert len(train) + len(test) == 9 and len(test) == 3
        assert {it["fold"] for it in test} == {k} and k not in {it["fold"] for it in train}
        seen += [it["case"] for it in test]
    assert sorted(seen) == sorted(it["case"] for it in dl["training"])
    with pytest.raises(ValueError, match="test_fold"):
        split_folds(dl, 3)
    (out / "masks" / "case002_r1.png").unlink()
    with pytest.raises(DatasetValidationError, match="case002.*missing"):
        load_datalist(out)
    with pytest.raises(DatasetValidationError, match="not found"):
        load_datalist(tmp_path / "nothing")


def test_cli_prints_summary(tmp_path, capsys):
    rc = main(["--dataset", "phantom", "--preset", "brain-growth", "--num_cases", "6", "--folds", "4",
               "--seed", "3", "--out", str(tmp_path / "ph")])
    text = capsys.readouterr().out
    assert rc == 0
    for expected in ("cases          6", "folds          4: sizes [2, 2, 1, 1]", "(128, 128)", "raters         7",
                     "alpha range    0 .. 255", "trimap unknown"):
        assert expected in text
    rc = main(["--dataset", "phantom", "--num_cases", "6", "--out", str(tmp_path / "ph")])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    rc = main(["--dataset", "phantom", "--num-cases", "3", "--folds", "4", "--out", str(tmp_path / "few")])  # old spelling
    assert rc == 2 and "4 folds need at least 4 cases" in capsys.readouterr().err
    assert not (tmp_path / "few").exists()


# ------------------------------------------------------------------------------ streaming, stale temporaries
_PEAK_RSS = r"""
import resource, sys
from scripts.data.prepare import prepare_dataset
prepare_dataset("phantom", sys.argv[1], num_cases=int(sys.argv[2]), folds=4, seed=0, preset="brain-growth")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB
"""


def test_peak_memory_does_not_grow_with_the_number_of_cases(tmp_path, bundle_root):
    import subprocess
    import sys

    peak = {}
    for n in (40, 240):
        proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(tmp_path / f"ph{n}"), str(n)], cwd=bundle_root,
                              capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                                "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        peak[n] = int(proc.stdout.strip().splitlines()[-1]) / 1024  # MiB
        assert len(load_datalist(tmp_path / f"ph{n}")["training"]) == n
    print(f"peak RSS: 40 cases {peak[40]:.1f} MiB, 240 cases {peak[240]:.1f} MiB")
    # 200 more cases held in memory would add about 35 MiB (160 KiB of arrays per case, plus their validation)
    assert peak[240] - peak[40] < 12, peak


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(tmp_path, dead_pid):
    import os
    import time

    out = prepare_dataset("phantom", tmp_path / "ph", num_cases=4, folds=2, seed=0)
    before = (out / "datalist.json").read_bytes()
    # what a run killed at various moments leaves next to --out
    stale = [tmp_path / f".ph.tmp-{dead_pid}-k1ll3d", tmp_path / f".ph.download-{dead_pid}-abc_12",
             tmp_path / ".ph.tmp-oldname1"]  # no pid: a run of an earlier version
    for folder in stale:
        (folder / "images").mkdir(parents=True)
        (folder / "images" / "case001.png").write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale[2], (old, old))
    live = tmp_path / f".ph.tmp-{os.getppid()}-running"  # a concurrent run (its process is alive): kept
    live.mkdir()
    other = tmp_path / ".unrelated.tmp-123-x"
    other.mkdir()
    prepare_dataset("phantom", out, num_cases=4, folds=2, seed=0, overwrite=True)
    assert (out / "datalist.json").read_bytes() == before and len(load_datalist(out)["training"]) == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted([live.name, other.name])


def test_killed_between_the_two_renames_restores_the_old_dataset(tmp_path, dead_pid):
    out = prepare_dataset("phantom", tmp_path / "ph", num_cases=4, folds=2, seed=0)
    before = (out / "datalist.json").read_bytes()
    # --overwrite moved the old dataset aside and was killed before the new one was renamed into place
    os_rename = __import__("os").rename
    os_rename(out, tmp_path / f".ph.old-{dead_pid}-x1")
    new_tmp = tmp_path / f".ph.tmp-{dead_pid}-x2"
    new_tmp.mkdir()
    with pytest.raises(DataPreparationError, match="--overwrite"):  # the old dataset is back, and protected
        prepare_dataset("phantom", out, num_cases=4, folds=2, seed=1)
    assert (out / "datalist.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------------------ full or unwritable output
def test_full_disk_is_one_line_naming_the_folder_and_keeps_the_old_dataset(bg_like, monkeypatch, capsys):
    import errno

    tmp_path, records, trimaps = bg_like
    out = _prepare_bg(tmp_path, records, trimaps, seed=0)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = {"n": 0}
    real = writer_module.write_png

    def full(path, array):
        calls["n"] += 1
        if calls["n"] == 15:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, array)

    monkeypatch.setattr(writer_module, "write_png", full)
    with pytest.raises(DataPreparationError, match=rf"^{tmp_path}: no space left on device while writing the dataset"):
        _prepare_bg(tmp_path, records, trimaps, seed=1, overwrite=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # the command line: one line, exit 2, old dataset intact
    calls["n"] = 0
    rc = main(["--dataset", "phantom", "--num_cases", "4", "--folds", "2", "--out", str(out), "--overwrite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {tmp_path}: no space left on device"), err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_unwritable_output_folder_is_one_line(tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)  # as a folder without write permission (tests run as root)
    rc = main(["--dataset", "phantom", "--num_cases", "4", "--folds", "2", "--out", str(tmp_path / "ph")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: {tmp_path}: permission denied while writing the dataset ph; free space or "
                               "choose another --out (nothing already there was changed)"], err


# ------------------------------------------------------------------------------ one-line CLI errors
def _cli_error(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    return err[0]


def test_cli_user_errors_are_one_line_with_exit_2(bg_like, capsys):
    tmp_path, records, trimaps = bg_like
    src = _write_pickle(tmp_path / "src.pkl", records)
    tri = _write_trimap_zip(tmp_path / "tri.zip", trimaps)
    bg = ["--dataset", "brain-growth", "--trimaps", str(tri), "--out", str(tmp_path / "o")]
    assert "--folds 1: cross-validation needs at least 2 folds" in _cli_error(
        capsys, ["--dataset", "phantom", "--num_cases", "4", "--folds", "1", "--out", str(tmp_path / "o")])
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    line = _cli_error(capsys, [*bg, "--source", str(truncated)])
    assert str(truncated) in line and "not a valid pickle" in line
    zipped = tmp_path / "src.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(src, "src.pkl")
    cut = tmp_path / "cut.zip"
    cut.write_bytes(zipped.read_bytes()[:-30])
    assert str(cut) in _cli_error(capsys, [*bg, "--source", str(cut)])
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    assert str(empty) in _cli_error(capsys, [*bg, "--source", str(empty)])
    assert "source not found" in _cli_error(capsys, [*bg, "--source", str(tmp_path / "missing.pkl")])
    assert not (tmp_path / "o").exists()


def test_a_zip_bomb_is_refused_in_bounded_memory(tmp_path):
    """A member whose data expands far past the limit (its header declaring the limit or lying) is refused
    while streaming; memory stays near the limit, not the member's size."""
    import resource
    import struct
    import zipfile

    from scripts.data.errors import DatasetSourceError
    from scripts.data.sources import read_pickle_source, read_zip_member

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("data.pkl", "w") as member:
            block = b"\0" * (1 << 20)
            for _ in range(256):  # 256 MB of zeros: ~250 KB compressed
                member.write(block)
    with pytest.raises(DatasetSourceError, match=r"bomb.zip: member 'data.pkl' .*(expands|declares)"):
        read_pickle_source(bomb)
    # the same member with a lying header (declared 1 KB): zipfile stops at the declared size, the CRC fails
    raw = bytearray(bomb.read_bytes())
    with zipfile.ZipFile(bomb) as zf:
        info = zf.getinfo("data.pkl")
    for offset in (info.header_offset, raw.rfind(b"PK\x01\x02")):
        signature = bytes(raw[offset:offset + 4])
        field = 22 if signature == b"PK\x03\x04" else 24  # uncompressed size in the local / central header
        if struct.unpack_from("<I", raw, offset + field)[0] != 0xFFFFFFFF:
            struct.pack_into("<I", raw, offset + field, 1024)
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bytes(raw))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with zipfile.ZipFile(liar) as zf, pytest.raises(DatasetSourceError, match="decompress|declares|expands|cannot be read"):
        read_zip_member(zf, liar, "data.pkl", max_bytes=8 << 20, max_ratio=1e9)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 64, f"peak RSS grew {grown_mb:.0f} MB"
