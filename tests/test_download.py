"""Download path (MONAI download_url with file:// addresses), pinned sha256, truncated / corrupt archives."""

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scripts.data.errors import DatasetSourceError
from scripts.data.phantom import make_phantom_case
from scripts.data.prepare import main, prepare_dataset
from scripts.digest import sha256_file
from scripts.data.sources import fetch_source, is_url, read_pickle_source, read_trimap_source
from scripts.data.specs import get_spec


def _records(n: int = 3) -> dict:
    rng = np.random.default_rng(1)
    out = {}
    for i in range(n):
        case = make_phantom_case(rng, "lidc")
        out[f"P{i}_slice1"] = {"series_uid": f"P{i}", "image": case["image"], "alpha": case["alpha"],
                               "masks": case["masks"]}
    return out


def _pickle_zip(path: Path, records: dict, member: str = "data.pkl") -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, pickle.dumps(records, protocol=4))
    return path


def test_is_url():
    assert is_url("file:///tmp/x.zip") and is_url("https://example.org/a.zip")
    assert not is_url("/tmp/x.zip") and not is_url("relative/x.pkl") and not is_url("C:/data/x.pkl")


def test_file_url_download_with_hash(tmp_path):
    src = _pickle_zip(tmp_path / "src.zip", _records())
    got = fetch_source(src.as_uri(), tmp_path / "dl", sha256=sha256_file(src))
    assert got.parent == tmp_path / "dl" and got.read_bytes() == src.read_bytes()
    records = read_pickle_source(got)
    assert sorted(records) == ["P0_slice1", "P1_slice1", "P2_slice1"]


def test_hash_mismatch_is_refused(tmp_path):
    src = _pickle_zip(tmp_path / "src.zip", _records())
    with pytest.raises(DatasetSourceError, match="sha256 mismatch"):
        fetch_source(src.as_uri(), tmp_path / "dl", sha256="0" * 64)
    assert not (tmp_path / "dl" / "src.zip").exists()
    with pytest.raises(DatasetSourceError, match="sha256 mismatch"):
        fetch_source(src, tmp_path / "dl", sha256="0" * 64)  # a local path with a pinned hash is checked too


def test_url_without_hash_is_refused(tmp_path):
    src = _pickle_zip(tmp_path / "src.zip", _records())
    with pytest.raises(DatasetSourceError, match="pinned sha256"):
        fetch_source(src.as_uri(), tmp_path / "dl")


def test_missing_sources(tmp_path):
    with pytest.raises(DatasetSourceError, match="not found"):
        fetch_source(tmp_path / "nope.zip", tmp_path)
    with pytest.raises(DatasetSourceError, match="download failed"):
        fetch_source((tmp_path / "nope.zip").as_uri(), tmp_path / "dl", sha256="0" * 64)


def test_truncated_zip_is_refused(tmp_path):
    src = _pickle_zip(tmp_path / "src.zip", _records())
    data = src.read_bytes()
    for cut in (len(data) // 3, len(data) - 10):
        bad = tmp_path / f"cut{cut}.zip"
        bad.write_bytes(data[:cut])
        with pytest.raises(DatasetSourceError, match="truncated or corrupt"):
            read_pickle_source(bad)
        with pytest.raises(DatasetSourceError, match="truncated or corrupt"):
            read_trimap_source(bad)


def test_corrupt_member_is_refused(tmp_path):
    src = _pickle_zip(tmp_path / "src.zip", _records())
    data = bytearray(src.read_bytes())
    data[200:260] = bytes(60)  # damage the compressed pickle, keep the central directory
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(DatasetSourceError, match="cannot be read"):
        read_pickle_source(bad)


def test_zip_must_hold_exactly_one_pickle(tmp_path):
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.pkl", pickle.dumps({}))
        zf.writestr("b.pkl", pickle.dumps({}))
    with pytest.raises(DatasetSourceError, match="exactly one .pkl"):
        read_pickle_source(path)
    empty = tmp_path / "none.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(DatasetSourceError, match="exactly one .pkl"):
        read_pickle_source(empty)


def test_plain_pkl_and_non_dict(tmp_path):
    p = tmp_path / "d.pkl"
    p.write_bytes(pickle.dumps(_records(2)))
    assert len(read_pickle_source(p)) == 2
    p.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DatasetSourceError, match="expected a dict"):
        read_pickle_source(p)


def test_prepare_from_file_url_and_cli(tmp_path, capsys):
    src = _pickle_zip(tmp_path / "lidc.zip", _records(4))
    digest = sha256_file(src)
    out = prepare_dataset("lidc", tmp_path / "out", source=src.as_uri(), source_sha256=digest, folds=2, seed=0)
    dl = json.loads((out / "datalist.json").read_text())
    assert dl["source"] == src.as_uri() and dl["source_sha256"] == digest and len(dl["training"]) == 4
    # the CLI: a wrong hash is an error (exit 2, one line), nothing appears at --out
    rc = main(["--dataset", "lidc", "--source", src.as_uri(), "--source-sha256", "f" * 64,
               "--out", str(tmp_path / "cli"), "--folds", "2"])
    assert rc == 2 and "sha256 mismatch" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left
    rc = main(["--dataset", "lidc", "--source", src.as_uri(), "--source_sha256", digest,
               "--out", str(tmp_path / "cli"), "--folds", "2"])
    assert rc == 0 and "cases          4" in capsys.readouterr().out


def test_brain_growth_pins_match_shared_files(brain_growth_dir):
    spec = get_spec("brain-growth")
    assert spec.source.url.endswith("/brain_growth_alpha.zip") and spec.trimaps.url.endswith("/trimap_brain.zip")
    assert sha256_file(brain_growth_dir / "brain_growth_alpha.zip") == spec.source.sha256
    assert sha256_file(brain_growth_dir / "trimap_brain.zip") == spec.trimaps.sha256


def test_brain_growth_download_path_with_pinned_hashes(brain_growth_dir, tmp_path):
    spec = get_spec("brain-growth")
    out = prepare_dataset("brain-growth", tmp_path / "bg", folds=4, seed=0, num_cases=5,
                          source=(brain_growth_dir / "brain_growth_alpha.zip").as_uri(),
                          source_sha256=spec.source.sha256,
                          trimaps=(brain_growth_dir / "trimap_brain.zip").as_uri(),
                          trimaps_sha256=spec.trimaps.sha256)
    dl = json.loads((out / "datalist.json").read_text())
    assert [it["case"] for it in dl["training"]] == ["case01", "case02", "case03", "case04", "case05"]
    assert dl["source_sha256"] == spec.source.sha256 and dl["trimaps_sha256"] == spec.trimaps.sha256


def test_trimap_source_must_be_grey_pngs(tmp_path):
    import io

    from PIL import Image

    folder = tmp_path / "tri"
    folder.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(folder / "a.png")
    assert read_trimap_source(folder)["a"].shape == (4, 4)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8), mode="RGB").save(folder / "b.png")
    with pytest.raises(DatasetSourceError, match="b.png: trimap must be an 8-bit grey PNG"):
        read_trimap_source(folder)
    path = tmp_path / "t.zip"
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(buf, format="PNG")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("trimap/c1.png", buf.getvalue())
        zf.writestr("other/c1.png", buf.getvalue())
        zf.writestr("__MACOSX/trimap/._c2.png", b"junk")
    with pytest.raises(DatasetSourceError, match="two trimaps for case 'c1'"):
        read_trimap_source(path)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("trimap/c1.png", b"not a png")
    with pytest.raises(DatasetSourceError, match="cannot decode"):
        read_trimap_source(path)
