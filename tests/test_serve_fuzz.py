"""Hostile input to ``imgclass serve``, in process: Hypothesis sends random methods, paths, query strings,
headers and bodies (JSON of any shape and depth, multipart, broken and odd images, plain bytes) and no
answer may be a 5xx; the server answers normally afterwards. A ``color_hist+logreg`` bundle trained
here on tiny generated images is served.
"""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from conftest import quiet_env, write_colour_dataset
from PIL import Image

import imgclass

pytest.importorskip("fastapi")
hypothesis = pytest.importorskip("hypothesis")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from imgclass.serve import create_app  # noqa: E402
from imgclass.serve.metrics import KNOWN_PATHS  # noqa: E402

KEY = "fuzz-key"
PATHS = ["/", "/healthz", "/metrics", "/v1/model", "/v1/predict", "/v1/predict/batch", "/v1/explain", "/docs",
         "/openapi.json", "/redoc", "/static/app.js", "/static/style.css", "/static/docs.js",
         "/static/swagger-ui/swagger-ui.css", "/static/swagger-ui/../app.py", "/static/..%2fapp.py", "/v1/",
         "/v1/predict/", "//v1//predict", "/%00", "/v1/predict%00", "/\u00e9t\u00e9", "/v1/model/../model"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
CONTENT_TYPES = ["application/json", "application/json; charset=utf-16", "text/json", "application/vnd.x+json",
                 "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=BOUND",
                 "image/png", "image/jpeg", "image/", "application/octet-stream", "text/plain", "", ";;;",
                 "application/x-www-form-urlencoded", "multipart/mixed; boundary=BOUND"]


def _image_bytes(fmt: str, side: int, mode: str) -> bytes:
    arr = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    im = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


IMAGES = [_image_bytes(f, s, m) for f, s, m in [("PNG", 8, "RGB"), ("PNG", 5, "1"), ("PNG", 9, "P"), ("PNG", 6, "RGBA"),
                                                  ("JPEG", 12, "L"), ("GIF", 7, "P"), ("BMP", 4, "RGB"),
                                                  ("TIFF", 3, "CMYK"), ("WEBP", 10, "RGB")]]


@st.composite
def image_data(draw) -> bytes:
    """A small valid image, or one cut short, with flipped bytes or a lying header."""
    data = bytearray(draw(st.sampled_from(IMAGES)))
    how = draw(st.sampled_from(["valid", "cut", "flip", "header"]))
    if how == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "flip" and data:
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif how == "header" and data[:8] == b"\x89PNG\r\n\x1a\n":  # PNG claiming huge dimensions
        side = draw(st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1, 70_000, 7_000]))
        data[16:24] = side.to_bytes(4, "big") * 2
    return bytes(data)


def _nested(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


NUMBERS = st.one_of(st.integers(-(10**30), 10**30), st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from(["1e400", "-1e400", "1e-400", "NaN", "Infinity", "-0", "1" * 5000,
                                     "0.5", "3", "true", "null"]))
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@st.composite
def json_body(draw) -> bytes:
    """JSON documents of every shape: the fields the server knows with values of wrong types and ranges,
    numbers written out as text (1e400, NaN), deep nesting, and plain garbage."""
    kind = draw(st.sampled_from(["fields", "nested", "random", "raw"]))
    if kind == "nested":
        return _nested(draw(st.sampled_from([10, 1_000, 100_000])), draw(st.sampled_from(["list", "dict"]))).encode()
    if kind == "random":
        return json.dumps(draw(JSON_VALUES)).encode()
    if kind == "raw":
        return draw(st.binary(max_size=64))
    fields = {}
    b64 = base64.b64encode(draw(image_data())).decode()
    for name in draw(st.lists(st.sampled_from(["image", "images", "top_k", "target", "method", "path", "x"]),
                              max_size=4, unique=True)):
        fields[name] = draw(st.one_of(st.just(b64), st.just([b64, "%%%", None]), st.just("data:image/png;base64," + b64),
                                      st.just("data:,x"), JSON_VALUES, NUMBERS.map(lambda n: f"@@{n}@@")))
    text = json.dumps(fields)
    return re.sub(r'"@@(.*?)@@"', r"\1", text).encode()  # numbers as written, not as strings


@st.composite
def multipart_body(draw) -> tuple[bytes, str]:
    """A multipart body written by hand (so it can be wrong): random parts, names, file names and boundaries."""
    boundary = draw(st.sampled_from(["BOUND", "x" * 70, "b"]))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(["file", "files", "top_k", "target", "method", "path", "", 'a"b']))
        filename = draw(st.one_of(st.none(), st.sampled_from(["a.png", "../../etc/passwd", "", "\u00e9.jpg"])))
        value = draw(st.one_of(image_data(), NUMBERS.map(lambda n: str(n).encode()), st.binary(max_size=40)))
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n")
    ending = draw(st.sampled_from([f"--{boundary}--\r\n".encode(), b"", b"--", f"--{boundary}".encode()]))
    return b"".join(parts) + ending, f"multipart/form-data; boundary={boundary}"


HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@st.composite
def request_args(draw) -> dict:
    method = draw(st.sampled_from(["POST"] * 6 + ["GET"] * 2 + ["any"] * 2))
    if method == "any":
        method = draw(st.one_of(st.sampled_from(METHODS), st.from_regex(r"\A[A-Z]{1,10}\Z")))
    path = draw(st.sampled_from(["/v1/predict"] * 4 + ["/v1/predict/batch"] * 3 + ["/v1/explain", "known", "known",
                                                                                    "random"]))
    if path == "known":
        path = draw(st.sampled_from(PATHS))
    elif path == "random":
        path = "/" + draw(st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="#?\x7f"),
                                  max_size=20))
    params = draw(st.dictionaries(st.sampled_from(["top_k", "target", "method", "x"]),
                                  st.one_of(NUMBERS.map(str), st.text(max_size=10)), max_size=3))
    headers = {}
    body_kind = draw(st.sampled_from(["none", "json", "json", "json", "multipart", "multipart", "image", "image", "bytes"]))
    body = b""
    if body_kind == "json":
        body, headers["Content-Type"] = draw(json_body()), "application/json"
    elif body_kind == "multipart":
        body, headers["Content-Type"] = draw(multipart_body())
    elif body_kind == "image":
        body, headers["Content-Type"] = draw(image_data()), "image/png"
    elif body_kind == "bytes":
        body = draw(st.binary(max_size=200))
    if draw(st.integers(0, 3)) == 0:
        headers["Content-Type"] = draw(st.one_of(st.sampled_from(CONTENT_TYPES), HEADER_TEXT))
    for name in draw(st.lists(st.sampled_from(["X-API-Key", "Authorization", "Accept", "Origin", "Range",
                                               "Content-Encoding", "Expect"]), max_size=3, unique=True)):
        headers[name] = draw(st.one_of(st.sampled_from(["", " ", "Bearer", "Bearer ", f"Bearer {KEY}", KEY, "gzip",
                                                        "bytes=0-1", "100-continue"]), HEADER_TEXT))
    return {"method": method, "url": path, "params": params, "headers": headers, "content": body}


@pytest.fixture(scope="module")
def fuzz_apps(tmp_path_factory):
    """The bundle served twice: without a key (every request reaches the parsers) and with one."""
    base = tmp_path_factory.getbasetemp()
    root = tmp_path_factory.mktemp("fuzz")
    data = write_colour_dataset(root / "colours", n_per_class=6, size=12, seed=4)
    with quiet_env(base):
        imgclass.train(data, method="color_hist+logreg", n_jobs=1, seed=0).save(root / "model")
        with TestClient(create_app(root / "model", max_upload_bytes=256 * 1024), raise_server_exceptions=False) as open_c, \
                TestClient(create_app(root / "model", api_key=KEY, max_upload_bytes=256 * 1024),
                           raise_server_exceptions=False) as keyed_c:
            yield {"open": open_c, "keyed": keyed_c}


def _send(client, args):
    return client.request(args["method"], args["url"], params=args["params"], headers=args["headers"],
                          content=args["content"])


def _no_5xx(r, args):
    assert r.status_code < 500, (r.status_code, r.text[:300], {k: (v[:200] if isinstance(v, bytes) else v)
                                                                for k, v in args.items()})
    if r.status_code >= 400 and args["method"] != "HEAD":
        assert r.headers["content-type"].startswith("application/json"), r.headers
        assert set(r.json()) == {"error"}


def _still_serves(client, headers=None):
    assert client.get("/healthz").status_code == 200
    r = client.post("/v1/predict", content=IMAGES[0], headers={"Content-Type": "image/png", **(headers or {})})
    assert r.status_code == 200, r.text


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(args=request_args())
def test_random_requests_never_get_a_5xx(fuzz_apps, args):
    _no_5xx(_send(fuzz_apps["open"], args), args)


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(args=request_args())
def test_random_requests_with_a_key_never_get_a_5xx(fuzz_apps, args):
    _no_5xx(_send(fuzz_apps["keyed"], args), args)


def test_the_server_still_answers_after_the_fuzz(fuzz_apps):
    """Runs after the two property tests (file order): both apps still predict, and /metrics stayed small."""
    _still_serves(fuzz_apps["open"])
    _still_serves(fuzz_apps["keyed"], {"X-API-Key": KEY})
    text = fuzz_apps["open"].get("/metrics").text
    methods = set(re.findall(r'imgclass_requests_total\{[^}]*method="([^"]*)"', text))
    endpoints = set(re.findall(r'endpoint="([^"]*)"', text))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods
    assert endpoints <= set(KNOWN_PATHS) | {"/static/swagger-ui", "other"}, endpoints
    assert len(text) < 60_000
