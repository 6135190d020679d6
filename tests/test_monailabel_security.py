"""Security of the MONAI Label app (docs/monailabel.md, "Security"), against the real server.

Two servers for the module, started together, each on a COPY of the bundle in a temporary folder
(so a working exploit could only damage the copy) with its studies folder outside that copy:
``default`` as an operator starts it (training off) and ``training`` with
``--conf allow_training true``. The tests replay the reported exploit chain (datastore id
traversal planting ``configs/train.yaml`` -> training evaluating its ``$`` expressions) and its
variants, and check by hashing every file of the copy that nothing outside the datastore was
created or changed. Two more launches check that the server refuses to start with the studies
inside the bundle or bound to 0.0.0.0 without authentication. Plus unit tests of the id checks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tools.processes import stop_process
from conftest import TINY_APP_NETWORK, copy_bundle_code, free_port, wait_until_serving
import torch

pytest.importorskip("monailabel", reason="monailabel is not installed (pip install --no-deps -r requirements-nodeps.txt)")
requests = pytest.importorskip("requests")
from PIL import Image  # noqa: E402

TINY = TINY_APP_NETWORK
STARTUP_TIMEOUT_S = 180
#: folders of the bundle copy that the server itself writes (MONAI Label's app folders, caches, runs)
RUNTIME = ("scripts/monailabel_app/model", "scripts/monailabel_app/logs", "scripts/monailabel_app/bin", "runs")

pytestmark = pytest.mark.timeout(480)


# ------------------------------------------------------------------------------------- unit tests
GOOD_IDS = ["case001", "case_001.v2", "A", "0", "x-y_z.1", "a" * 128, "1.2.840.113619.2.55"]
BAD_IDS = [
    "", ".", "..", "../x", "..%2Fx", "%2e%2e%2f", "%252e%252e%252f", "a/b", "/etc/passwd", "..\\x", "a\\b",
    "x\x00", "x\n", "case\n", ".hidden", "-x", "_x", "a..b", "a" * 129, "\uff0e\uff0e\uff0fx", "ca\u0073e\u0301",
    "caſe", "C:", "x y", "~", "$x", "@x", "%x", None, 3, ["case"],
]


@pytest.mark.parametrize("value", GOOD_IDS)
def test_plain_names_are_accepted(value):
    from scripts.monailabel_app.lib.names import check_name, is_plain_name

    assert is_plain_name(value) and check_name(value, "image id") == value


@pytest.mark.parametrize("value", BAD_IDS)
def test_anything_else_is_refused(value):
    from scripts.monailabel_app.lib.errors import InvalidRequestError
    from scripts.monailabel_app.lib.names import check_name, is_plain_name

    assert not is_plain_name(value)
    with pytest.raises(InvalidRequestError) as e:
        check_name(value, "image id")
    assert e.value.status_code == 400 and "image id" in str(e.value)


def test_upload_suffixes_bind_hosts_and_json_options():
    from scripts.monailabel_app.lib.errors import InvalidRequestError, UnsupportedStudyImageError
    from scripts.monailabel_app.lib.names import bind_host, check_bind_host, upload_suffix
    from scripts.monailabel_app.lib.request_guards import parse_json_object

    assert upload_suffix("a.nii.gz") == ".nii.gz" and upload_suffix("dir/a.b.png") == ".png"
    for name in ("x.yaml", "x.json", "x.py", "x.png.yaml", ".png", "x.PNG", "x", "", None, "x.nii.gz.py"):
        with pytest.raises(UnsupportedStudyImageError):
            upload_suffix(name)
    assert bind_host(["monailabel", "start_server", "--app", "a"]) == "0.0.0.0"
    assert bind_host(["x", "start_server", "-i", "127.0.0.1"]) == "127.0.0.1"
    assert bind_host(["x", "start_server", "--host=::1"]) == "::1"
    assert bind_host(["-m", "train"]) is None  # MONAI Label's background task processes
    # every spelling MONAI Label's own parser accepts gives the address it binds (the last one wins)
    for argv in (["--host", "127.0.0.1", "-i0.0.0.0"], ["--ho", "0.0.0.0"], ["--hos=0.0.0.0"],
                 ["-i", "127.0.0.1", "--host=0.0.0.0"], ["--conf", "host", "127.0.0.1"]):
        assert bind_host(["monailabel", "start_server", "--app", "a", *argv]) == "0.0.0.0", argv
    assert bind_host(["monailabel", "start_server", "--hos", "0.0.0.0", "-i", "::1"]) == "::1"
    with pytest.raises(RuntimeError, match="bind address is unknown"):
        bind_host(["monailabel", "start_server", "--port", "not-a-number"])
    for host in ("127.0.0.1", "::1", "localhost", None):
        check_bind_host(host, auth_enabled=False, allow_remote=False)
    check_bind_host("0.0.0.0", auth_enabled=True, allow_remote=False)
    check_bind_host("0.0.0.0", auth_enabled=False, allow_remote=True)  # warns loudly
    with pytest.raises(RuntimeError, match="without authentication"):
        check_bind_host("0.0.0.0", auth_enabled=False, allow_remote=False)
    assert parse_json_object('{"a": 1}', "params") == {"a": 1} and parse_json_object("", "params") == {}
    for text in ("{", "[1]", '"x"', '{"a": NaN}', '{"a": Infinity}', '{"a": ' + "[" * 100000 + "]" * 100000 + "}"):
        with pytest.raises(InvalidRequestError):
            parse_json_object(text, "params")


def test_config_snapshot_refuses_changed_configs(tmp_path):
    from scripts.monailabel_app.lib.errors import ConfigChangedError
    from scripts.monailabel_app.lib.config_snapshot import ConfigSnapshot

    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "train.yaml").write_text("epochs: 1\n")
    snap = ConfigSnapshot.take(bundle)
    assert snap.path("configs/train.yaml").read_text() == "epochs: 1\n"
    assert not str(snap.path("configs/train.yaml")).startswith(str(bundle))
    snap.verify()
    (bundle / "configs" / "train.yaml").write_text("training: \"$print('pwned')\"\n")
    with pytest.raises(ConfigChangedError):
        snap.verify()
    (bundle / "configs" / "train.yaml").write_text("epochs: 1\n")
    snap.path("configs/train.yaml").write_text("x: 1\n")
    with pytest.raises(ConfigChangedError):
        snap.verify()
    with pytest.raises(ConfigChangedError):
        snap.path("configs/other.yaml")


# ------------------------------------------------------------------------------------- the servers
def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _launch(root: Path, bundle: Path, studies: Path, name: str, extra: list, host: str | None = "127.0.0.1"):
    port = free_port()
    log_path = root / f"{name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MONAI_LABEL_SESSION_PATH": str(root / f"sessions_{name}"),
           "PYTHONUNBUFFERED": "1"}
    env.pop("MONAI_LABEL_AUTH_ENABLE", None)
    env.pop("MEDICAL_MATTING_CONFIG_SNAPSHOT", None)
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(bundle / "scripts" / "monailabel_app"),
           "--studies", str(studies), "--conf", "models", "medical_matting",
           "--conf", "network_overrides", json.dumps(TINY), *extra, "--port", str(port)]
    if host:
        cmd += ["--host", host]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=str(bundle), stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, log, log_path, port


def _stop(proc) -> None:
    stop_process(proc)


class Server:
    def __init__(self, root: Path, bundle: Path, name: str, extra: list):
        self.root, self.bundle, self.name = root, bundle, name
        self.studies = root / f"studies_{name}"
        self.studies.mkdir()
        from scripts.data.phantom import make_phantom_dataset

        self.cases = {}
        for case, arrays in make_phantom_dataset(3, seed=5).items():
            Image.fromarray(arrays["image"]).save(self.studies / f"{case}.png")
            self.cases[case] = arrays
        self.proc, self.log, self.log_path, port = _launch(root, bundle, self.studies, name, extra)
        self.url = f"http://127.0.0.1:{port}"

    def log_tail(self, n: int = 4000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def wait_ready(self) -> None:
        wait_until_serving(self.proc, f"{self.url}/info/", STARTUP_TIMEOUT_S, self.log_tail, f"{self.name} server")

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()


class Servers:
    def __init__(self, root: Path):
        self.root = root
        self.bundle = copy_bundle_code(root / "bundle")
        self.weights = self.bundle / "models" / "model.pt"
        self.weights.parent.mkdir()
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(self.bundle / "configs" / "train.yaml"))
        parser["bundle_root"] = str(self.bundle)
        parser.update(TINY)
        torch.manual_seed(0)
        torch.save(parser.get_parsed_content("network_def").state_dict(), self.weights)
        self.marker = root / "PWNED_marker"
        # monailabel's start_server creates app/{model,lib,logs,bin} with an exists-check followed by a
        # plain makedirs: two servers starting from one app folder race there (FileExistsError, seen
        # in a fresh-clone run); create them before either server starts
        for name in ("model", "lib", "logs", "bin"):
            (self.bundle / "scripts" / "monailabel_app" / name).mkdir(exist_ok=True)
        self.default = Server(root, self.bundle, "default", [])
        self.training = Server(root, self.bundle, "training", ["--conf", "allow_training", "true",
                                                                "--conf", "train_dir", str(root / "train_runs")])

    def snapshot(self) -> dict:
        """sha256 of every file outside the datastores, sessions and the server's own runtime folders."""
        out = {}
        for path in sorted(self.root.rglob("*")):
            rel = path.relative_to(self.root).as_posix()
            if not path.is_file() or rel.startswith(("studies_", "sessions_", "train_runs")) or rel.endswith(".log"):
                continue
            if rel.startswith("bundle/") and (rel[len("bundle/"):].startswith(RUNTIME) or "__pycache__" in rel):
                continue
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        return out

    def assert_untouched(self, before: dict) -> None:
        after = self.snapshot()
        assert set(after) == set(before), f"created {set(after) - set(before)}, removed {set(before) - set(after)}"
        changed = [k for k in before if before[k] != after[k]]
        assert not changed, f"modified {changed}"
        assert not self.marker.exists(), "a planted expression ran"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    srv = Servers(tmp_path_factory.mktemp("mlsec"))
    try:
        srv.default.wait_ready()
        srv.training.wait_ready()
        yield srv
    finally:
        srv.default.stop()
        srv.training.stop()


def _put_image(server: Server, image: str | None, filename: str, content: bytes, raw_query: str | None = None):
    url = f"{server.url}/datastore/image" + (f"?image={raw_query}" if raw_query is not None else "")
    params = {"image": image} if image is not None and raw_query is None else None
    return requests.put(url, params=params, files={"file": (filename, content, "application/octet-stream")},
                        timeout=60)


#: a config as the reported exploit plants it (network keys so that the server's overrides apply)
PLANT = (b"network_def: {prob_filters: 0, matting_filters: 0, implicit_hidden: 0, latent_dim: 0}\n"
         b"num_samples: 0\n"
         b"initialize: \"$open('MARKER', 'w').write('pwned')\"\n"
         b"training: \"$open('MARKER', 'w').write('pwned')\"\n")


# ------------------------------------------------------------------------------------- server tests
def test_reported_exploit_chain_is_refused(servers):
    """PUT ..%2Fbundle%2Fconfigs%2Ftrain with x.yaml, then POST /train?run_sync=true: nothing written or run."""
    before = servers.snapshot()
    plant = PLANT.replace(b"MARKER", str(servers.marker).encode())
    for server in (servers.default, servers.training):
        response = _put_image(server, None, "x.yaml", plant, raw_query="..%2Fbundle%2Fconfigs%2Ftrain")
        assert 400 <= response.status_code < 500, response.text[:300]
        assert "detail" in response.json()
        response = requests.post(f"{server.url}/train/medical_matting", params={"run_sync": "true"},
                                 json={"epochs": 1}, timeout=300)
        assert 400 <= response.status_code < 500, response.text[:300]
    servers.assert_untouched(before)
    assert requests.get(f"{servers.default.url}/info/", timeout=30).status_code == 200


@pytest.mark.parametrize("raw", [
    "..%2Fbundle%2Fconfigs%2Ftrain",                    # percent-encoded
    "%252E%252E%252Fbundle%252Fconfigs%252Ftrain",      # double-encoded
    "..%5Cbundle%5Cconfigs%5Ctrain",                    # backslashes
    "%2Ftmp%2Fevil_absolute",                           # absolute id
    "x%00",                                             # NUL
    "%EF%BC%8E%EF%BC%8E%EF%BC%8Fbundle",                # fullwidth ．．／
    ".hidden",                                          # leading dot
])
def test_traversal_variants_of_image_ids_are_refused(servers, raw):
    before = servers.snapshot()
    listed = set(requests.get(f"{servers.default.url}/datastore/?output=all", timeout=30).json()["objects"])
    png = _png_bytes(next(iter(servers.default.cases.values()))["image"])
    for filename, content in (("x.png", png), ("x.yaml", PLANT)):
        response = _put_image(servers.default, None, filename, content, raw_query=raw)
        assert 400 <= response.status_code < 500, (raw, filename, response.status_code, response.text[:300])
    servers.assert_untouched(before)
    assert set(requests.get(f"{servers.default.url}/datastore/?output=all", timeout=30).json()["objects"]) == listed
    assert not Path("/tmp/evil_absolute.png").exists()


def test_uploads_must_be_images_with_plain_names(servers):
    server = servers.default
    before = servers.snapshot()
    files_before = sorted(p.name for p in server.studies.iterdir())
    png = _png_bytes(next(iter(server.cases.values()))["image"])
    for image, filename, content, status in [
        ("case_yaml", "x.yaml", PLANT, 415),        # a config under an image id
        (None, "train.yaml", PLANT, 415),           # id taken from the file name
        (None, "..\\..\\evil.png", png, 400),       # backslash path in the file name
        ("fake_png", "x.png", b"not a png", 415),    # the name says PNG, the content does not
        ("datastore_v2", "x.json", b"{}", 415),     # the datastore's own index
    ]:
        response = _put_image(server, image, filename, content)
        assert response.status_code == status, (image, filename, response.status_code, response.text[:300])
    assert sorted(p.name for p in server.studies.iterdir()) == files_before
    servers.assert_untouched(before)
    response = _put_image(server, "new_case", "new.png", png)  # a real image with a plain id is welcome
    assert response.status_code == 200 and response.json()["image"] == "new_case", response.text[:300]
    assert (server.studies / "new_case.png").is_file()


def test_label_tags_and_label_files_are_checked(servers):
    server = servers.default
    before = servers.snapshot()
    case, arrays = next(iter(server.cases.items()))
    label = _png_bytes(arrays["alpha"])
    for image, tag, filename, content, status in [
        (case, "../../bundle/configs", "x.png", label, 400),
        (case, "..%2F..%2Fbundle", "x.png", label, 400),
        (case, "/tmp", "x.png", label, 400),
        (case, "final", "x.yaml", PLANT, 415),
        ("../bundle/configs/train", "final", "x.png", label, 404),
        ("no_such_case", "final", "x.png", label, 404),
    ]:
        response = requests.put(f"{server.url}/datastore/label", params={"image": image, "tag": tag},
                                files={"label": (filename, content, "image/png")}, timeout=60)
        assert response.status_code == status, (image, tag, filename, response.status_code, response.text[:300])
    servers.assert_untouched(before)
    assert not (server.studies / "labels" / "final" / f"{case}.yaml").exists()
    assert not list(server.studies.glob("**/*.yaml"))


def test_ids_outside_the_datastore_get_the_unknown_id_answer(servers):
    """Infer / download / info / delete on paths: the same answer whether or not the path exists."""
    server = servers.default
    outside = servers.root / "outside.png"
    outside.write_bytes(_png_bytes(next(iter(server.cases.values()))["image"]))
    existing = [str(outside), str(servers.bundle / "configs" / "train.yaml"), "/etc/passwd",
                f"../bundle/configs/train.yaml", "../outside.png"]
    missing = [str(servers.root / "nothing.png"), str(servers.bundle / "configs" / "none.yaml"), "/etc/nothing",
               "../bundle/configs/none.yaml", "../nothing.png"]

    def infer(image):
        return requests.post(f"{server.url}/infer/medical_matting", params={"image": image, "output": "json"},
                             data={"params": "{}"}, timeout=60)

    reference = infer("no_such_case")
    assert reference.status_code == 404
    shape = reference.json()["detail"].replace("no_such_case", "ID")
    for image in existing + missing:
        response = infer(image)
        assert response.status_code == 404, (image, response.status_code, response.text[:300])
        assert set(response.json()) == {"detail"}
        assert response.json()["detail"].replace(image, "ID") == shape, (image, response.json())
    for image in existing + missing + ["no_such_case"]:
        assert requests.get(f"{server.url}/datastore/image", params={"image": image}, timeout=30).status_code == 404
        assert requests.get(f"{server.url}/datastore/image/info", params={"image": image}, timeout=30).json() == {}
        assert requests.delete(f"{server.url}/datastore/image", params={"id": image}, timeout=30).status_code == 404
        response = requests.put(f"{server.url}/datastore/image/info", params={"image": image},
                                data={"info": "{}"}, timeout=30)
        assert response.status_code == 404, (image, response.status_code)
    assert outside.is_file() and (servers.bundle / "configs" / "train.yaml").is_file()


def test_malformed_infer_options_and_uploads_are_4xx(servers):
    server = servers.default
    case = next(iter(server.cases))

    def infer(params_text, **kw):
        return requests.post(f"{server.url}/infer/medical_matting", params={"output": "json", **kw.pop("query", {"image": case})},
                             data={"params": params_text}, timeout=60, **kw)

    for text, status in [
        ("{not json", 400), ("[1, 2]", 400), ('{"mask_threshold": NaN, "map_type": "mask"}', 400),
        ('{"mask_threshold": Infinity}', 400), ('{"mask_threshold": 1e309}', 400), ('{"mask_threshold": "x"}', 400),
        ('{"map_type": "bogus"}', 400), ('{"map_type": ["../x"]}', 400),
        ('{"image": "/etc/passwd"}', 400), ('{"save_label": true, "label_tag": "../../x"}', 400),
    ]:
        response = infer(text)
        assert response.status_code == status, (text, response.status_code, response.text[:300])
        assert response.json()["detail"]
    # uploaded files: only readable images
    for filename, content, status in [("x.yaml", PLANT, 415), ("x.png", b"garbage", 415), ("x", b"", 415)]:
        response = requests.post(f"{server.url}/infer/medical_matting", params={"output": "json"},
                                 data={"params": "{}"}, files={"file": (filename, content)}, timeout=60)
        assert response.status_code == status, (filename, response.status_code, response.text[:300])
    png = _png_bytes(server.cases[case]["image"])
    response = requests.post(f"{server.url}/infer/medical_matting", params={"output": "json"},
                             data={"params": '{"map_type": "mask", "mask_threshold": 0.4}'},
                             files={"file": ("upload.png", png)}, timeout=60)
    assert response.status_code == 200 and response.json()["map_type"] == "mask", response.text[:300]
    # sessions: ids are plain names, content is one image file
    for session_id in ("../../x", "..%2Fx", "/tmp"):
        response = requests.post(f"{server.url}/infer/medical_matting", params={"session_id": session_id, "output": "json"},
                                 data={"params": "{}"}, timeout=60)
        assert response.status_code == 404, (session_id, response.status_code, response.text[:300])
    response = requests.put(f"{server.url}/session/", files={"files": ("x.yaml", PLANT)}, timeout=60)
    assert response.status_code == 415, response.text[:300]
    response = requests.put(f"{server.url}/session/", files={"files": ("s.png", png)}, timeout=60)
    assert response.status_code == 200, response.text[:300]
    response = requests.post(f"{server.url}/infer/medical_matting",
                             params={"session_id": response.json()["session_id"], "output": "json"},
                             data={"params": "{}"}, timeout=60)
    assert response.status_code == 200, response.text[:300]
    assert server.proc.poll() is None


def test_training_and_model_changes_are_refused_unless_enabled(servers):
    server = servers.default
    before = servers.snapshot()
    weights = servers.weights.read_bytes()
    for params in ({"run_sync": "true"}, {}):
        response = requests.post(f"{server.url}/train/medical_matting", params=params, json={"epochs": 1}, timeout=60)
        assert response.status_code == 403, response.text[:300]
        assert "allow_training" in response.json()["detail"]
    assert requests.post(f"{server.url}/train/", json={}, timeout=60).status_code == 403
    response = requests.put(f"{server.url}/model/medical_matting", files={"file": ("m.pt", b"evil")}, timeout=60)
    assert response.status_code == 403, response.text[:300]
    assert requests.delete(f"{server.url}/model/medical_matting", timeout=60).status_code == 403
    assert servers.weights.read_bytes() == weights
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    assert "medical_matting" in info["models"] and info["models"]["medical_matting"]["trained"] is True
    assert "DISABLED" in info["trainers"]["medical_matting"]["description"]
    servers.assert_untouched(before)


def test_training_options_are_an_allow_list(servers):
    server = servers.training
    before = servers.snapshot()
    for body in ({"epochs": "$__import__('os').system('touch /tmp/x')"}, {"epochs": 10 ** 9}, {"epochs": True},
                 {"train#trainer#max_epochs": 1}, {"gpus": "0"}, {"network_def#latent_dim": "@x"},
                 {"fold": -1}, {"num_folds": 1.5}, {"dataset_dir": "/etc"}):
        response = requests.post(f"{server.url}/train/medical_matting", params={"run_sync": "true"}, json=body,
                                 timeout=120)
        assert response.status_code == 400, (body, response.status_code, response.text[:300])
    servers.assert_untouched(before)


def test_planted_config_is_never_evaluated_even_with_training_enabled(servers):
    """Configs changed after start-up (by any means): training refuses, no planted expression runs."""
    server = servers.training
    for case in list(server.cases)[:2]:
        response = requests.put(f"{server.url}/datastore/label", params={"image": case, "tag": "final"},
                                files={"label": (f"{case}.png", _png_bytes(server.cases[case]["alpha"]), "image/png")},
                                timeout=60)
        assert response.status_code == 200, response.text[:300]
    train_yaml = servers.bundle / "configs" / "train.yaml"
    original = train_yaml.read_bytes()
    weights = servers.weights.read_bytes()
    train_yaml.write_bytes(PLANT.replace(b"MARKER", str(servers.marker).encode()))
    try:
        for params in ({"run_sync": "true"}, {}):
            response = requests.post(f"{server.url}/train/medical_matting", params=params, json={"epochs": 1},
                                     timeout=300)
            assert response.status_code == 409, response.text[:300]
            assert "configs changed" in response.json()["detail"]
    finally:
        train_yaml.write_bytes(original)
    time.sleep(1.0)
    assert not servers.marker.exists(), "the planted expression ran"
    assert servers.weights.read_bytes() == weights


# ------------------------------------------------------------------------------------- startup refusals
def _expect_refusal(root: Path, bundle: Path, studies: Path, name: str, host, expected: str, extra=()) -> None:
    proc, log, log_path, port = _launch(root, bundle, studies, name, list(extra), host=host)
    try:
        deadline = time.time() + STARTUP_TIMEOUT_S
        while proc.poll() is None and time.time() < deadline:
            try:  # a server that answers is the failure this test looks for
                if requests.get(f"http://127.0.0.1:{port}/info/", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.25)
        running = proc.poll() is None
    finally:
        _stop(proc)
        log.close()
    text = log_path.read_text(errors="replace")
    assert not running, f"the server started:\n{text[-3000:]}"
    assert proc.returncode != 0
    lines = [line for line in text.splitlines() if "refusing to start" in line]
    assert lines and expected in lines[-1], text[-3000:]


def test_server_refuses_studies_inside_the_bundle(servers):
    _expect_refusal(servers.root, servers.bundle, servers.bundle / "studies", "inside", "127.0.0.1",
                    "must live outside the bundle")


def test_server_refuses_all_interfaces_without_authentication(servers):
    studies = servers.root / "studies_nohost"
    studies.mkdir()
    _expect_refusal(servers.root, servers.bundle, studies, "nohost", None, "without authentication")
    # a spelling of the option that the check once read differently from MONAI Label's parser
    _expect_refusal(servers.root, servers.bundle, studies, "hostspelling", None, "listens on 0.0.0.0 without",
                    extra=["--host", "127.0.0.1", "-i0.0.0.0"])
