"""``imgclass serve``: the FastAPI app in process (``fastapi.testclient.TestClient``).

Predictions match ``imgclass.predict`` whatever way the image is sent; batches report bad items in
place; every bad upload gets its status and a JSON error, and the next good request still works;
the API key guards ``/v1/*`` and ``/metrics``; explanations come back as PNGs; concurrent requests
share model calls (micro-batching). Models: ``color_hist+logreg`` and a 1-epoch ``smallcnn`` at 32 px,
trained here on tiny generated images.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import noise_bytes, quiet_env, write_colour_dataset
from PIL import Image

import imgclass

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from imgclass.serve import ENV_CONFIG, app_from_env, create_app  # noqa: E402

MB = 2**20


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of ``side`` x ``side`` pixels: a few tens of KB on disk, 400 megapixels decoded.
    Written chunk by chunk (row by row through zlib) so building it never holds the pixels."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join([comp.compress(row) for _ in range(side)] + [comp.flush()])
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Two bundles trained on the colour squares: ``color_hist+logreg`` and ``smallcnn`` (1 epoch, 32 px)."""
    base = tmp_path_factory.getbasetemp()
    root = tmp_path_factory.mktemp("serve")
    data = write_colour_dataset(root / "colours", seed=3)
    with quiet_env(base):
        ch = imgclass.train(data, method="color_hist+logreg", n_jobs=1, seed=0)
        ch.save(root / "ch")
        cnn = imgclass.train(data, method="smallcnn", img_size=32, n_jobs=1, seed=0,
                             train_config={"epochs": 1, "batch_size": 16})
        cnn.save(root / "cnn")
    rng = np.random.default_rng(11)
    images = {}
    for name, rgb in {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}.items():
        arr = np.clip(np.asarray(rgb)[None, None] + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
        path = root / f"query_{name}.png"
        Image.fromarray(arr).save(path)
        images[name] = path
    return {"root": root, "base": base, "ch": root / "ch", "cnn": root / "cnn", "images": images}


@pytest.fixture(scope="module")
def client(served):
    """The ``color_hist+logreg`` bundle served with a 1 MB upload limit."""
    with quiet_env(served["base"]):
        app = create_app(served["ch"], max_upload_bytes=1 * MB)
        with TestClient(app) as c:
            yield c


@pytest.fixture(scope="module")
def cnn_client(served):
    with quiet_env(served["base"]):
        with TestClient(create_app(served["cnn"])) as c:
            yield c


def _file(path: Path, name: str | None = None, ctype: str = "image/png"):
    return {"file": (name or path.name, path.read_bytes(), ctype)}


def _assert_error(r, status: int, code: str | None = None):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    assert "Traceback" not in r.text
    return body["error"]


def _same_prediction(got: dict, expected: dict):
    # float32 outputs: a batch and a single image can round differently in the last bit (ONNX Runtime
    # splits the work by batch and free threads; seen as a 7e-9 difference on a busy machine)
    for k, v in expected.items():
        if k in ("labels", "top"):
            assert [d["label"] for d in got[k]] == [d["label"] for d in v]
            np.testing.assert_allclose([d["probability"] for d in got[k]], [d["probability"] for d in v], atol=1e-6)
        elif k == "probability":
            assert got[k] == pytest.approx(v, abs=1e-6)
        else:
            assert got[k] == v, k


# --------------------------------------------------------------------------- predict
def test_predict_multipart_base64_and_raw_agree_with_library(client, served):
    path = served["images"]["red"]
    expected = imgclass.predict(served["ch"], [path], top_k=3)[0].to_dict()
    data = path.read_bytes()
    r_multi = client.post("/v1/predict", files=_file(path))
    r_json = client.post("/v1/predict", json={"image": base64.b64encode(data).decode(), "top_k": 3})
    r_raw = client.post("/v1/predict", content=data, headers={"Content-Type": "image/png"})
    r_url = client.post("/v1/predict", json={"image": "data:image/png;base64," + base64.b64encode(data).decode()})
    for r in (r_multi, r_json, r_raw, r_url):
        assert r.status_code == 200, r.text
        body = r.json()
        _same_prediction(body, expected)
        assert body["task"] == "multiclass" and body["label"] == "red"
    assert r_multi.json()["filename"] == path.name
    # top_k from the query string or the body; clamped to the number of classes
    assert len(client.post("/v1/predict?top_k=1", files=_file(path)).json()["top"]) == 1
    assert len(client.post("/v1/predict", json={"image": base64.b64encode(data).decode(), "top_k": 50}).json()["top"]) == 3


def test_batch_reports_bad_items_in_place(client, served):
    imgs = served["images"]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in imgs.values()]
    files.insert(1, ("files", ("notes.txt", b"just text\n", "text/plain")))
    r = client.post("/v1/predict/batch", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 4 and body["errors"] == 1
    res = body["results"]
    assert [x["index"] for x in res] == [0, 1, 2, 3]
    assert res[1]["error"]["code"] == "unsupported_media_type" and res[1]["error"]["status"] == 415
    assert [res[i]["label"] for i in (0, 2, 3)] == ["red", "green", "blue"]
    expected = [p.to_dict() for p in imgclass.predict(served["ch"], list(imgs.values()), top_k=3)]
    for got, exp in zip([res[0], res[2], res[3]], expected):
        _same_prediction(got, exp)
    # JSON: {"images": [...]} or a bare list; an item that is not base64 fails alone
    b64 = [base64.b64encode(p.read_bytes()).decode() for p in imgs.values()]
    for payload in ({"images": b64 + ["%%% not base64"]}, b64 + ["%%% not base64"]):
        r = client.post("/v1/predict/batch", json=payload)
        assert r.status_code == 200, r.text
        res = r.json()["results"]
        assert [x.get("label") for x in res[:3]] == ["red", "green", "blue"]
        assert res[3]["error"]["status"] == 400
    # too many images in one request
    _assert_error(client.post("/v1/predict/batch", json={"images": b64 * 30}), 413, "too_many_images")


def test_model_metadata_and_healthz(client, served):
    info = client.get("/v1/model").json()
    meta = json.loads((served["ch"] / "model.json").read_text())
    assert info["method"] == "color_hist+logreg" and info["task"] == "multiclass"
    assert info["classes"] == meta["classes"] == ["blue", "green", "red"]
    assert info["input_size"] == meta["preprocessing"]["size"]
    assert info["version"] == imgclass.__version__
    assert info["explain"]["methods"] == ["occlusion"]
    assert info["limits"]["max_upload_bytes"] == 1 * MB
    assert "bundle" not in json.dumps(info)  # no server paths
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_task_aware_output_for_multilabel(tmp_path):
    """Multi-label: every label above its threshold, and the thresholds themselves."""
    rng = np.random.default_rng(0)
    rgb = {"red": (210, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 210)}
    rows = ["path,labels"]
    for i in range(30):
        a, b = list(rgb)[i % 3], list(rgb)[(i + 1) % 3]
        arr = np.clip(np.asarray(rgb[a])[None, None] + rng.normal(0, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
        if i % 2:
            arr[:, 6:] = np.asarray(rgb[b])
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{a}|{b}" if i % 2 else f"{i}.png,{a}")
    (tmp_path / "ml.csv").write_text("\n".join(rows) + "\n")
    model = imgclass.train(tmp_path / "ml.csv", method="color_hist+logreg", n_jobs=1, val_split=0.3)
    with TestClient(create_app(model)) as c:  # a model object, not a bundle path
        info = c.get("/v1/model").json()
        assert info["task"] == "multilabel" and set(info["thresholds"]) == set(rgb)
        r = c.post("/v1/predict", files=_file(tmp_path / "1.png"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["thresholds"] == info["thresholds"]
        expected = imgclass.predict(model, [tmp_path / "1.png"], top_k=3)[0].to_dict()
        _same_prediction(body, expected)
        assert all(p >= info["thresholds"][lab] for lab, p in ((d["label"], d["probability"]) for d in body["labels"])) \
            or body.get("note")


# --------------------------------------------------------------------------- bad requests
def _bad_uploads() -> dict[str, tuple[bytes, str, int, str]]:
    jpg = noise_bytes("JPEG", size=64)
    return {
        "truncated_jpeg": (jpg[: len(jpg) // 2], "image/jpeg", 422, "corrupt_image"),
        "jpeg_header_cut": (jpg[:200], "image/jpeg", 422, "corrupt_image"),
        "truncated_png": (noise_bytes("PNG", size=64)[:300], "image/png", 422, "corrupt_image"),
        "zero_bytes": (b"", "image/png", 415, "unsupported_media_type"),
        "text_file": (b"this is a text file, not a PNG\n" * 4, "text/plain", 415, "unsupported_media_type"),
        "random_bytes": (np.random.default_rng(7).integers(0, 256, 600, dtype=np.uint8).tobytes(), "image/jpeg",
                         415, "unsupported_media_type"),
        "over_limit": (b"\xff\xd8\xff" + bytes(2 * MB), "image/jpeg", 413, "payload_too_large"),
        "bomb_20k": (bomb_png(), "image/png", 422, "image_too_large"),
        "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "application/postscript", 415,
                "unsupported_media_type"),
    }


@pytest.mark.parametrize("kind", list(_bad_uploads()))
def test_bad_upload_gets_its_status_and_the_server_keeps_working(client, served, kind):
    data, ctype, status, code = _bad_uploads()[kind]
    good = served["images"]["green"]
    for send in ("multipart", "base64"):
        if send == "multipart":
            r = client.post("/v1/predict", files={"file": (f"{kind}.bin", data, ctype)})
        else:
            r = client.post("/v1/predict", json={"image": base64.b64encode(data).decode()})
        _assert_error(r, status, code)
        ok = client.post("/v1/predict", files=_file(good))
        assert ok.status_code == 200 and ok.json()["label"] == "green"
    # explain checks uploads the same way
    _assert_error(client.post("/v1/explain", files={"file": (f"{kind}.bin", data, ctype)}), status, code)


def test_body_limit_counts_bytes_without_content_length(client, served):
    def chunks():
        for _ in range(4):
            yield bytes(512 * 1024)

    r = client.post("/v1/predict", content=chunks(), headers={"Content-Type": "image/jpeg"})
    _assert_error(r, 413, "payload_too_large")
    assert client.post("/v1/predict", files=_file(served["images"]["red"])).status_code == 200


def test_malformed_requests(client, served):
    data = served["images"]["red"].read_bytes()
    # the server never reads paths: a path field is refused, with or without an image
    err = _assert_error(client.post("/v1/predict", json={"path": str(served["images"]["red"])}), 400, "bad_request")
    assert "never" in err["message"]
    _assert_error(client.post("/v1/predict", json={"image": base64.b64encode(data).decode(), "path": "/etc/passwd"}),
                  400, "bad_request")
    _assert_error(client.post("/v1/predict", data={"file": "/etc/passwd"},
                              files={"other": ("x", b"x", "text/plain")}), 400, "bad_request")
    _assert_error(client.post("/v1/predict", json={"image": "%%%"}), 400, "bad_request")
    _assert_error(client.post("/v1/predict", content=b"{not json", headers={"Content-Type": "application/json"}),
                  400, "bad_request")
    _assert_error(client.post("/v1/predict", content=b"hello", headers={"Content-Type": "text/plain"}),
                  415, "unsupported_media_type")
    _assert_error(client.post("/v1/predict?top_k=0", files=_file(served["images"]["red"])), 400, "bad_request")
    _assert_error(client.get("/v1/nothing"), 404, "not_found")
    _assert_error(client.get("/v1/predict"), 405)
    _assert_error(client.get("/static/../app.py"), 404)
    _assert_error(client.get("/static/app.py"), 404)
    assert client.post("/v1/predict", files=_file(served["images"]["red"])).status_code == 200


def test_unexpected_errors_are_json_500_without_traceback(served, monkeypatch):
    app = create_app(served["ch"], warmup=False)
    state = app.state.serve
    with TestClient(app) as c:
        monkeypatch.setattr(state.model, "predict_proba", lambda images: (_ for _ in ()).throw(RuntimeError("boom /secret/path")))
        r = c.post("/v1/predict", files=_file(served["images"]["red"]))
        _assert_error(r, 500, "internal_error")
        assert "boom" not in r.text and "/secret" not in r.text
        monkeypatch.undo()
        assert c.post("/v1/predict", files=_file(served["images"]["red"])).status_code == 200


# --------------------------------------------------------------------------- API key
def test_api_key_guards_the_api_but_not_the_page(served):
    with TestClient(create_app(served["ch"], api_key="s3cret", warmup=False)) as c:
        for path in ("/v1/model", "/metrics"):
            err = _assert_error(c.get(path), 401, "unauthorized")
            assert "X-API-Key" in err["message"]
            _assert_error(c.get(path, headers={"X-API-Key": "wrong"}), 401, "unauthorized")
            _assert_error(c.get(path, headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
            assert c.get(path, headers={"X-API-Key": "s3cret"}).status_code == 200
            assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        _assert_error(c.post("/v1/predict", files=_file(served["images"]["red"])), 401)
        r = c.post("/v1/predict", files=_file(served["images"]["red"]), headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200 and r.json()["label"] == "red"
        assert c.get("/healthz").json() == {"status": "ok", "auth_required": True}
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200


# --------------------------------------------------------------------------- explain
def test_explain_returns_a_gradcam_png_for_a_deep_model(cnn_client, served):
    path = served["images"]["red"]
    r = cnn_client.post("/v1/explain", files=_file(path))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-explain-method"] == "gradcam"
    im = Image.open(io.BytesIO(r.content))
    assert im.format == "PNG" and im.size == (32, 32)
    r = cnn_client.post("/v1/explain?target=blue", files=_file(path))
    assert r.status_code == 200 and r.headers["x-explain-target"] == "blue"
    r = cnn_client.post("/v1/explain", json={"image": base64.b64encode(path.read_bytes()).decode(),
                                             "method": "gradcam++"})
    assert r.status_code == 200 and r.headers["x-explain-method"] == "gradcam++"
    _assert_error(cnn_client.post("/v1/explain?target=purple", files=_file(path)), 400, "bad_target")
    info = cnn_client.get("/v1/model").json()
    assert info["kind"] == "deep" and info["explain"]["default"] == "gradcam"
    # prediction still agrees with the library for a deep bundle (ONNX Runtime, micro-batched)
    expected = imgclass.predict(served["cnn"], [path], top_k=3)[0].to_dict()
    got = cnn_client.post("/v1/predict", files=_file(path)).json()
    assert [d["label"] for d in got["top"]] == [d["label"] for d in expected["top"]]
    np.testing.assert_allclose([d["probability"] for d in got["top"]], [d["probability"] for d in expected["top"]],
                               atol=1e-5)


def test_explain_classical_uses_occlusion_or_says_why_not(client, served):
    path = served["images"]["red"]
    r = client.post("/v1/explain", files=_file(path))
    assert r.status_code == 200, r.text
    assert r.headers["x-explain-method"] == "occlusion" and r.content.startswith(b"\x89PNG")
    err = _assert_error(client.post("/v1/explain?method=gradcam", files=_file(path)), 400, "explain_unsupported")
    assert "occlusion" in err["message"]


# --------------------------------------------------------------------------- micro-batching and metrics
@pytest.mark.parametrize("model_threads", [1, 2])
def test_concurrent_requests_are_micro_batched(served, model_threads):
    n = 16
    with TestClient(create_app(served["ch"], batch_wait_ms=100, max_batch=32, model_threads=model_threads)) as c:
        state = c.app.state.serve
        before = state.batcher.batches
        data = [served["images"][k].read_bytes() for k in ("red", "green", "blue")]
        barrier = threading.Barrier(n)

        def one(i):
            barrier.wait()
            return c.post("/v1/predict", files={"file": (f"{i}.png", data[i % 3], "image/png")})

        with ThreadPoolExecutor(n) as pool:
            rs = list(pool.map(one, range(n)))
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
        assert [r.json()["label"] for r in rs] == [("red", "green", "blue")[i % 3] for i in range(n)]
        batches = state.batcher.batches - before
        assert batches < n, f"{n} requests took {batches} model calls"
        text = c.get("/metrics").text
        count = _metric(text, "imgclass_batch_size_count")
        singles = _metric(text, 'imgclass_batch_size_bucket{le="1.0"}')
        assert count - singles >= 1, "no batch of more than one image"


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def test_metrics_exposition(client, served):
    for _ in range(2):
        client.post("/v1/predict", files=_file(served["images"]["red"]))
    client.post("/v1/predict", files={"file": ("x.txt", b"text", "text/plain")})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert _metric(text, 'imgclass_requests_total{endpoint="/v1/predict",method="POST",status="200"}') >= 2
    assert _metric(text, 'imgclass_requests_total{endpoint="/v1/predict",method="POST",status="415"}') >= 1
    assert "# TYPE imgclass_request_duration_seconds histogram" in text
    assert _metric(text, 'imgclass_request_duration_seconds_count{endpoint="/v1/predict"}') >= 3
    assert _metric(text, "imgclass_batch_size_count") >= 2
    assert _metric(text, 'imgclass_images_total{outcome="ok"}') >= 2
    assert _metric(text, 'imgclass_model_info{method="color_hist+logreg",task="multiclass"}') == 1


# --------------------------------------------------------------------------- page, docs, factory, CLI
def test_page_and_docs_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert 'id="file"' in r.text and "/static/app.js" in r.text
    assert "http" not in r.text.replace("http-equiv", "")  # nothing from other sites
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]
    assert client.get("/docs").status_code == 200


def test_app_from_env_builds_the_worker_app(served, monkeypatch):
    monkeypatch.setenv(ENV_CONFIG, json.dumps({"model": str(served["ch"]), "max_upload_bytes": 12345,
                                               "warmup": False}))
    app = app_from_env()
    assert app.state.serve.max_upload_bytes == 12345
    with TestClient(app) as c:
        assert c.post("/v1/predict", files=_file(served["images"]["blue"])).json()["label"] == "blue"


def test_cli_serve_bad_model_is_one_line_exit_2(tmp_path, capsys):
    from imgclass.cli import main

    assert main(["serve", str(tmp_path / "no-such-model")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imgclass: error:") and "model.json" in err[0]
    assert main(["serve", str(tmp_path), "--workers", "0"]) == 2


def test_cli_serve_prints_the_url_and_runs_uvicorn(served, monkeypatch, capsys):
    """The command's plumbing, with ``uvicorn.run`` replaced: one worker gets the app object, several
    get the factory's import string and the config in the environment."""
    import uvicorn

    from imgclass.cli import main

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: calls.append((target, kw)))
    for var in (ENV_CONFIG, "IMGCLASS_ORT_THREADS", "IMGCLASS_PROGRESS", "PROMETHEUS_MULTIPROC_DIR"):  # undone after
        monkeypatch.setenv(var, os.environ.get(var, ""))
    monkeypatch.delenv("IMGCLASS_ORT_THREADS")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    assert main(["serve", str(served["ch"]), "--port", port, "--max-upload-mb", "2", "--api-key", "k"]) == 0
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:{port}/" in out and "color_hist+logreg" in out
    app, kw = calls[-1]
    assert app.state.serve.max_upload_bytes == 2 * MB and app.state.serve.api_key == "k"
    assert kw["host"] == "127.0.0.1" and "workers" not in kw
    assert main(["serve", str(served["ch"]), "--port", port, "--workers", "2", "--model-threads", "3"]) == 0
    target, kw = calls[-1]
    assert target == "imgclass.serve.app:app_from_env" and kw["factory"] and kw["workers"] == 2
    cfg = json.loads(os.environ[ENV_CONFIG])
    assert os.environ["IMGCLASS_ORT_THREADS"] == "1"
    assert Path(cfg["model"]) == served["ch"].resolve() and cfg["model_threads"] == 3


# --------------------------------------------------------------------------- hostile input (issue 25)
def test_hostile_json_is_a_400_not_a_500(client, served):
    b64 = base64.b64encode(served["images"]["red"].read_bytes()).decode()

    def with_top_k(value: str) -> bytes:
        return ('{"image": "' + b64 + '", "top_k": ' + value + "}").encode()

    bodies = {
        "nested list": b"[" * 100_000 + b"]" * 100_000,
        "nested object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "top_k 1e400": with_top_k('1e400'),
        "top_k -1e400": with_top_k('-1e400'),
        "top_k NaN": with_top_k('NaN'),
        "top_k 2.5": with_top_k('2.5'),
        "top_k list": with_top_k('[3]'),
        "top_k text": with_top_k('"1e400"'),
        "huge integer": b'{"image": "x", "top_k": ' + b"9" * 5000 + b"}",
        "image number": b'{"image": 1e400}',
        "images dict": b'{"images": {"a": 1}}',
        "not utf-8": b'{"image": "\xff\xfe"}',
    }
    for name, body in bodies.items():
        for path in ("/v1/predict", "/v1/predict/batch", "/v1/explain"):
            r = client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert 400 <= r.status_code < 500, (name, path, r.status_code, r.text[:200])
            _assert_error(r, r.status_code)
    _assert_error(client.post("/v1/predict?top_k=1e400", files=_file(served["images"]["red"])), 400, "bad_request")
    r = client.post("/v1/predict", json={"image": b64, "top_k": 10**30})  # a big whole number is clamped
    assert r.status_code == 200 and len(r.json()["top"]) == 3


def test_bad_methods_and_content_types_are_json_4xx(client):
    for method in ("PUT", "DELETE", "PATCH", "FOO", "BREW"):
        _assert_error(client.request(method, "/v1/predict"), 405, "method_not_allowed")
    _assert_error(client.request("FOO", "/nowhere"), 404, "not_found")
    for ctype in ("", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                  "multipart/form-data; boundary=", "image/", ";;;"):
        r = client.post("/v1/predict", content=b"abc", headers={"Content-Type": ctype})
        assert 400 <= r.status_code < 500, (ctype, r.status_code, r.text)
        _assert_error(r, r.status_code)


def test_metrics_labels_come_from_a_fixed_set(client):
    size = len(client.get("/metrics").text)
    for i in range(200):
        client.request(f"X{i}", f"/made-up/{i}")
    text = client.get("/metrics").text
    assert len(text) < size + 2_000, "made-up methods or paths grew /metrics"
    assert 'endpoint="other",method="other",status="404"' in text
    assert "X17" not in text and "made-up" not in text


def test_an_empty_or_wrong_header_does_not_hide_a_valid_credential(served):
    with TestClient(create_app(served["ch"], api_key="s3cret", warmup=False)) as c:
        for headers in ({"X-API-Key": "", "Authorization": "Bearer s3cret"},
                        {"X-API-Key": "   ", "Authorization": "Bearer s3cret"},
                        {"X-API-Key": "wrong", "Authorization": "Bearer s3cret"},
                        {"X-API-Key": "s3cret", "Authorization": ""},
                        {"X-API-Key": "s3cret", "Authorization": "Bearer wrong"}):
            assert c.get("/v1/model", headers=headers).status_code == 200, headers
        for headers in ({"X-API-Key": ""}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"},
                        {"X-API-Key": "", "Authorization": ""}, {"Authorization": "Basic s3cret"}):
            _assert_error(c.get("/v1/model", headers=headers), 401, "unauthorized")


def test_docs_are_served_offline_and_behind_the_key(served):
    with TestClient(create_app(served["ch"], api_key="s3cret", warmup=False)) as c:
        for path in ("/docs", "/openapi.json"):
            _assert_error(c.get(path), 401, "unauthorized")
            assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        _assert_error(c.get("/redoc"), 404)
        page = c.get("/docs", headers={"X-API-Key": "s3cret"})
        assert "script-src 'self'" in page.headers["content-security-policy"]
        srcs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert srcs and all(s.startswith("/static/") or s.startswith("data:") for s in srcs), srcs
        for s in srcs:
            if s.startswith("/static/"):
                r = c.get(s)  # the Swagger UI files themselves are open: library code, nothing about the model
                assert r.status_code == 200 and len(r.content) > 100, s
        assert "SwaggerUIBundle" in c.get("/static/swagger-ui/swagger-ui-bundle.js").text
        _assert_error(c.get("/static/swagger-ui/index.html"), 404)


def test_the_server_pixel_limit_is_checked_from_the_header(client, monkeypatch):
    """49 MP is under the CLI's limit but over the server's 40 MP default; the header alone decides."""
    from imgclass.serve import state as state_mod

    monkeypatch.setattr(state_mod, "decode_checked", lambda *a, **k: pytest.fail("decoded a refused image"))
    err = _assert_error(client.post("/v1/predict", files={"file": ("big.png", bomb_png(7000), "image/png")}),
                        422, "image_too_large")
    assert "40,000,000" in err["message"]
    assert client.app.state.serve.max_pixels == 40_000_000


def test_over_budget_requests_are_shed_with_503_and_retry_after(served):
    app = create_app(served["ch"], warmup=False, budget_wait_s=0.05)
    state = app.state.serve
    with TestClient(app) as c:
        for budget, send in ((state.decode_budget, lambda: c.post("/v1/predict", files=_file(served["images"]["red"]))),
                             (state.body_budget, lambda: c.post("/v1/predict", content=b"x" * 1000,
                                                                headers={"Content-Type": "image/png"}))):
            budget.used = budget.total  # everything is taken by requests in flight
            r = send()
            _assert_error(r, 503, "overloaded")
            assert r.headers["retry-after"] == "1"
            budget.used = 0
        assert c.post("/v1/predict", files=_file(served["images"]["red"])).status_code == 200
        assert state.decode_budget.used == 0 and state.body_budget.used == 0  # everything given back
        assert _metric(c.get("/metrics").text, 'imgclass_shed_requests_total{budget="decode_memory"}') == 1


def test_memory_budget_waits_in_order_and_times_out():
    import asyncio

    from imgclass.serve.limits import MemoryBudget, Overloaded

    async def scenario():
        b = MemoryBudget(100, max_waiters=2)
        assert await b.acquire(60) == 60
        order = []

        async def take(n, tag):
            got = await b.acquire(n, timeout=2)
            order.append(tag)
            return got

        first, second = asyncio.create_task(take(50, "a")), asyncio.create_task(take(10, "b"))
        await asyncio.sleep(0.01)
        assert order == []  # "b" would fit, but waits behind "a": first come, first served
        with pytest.raises(Overloaded):
            await b.acquire(1, timeout=1)  # two are waiting already
        b.release(60)
        assert await first == 50 and await second == 10 and order == ["a", "b"]
        with pytest.raises(Overloaded):
            await b.acquire(50, timeout=0.01)  # 60 of 100 in use
        assert b.used == 60
        b.release(60)
        assert await b.acquire(10**9) == 100 and b.used == 100  # bigger than everything: runs alone

    asyncio.run(scenario())


@pytest.mark.subprocess
def test_multiprocess_metrics_report_every_worker(tmp_path):
    """Two processes count requests into one PROMETHEUS_MULTIPROC_DIR; a third reports their sum."""
    import subprocess
    import sys

    record = ("from imgclass.serve.metrics import ServerMetrics; m = ServerMetrics(); "
              "[m.request('/v1/predict', 'POST', 200, 0.01) for _ in range({n})]; m.request('/x', 'BREW', 405, 0.0)")
    show = "import sys; from imgclass.serve.metrics import ServerMetrics; sys.stdout.write(ServerMetrics().render().decode())"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for n in (3, 4):
        subprocess.run([sys.executable, "-c", record.format(n=n)], env=env, check=True, timeout=120)
    text = subprocess.run([sys.executable, "-c", show], env=env, check=True, timeout=120, capture_output=True,
                          text=True).stdout
    assert _metric(text, 'imgclass_requests_total{endpoint="/v1/predict",method="POST",status="200"}') == 7
    assert _metric(text, 'imgclass_requests_total{endpoint="other",method="other",status="405"}') == 2
