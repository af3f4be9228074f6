"""The HTTP front door end to end: a real server on 127.0.0.1 (gRPC and HTTP on free ports), real HTTP clients
(urllib, libretranslatepy), the tiny exported model; the offline engine is the referee of every translation.

The LibreTranslate conformance cases come from LibreTranslate's own API tests (its sdist's
``libretranslate/tests/test_api``): each endpoint's status and fields and the exact 400 messages.
"""

from __future__ import annotations

import gzip
import itertools
import json
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import openapi_spec_validator
import pytest
from conftest import scrape_metrics as metrics
from libretranslatepy import LibreTranslateAPI
from test_grpc_server import SlowEngine, wait_for
from test_security import Pki, make_pki

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.export.testing import tiny_export
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig

TEXTS = ["the cat sat on the mat", "open the file and save it", "select a printer from the list"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32")


@pytest.fixture(scope="session")
def engine(model_dir: Path) -> Engine:
    return Engine.load(model_dir, threads=1)


def config(model_dir: Path, **overrides: Any) -> ServerConfig:
    settings = dict(
        model=model_dir, port=0, metrics_port=0, http_port=free_port(), threads=1, warmup=False, max_queue_delay_ms=5.0
    )
    return ServerConfig(**(settings | overrides))


class Http:
    """A tiny urllib client of one server: ``http.call("POST", "/translate", json=...)`` -> (status, headers, body)."""

    def __init__(self, server: BackgroundServer) -> None:
        self.base = f"http://127.0.0.1:{server.server.http_port}"

    def call(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        headers = dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status, answer_headers, raw = answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as error:
            status, answer_headers, raw = error.code, dict(error.headers), error.read()
        kind = answer_headers.get("Content-Type", "")
        return status, answer_headers, json.loads(raw) if kind.startswith("application/json") else raw.decode()

    def form(self, path: str, fields: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        data = urllib.parse.urlencode(fields).encode()
        return self.call("POST", path, data=data, headers={"Content-Type": "application/x-www-form-urlencoded"})


@pytest.fixture(scope="module")
def server(model_dir: Path):
    with BackgroundServer(config(model_dir)) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: BackgroundServer) -> Http:
    return Http(server)


def best(engine: Engine, texts: list[str], **options: Any) -> list[list[str]]:
    """The engine's own n-best texts (the server's defaults: beam 4, length penalty 1)."""
    decoding = DecodingOptions(beam_size=options.get("beam_size", 4), num_hypotheses=options.get("n", 1))
    return [[h.text for h in hyps] for hyps in engine.translate(texts, decoding)]


def assert_serving(http: Http) -> None:
    status, _, body = http.call("GET", "/health")
    assert (status, body) == (200, {"status": "ok"})


# -- LibreTranslate's contract ---------------------------------------------------------------------------------


def test_translate_form_and_json_bodies(http: Http, engine: Engine) -> None:
    want = best(engine, TEXTS)
    status, _, body = http.form("/translate", {"q": TEXTS[0], "source": "en", "target": "de", "format": "text"})
    assert status == 200 and body == {"translatedText": want[0][0]}
    status, _, body = http.call("POST", "/translate", {"q": TEXTS, "source": "en", "target": "de", "format": "text"})
    assert status == 200 and body == {"translatedText": [w[0] for w in want]}


PARAGRAPH = (
    "The package contains the documentation. The server is running.\nThis is a test.\n\n"
    "Please read the manual. The file was not found."
)


def test_plain_text_is_translated_sentence_by_sentence_keeping_its_lines(http: Http, engine: Engine) -> None:
    """As LibreTranslate splits a text into lines and sentences: each sentence is the engine's translation of it
    alone, the line breaks come back. One model input for the whole paragraph dropped or merged sentences."""
    sentences = ["The package contains the documentation.", "The server is running.", "This is a test."]
    sentences += ["Please read the manual.", "The file was not found."]
    want = [h[0] for h in best(engine, sentences)]
    status, _, body = http.call("POST", "/translate", {"q": PARAGRAPH, "source": "en", "target": "de"})
    assert status == 200, body
    assert body["translatedText"] == f"{want[0]} {want[1]}\n{want[2]}\n\n{want[3]} {want[4]}"
    long_paragraph = " ".join([sentences[0]] * 60)  # 2,400 characters, over max_input_tokens as one input
    status, _, body = http.call("POST", "/translate", {"q": long_paragraph, "source": "en", "target": "de"})
    assert status == 200 and body["translatedText"] == " ".join([want[0]] * 60)


def test_alternatives_are_the_n_best(http: Http, engine: Engine) -> None:
    nbest = best(engine, [TEXTS[1]], n=3)[0]
    status, _, body = http.call(
        "POST", "/translate", {"q": TEXTS[1], "source": "en", "target": "de", "alternatives": 2}
    )
    assert status == 200
    assert body["translatedText"] == nbest[0]
    assert body["alternatives"] == [text for text in dict.fromkeys(nbest[1:]) if text != nbest[0]]
    status, _, body = http.call(
        "POST", "/translate", {"q": [TEXTS[1]], "source": "en", "target": "de", "alternatives": 2}
    )
    assert status == 200 and body["translatedText"] == [nbest[0]] and len(body["alternatives"]) == 1


def test_alternatives_for_a_sentence_over_max_input_bytes_give_its_translation(model_dir: Path, engine: Engine) -> None:
    """One sentence too long for one model input (max_input_bytes) was refused with alternatives asked for, and
    translated without: now it is a document either way, translated, with no alternatives (as for any document)."""
    sentence = "the cat sat on the mat and the dog sat on the rug and the bird sat on the tree"  # 79 bytes
    with BackgroundServer(config(model_dir, max_input_bytes=64)) as running:
        http = Http(running)
        fields = {"q": sentence, "source": "en", "target": "de"}
        status, _, plain = http.call("POST", "/translate", fields)
        assert status == 200 and plain["translatedText"]
        status, _, body = http.call("POST", "/translate", {**fields, "alternatives": 2})
        assert (status, body) == (200, {"translatedText": plain["translatedText"], "alternatives": []})
        status, _, body = http.call("POST", "/translate", {**fields, "q": "the cat sat", "alternatives": 2})
        assert status == 200 and body["translatedText"] == best(engine, ["the cat sat"])[0][0]


def test_json_alternatives_is_truncated_like_libretranslates_int(http: Http, engine: Engine) -> None:
    """LibreTranslate reads a JSON alternatives with ``int()``: 2.0 and 2.7 are 2 (both were 400s here); a form
    string must be an integer ("1.5" is a 400 there too), and NaN is not a number."""
    fields = {"q": TEXTS[1], "source": "en", "target": "de"}
    status, _, want = http.call("POST", "/translate", {**fields, "alternatives": 2})
    assert status == 200 and len(want["alternatives"]) == 2
    for number in (2.0, 2.7):
        status, _, body = http.call("POST", "/translate", {**fields, "alternatives": number})
        assert (status, body) == (200, want)
    status, _, body = http.call("POST", "/translate", {**fields, "alternatives": -0.5})
    assert (status, body) == (200, {"translatedText": want["translatedText"]})
    status, _, body = http.call("POST", "/translate", {**fields, "alternatives": 1e30})
    assert (status, body) == (400, {"error": "Invalid request: alternatives parameter must be <= 15"})
    not_a_number = {"error": "Invalid request: alternatives parameter is not a number"}
    assert http.form("/translate", {**fields, "alternatives": "1.5"})[::2] == (400, not_a_number)
    data = b'{"q": "Hello", "source": "en", "target": "de", "alternatives": NaN}'
    status, _, body = http.call("POST", "/translate", data=data, headers={"Content-Type": "application/json"})
    assert (status, body) == (400, not_a_number)


def test_suggest_is_libretranslates_403_when_suggestions_are_off(http: Http) -> None:
    """/frontend/settings says suggestions: false; LibreTranslate then answers POST /suggest 403 (it was a 404)."""
    assert http.call("GET", "/frontend/settings")[2]["suggestions"] is False
    refusal = (403, {"error": "Suggestions are disabled on this server."})
    fields = {"q": "Hello", "s": "Hallo", "source": "en", "target": "de"}
    assert http.form("/suggest", fields)[::2] == refusal
    assert http.call("POST", "/suggest", fields)[::2] == refusal
    status, headers, body = http.call("GET", "/suggest")
    assert status == 405 and headers["Allow"] == "POST" and "error" in body


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"q": "Hello", "source": "en", "target": "zz"}, "zz is not supported"),
        ({"q": "Hello", "source": "xx", "target": "de"}, "xx is not supported"),
        ({"source": "en", "target": "de"}, "Invalid request: missing q parameter"),
        ({"q": "Hello", "target": "de"}, "Invalid request: missing source parameter"),
        ({"q": "Hello", "source": "en"}, "Invalid request: missing target parameter"),
        ({"q": "Hello", "source": "en", "target": "de", "alternatives": "abc"},
         "Invalid request: alternatives parameter is not a number"),
        ({"q": "Hello", "source": "en", "target": "de", "alternatives": "99"},
         "Invalid request: alternatives parameter must be <= 15"),
        ({"q": "Hello", "source": "en", "target": "de", "format": "pdf"}, "pdf format is not supported"),
    ],
)  # fmt: skip
def test_libretranslate_400_messages(http: Http, fields: dict[str, str], message: str) -> None:
    for answer in (http.form("/translate", fields), http.call("POST", "/translate", fields)):
        status, _, body = answer
        assert (status, body) == (400, {"error": message})


def test_libretranslate_format_html_keeps_the_markup(http: Http) -> None:
    """format=html goes through the document layer: tags and attributes come back, the text between them changes."""
    page = '<p title="Help">The package contains <b>the documentation</b>.</p>'
    status, _, body = http.call("POST", "/translate", {"q": page, "source": "en", "target": "de", "format": "html"})
    assert status == 200, body
    translated = body["translatedText"]
    assert translated.startswith("<p title=") and translated.endswith("</p>") and "<b>" in translated
    assert "The package contains" not in translated


def test_source_auto_says_there_is_no_detector(http: Http) -> None:
    status, _, body = http.form("/translate", {"q": "Hello", "source": "auto", "target": "de"})
    assert status == 400 and "language detector" in body["error"]
    status, _, body = http.form("/detect", {"q": "Hello"})
    assert status == 404 and "error" in body


def test_languages_health_settings(http: Http) -> None:
    status, _, body = http.call("GET", "/languages")
    assert status == 200
    assert body[0] == {"code": "en", "name": "English", "targets": ["de"]}
    assert {entry["code"] for entry in body} == {"en", "de"}
    assert_serving(http)
    status, _, body = http.call("GET", "/frontend/settings")
    assert status == 200 and body["keyRequired"] is False and body["language"]["target"]["code"] == "de"
    assert body["charLimit"] == 1024 * 1024  # max_request_bytes: LibreTranslate's texts are documents


@pytest.mark.parametrize("path", ["/languages", "/health", "/frontend/settings", "/openapi.json", "/v1/models"])
def test_wrong_method_is_json_405(http: Http, path: str) -> None:
    status, headers, body = http.call("POST", path, data=b"")
    assert status == 405 and "GET" in headers["Allow"] and "error" in body
    status, headers, body = http.call("GET", "/translate")
    assert status == 405 and headers["Allow"] == "POST" and "error" in body


def test_unknown_path_is_json_404(http: Http) -> None:
    status, headers, body = http.call("GET", "/no/such/thing")
    assert status == 404 and headers["Content-Type"].startswith("application/json")
    assert body == {"error": "no such endpoint: /no/such/thing"}


# -- bad input on every endpoint -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "data", "fragment"),
    [
        ("/translate", b"{not json", "Invalid JSON format"),
        ("/translate", b"[1, 2]", "must be a JSON object"),
        ("/translate", b'{"q": 123, "source": "en", "target": "de"}', "q parameter must be a string"),
        ("/translate", b'{"q": ["a", 1], "source": "en", "target": "de"}', "q parameter must be a string"),
        ("/translate", b'{"q": "a", "source": 5, "target": "de"}', "source parameter must be a string"),
        ("/translate", b'{"q": "a", "source": "en", "target": "de", "alternatives": [1]}', "not a number"),
        ("/translate", b'{"q": "a\\u0000b", "source": "en", "target": "de"}', "control character U+0000"),
        ("/translate", b"\xff\xfe", "Invalid JSON format"),
        ("/v1/translate", b"{not json", "Invalid JSON format"),
        ("/v1/translate", b'{"texts": "a"}', "TranslateRequest"),
        ("/v1/translate", b'{"texts": ["a"], "bogus": 1}', "bogus"),
        ("/v1/translate", b'{"texts": ["a"], "options": {"beam_size": "x"}}', "beam_size"),
        ("/v1/translate", b'{"texts": ["a"], "options": {"beam_size": 99}}', "max_beam_size"),
        ("/v1/translate", b'{"texts": []}', "texts is empty"),
        ("/v1/translate/stream", b'{"texts": ["a"], "options": {"num_hypotheses": 9}}', "num_hypotheses"),
    ],
)
def test_bad_input_is_400_json(http: Http, path: str, data: bytes, fragment: str) -> None:
    status, _, body = http.call("POST", path, data=data, headers={"Content-Type": "application/json"})
    assert status == 400, body
    assert fragment in body["error"]
    assert_serving(http)


@pytest.mark.parametrize(
    ("content_type", "data", "fragment"),
    [
        ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="q"\r\n\r\nhi', "EOF"),
        ("multipart/form-data", b"--b\r\n\r\nx\r\n--b--\r\n", "boundary missed"),
        ("multipart/form-data; boundary=b", b"\x00\xff" * 1000, "starting boundary"),
        ("multipart/form-data; boundary=b", b"--b\r\nX: " + b"a" * 100_000 + b"\r\n\r\nx\r\n--b--\r\n", "8190"),
    ],
    ids=["truncated", "no boundary", "garbage", "huge part header"],
)
def test_malformed_form_bodies_are_400_json(http: Http, content_type: str, data: bytes, fragment: str) -> None:
    """aiohttp raised these out of ``request.post()`` and they became 500s; the client's bytes are not echoed."""
    status, _, body = http.call(
        "POST", "/translate?source=en&target=de", data=data, headers={"Content-Type": content_type}
    )
    assert status == 400 and "malformed form body" in body["error"] and fragment in body["error"], body
    assert "aaaa" not in body["error"]
    assert_serving(http)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/translate", "application/json"),
        ("/translate", "application/x-www-form-urlencoded"),
        ("/v1/translate", "application/json"),
        ("/translate_file", "multipart/form-data; boundary=b"),
    ],
)
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_that_does_not_decode_is_400_json(http: Http, path: str, content_type: str, encoding: str) -> None:
    """A Content-Encoding the body does not match was a plain-text 500 ('Server got itself in trouble')."""
    fields = {"q": "The server is running.", "source": "en", "target": "de"}
    plain = (json.dumps(fields) if content_type == "application/json" else urllib.parse.urlencode(fields)).encode()
    headers = {"Content-Type": content_type, "Content-Encoding": encoding}
    status, answer_headers, body = http.call("POST", path, data=plain, headers=headers)
    assert status == 400 and answer_headers["Content-Type"].startswith("application/json"), body
    assert body == {"error": f"the request body could not be read: Can not decode content-encoding: {encoding}"}
    assert_serving(http)
    if path == "/translate":  # the same body really compressed is served
        packed = gzip.compress(plain)
        status, _, body = http.call("POST", path, data=packed, headers={**headers, "Content-Encoding": "gzip"})
        assert status == 200 and body["translatedText"], body


def test_limits_and_huge_bodies(http: Http) -> None:
    long_text = "word " * 2000  # 10000 bytes > max_input_bytes 8192, the limit of one model input
    status, _, body = http.call("POST", "/v1/translate", {"texts": [long_text]})
    assert status == 400 and "max_input_bytes" in body["error"]
    too_much = "A short sentence. " * 60_000  # 1.08 MB > max_request_bytes: LibreTranslate's q is a document
    status, _, body = http.call("POST", "/translate", {"q": too_much, "source": "en", "target": "de"})
    assert status == 400 and "max_request_bytes" in body["error"]
    huge = b'{"q": "' + b"a" * (5 * 1024 * 1024) + b'"}'  # over max_message_bytes (4 MiB)
    for path in ("/translate", "/v1/translate", "/v1/translate/stream"):
        status, _, body = http.call("POST", path, data=huge, headers={"Content-Type": "application/json"})
        assert status == 413 and "max_message_bytes" in body["error"]
    status, _, body = http.call("POST", "/v1/translate", {"texts": ["a"]}, headers={"X-Timeout-Ms": "soon"})
    assert status == 400 and "X-Timeout-Ms" in body["error"]
    assert_serving(http)


def test_connection_flood_leaves_the_server_serving(http: Http, server: BackgroundServer, engine: Engine) -> None:
    port = server.server.http_port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]  # open, send nothing
    try:
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")  # a body that never comes
        status, _, body = http.call("POST", "/v1/translate", {"texts": [TEXTS[0]]})
        assert status == 200 and body["translations"][0]["hypotheses"][0]["text"] == best(engine, [TEXTS[0]])[0][0]
    finally:
        for sock in [*idle, half]:
            sock.close()
    assert_serving(http)


# -- the native API, OpenAPI, streaming ------------------------------------------------------------------------


def test_v1_translate_mirrors_the_proto(http: Http, engine: Engine) -> None:
    nbest = best(engine, TEXTS[:2], n=2)
    request = {"texts": TEXTS[:2], "options": {"num_hypotheses": 2}, "request_id": "r1"}
    status, _, body = http.call("POST", "/v1/translate", request)
    assert status == 200 and body["request_id"] == "r1"
    got = [[h["text"] for h in t["hypotheses"]] for t in body["translations"]]
    assert got == nbest
    assert all(isinstance(h["score"], float) for t in body["translations"] for h in t["hypotheses"])


def test_the_openapi_document_lists_the_statuses_the_server_gives(http: Http) -> None:
    """/v1/translate answered 404 for an unknown model and the stream 504 and 404, which the document left out."""
    spec = http.call("GET", "/openapi.json")[2]
    slow = {"texts": ["The package contains the documentation and the server is running now. " * 3] * 32,
            "options": {"beam_size": 16, "max_length": 512}}  # fmt: skip
    cases = [
        ("/v1/translate", {"texts": ["x"], "model": "nope"}, {}),
        ("/v1/translate", {"texts": []}, {}),
        ("/v1/translate", slow, {"X-Timeout-Ms": "1"}),
        ("/v1/translate/stream", {"texts": ["x"], "model": "nope"}, {}),
        ("/v1/translate/stream", {"texts": []}, {}),
        ("/v1/translate/stream", slow, {"X-Timeout-Ms": "1"}),
        ("/translate", {"q": "x", "source": "en", "target": "zz"}, {}),
        ("/suggest", {"q": "x", "s": "y", "source": "en", "target": "de"}, {}),
    ]
    seen = set()
    for path, body, headers in cases:
        status, _, answer = http.call("POST", path, body, headers=headers)
        assert status >= 400 and "error" in answer, (path, status, answer)
        assert str(status) in spec["paths"][path]["post"]["responses"], (path, status, answer)
        seen.add((path, status))
    assert {("/v1/translate", 404), ("/v1/translate", 504), ("/v1/translate/stream", 504)} <= seen
    assert_serving(http)


def test_v1_models_and_openapi(http: Http, server: BackgroundServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        info = pb_grpc.TranslatorStub(channel).GetModelInfo(pb.GetModelInfoRequest())
    status, _, body = http.call("GET", "/v1/models")
    assert status == 200 and [m["name"] for m in body["models"]] == [info.name]
    assert body["models"][0]["limits"]["max_beam_size"] == info.limits.max_beam_size
    status, _, one = http.call("GET", f"/v1/models/{info.name}")
    assert status == 200 and one == body["models"][0]
    status, _, missing = http.call("GET", "/v1/models/nope")
    assert status == 404 and "nope" in missing["error"]
    status, _, spec = http.call("GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    assert http.call("GET", "/spec")[2] == spec  # LibreTranslate's path for it
    openapi_spec_validator.validate(spec)  # a valid OpenAPI 3 document, by the reference validator
    assert {"/translate", "/v1/translate", "/v1/translate/stream", "/v1/models/{name}"} <= set(spec["paths"])
    assert {"/translate_file", "/download_file/{token}", "/v1/translate_file"} <= set(spec["paths"])
    schemes = spec["components"]["securitySchemes"]
    assert (schemes["bearerAuth"]["type"], schemes["bearerAuth"]["scheme"]) == ("http", "bearer")
    assert schemes["libreApiKey"]["name"] == "api_key" and "body" in schemes["libreApiKey"]["description"]
    assert_security(spec, keys_required=False)
    request_fields = set(spec["components"]["schemas"]["TranslateRequest"]["properties"])
    assert request_fields == {f.name for f in pb.TranslateRequest.DESCRIPTOR.fields}
    status, headers, page = http.call("GET", "/docs")
    assert status == 200 and "/v1/translate/stream" in page and headers["Content-Type"].startswith("text/html")


KEYED_OPERATIONS = {
    ("/translate", "post"): ["libreApiKey", "bearerAuth"],
    ("/translate_file", "post"): ["libreApiKey", "bearerAuth"],
    ("/v1/translate", "post"): ["bearerAuth"],
    ("/v1/translate/stream", "post"): ["bearerAuth"],
    ("/v1/translate_file", "post"): ["bearerAuth"],
    ("/v1/models", "get"): ["bearerAuth"],
    ("/v1/models/{name}", "get"): ["bearerAuth"],
}


def assert_security(spec: dict[str, Any], keys_required: bool) -> None:
    """Every operation states its keys: the keyed ones their schemes (and ``{}`` only when no key is required),
    the public ones none."""
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            wanted = [{scheme: []} for scheme in KEYED_OPERATIONS.get((path, method), [])]
            if wanted and not keys_required:
                wanted.append({})
            assert operation["security"] == wanted, (path, method)


def read_events(response) -> list[tuple[str, dict]]:
    events, name = [], None
    for raw in response:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: ") :])))
    return events


def test_sse_streams_stable_prefixes_then_the_result(http: Http, engine: Engine) -> None:
    want = best(engine, TEXTS)
    data = json.dumps({"texts": TEXTS}).encode()
    request = urllib.request.Request(http.base + "/v1/translate/stream", data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        events = read_events(response)
    assert events[-1][0] == "result"
    assert [t["hypotheses"][0]["text"] for t in events[-1][1]["translations"]] == [w[0] for w in want]
    partials = [data for name, data in events[:-1]]
    assert partials and all(name == "partial" for name, _ in events[:-1])
    for index in range(len(TEXTS)):
        texts = [p["text"] for p in partials if p["index"] == index]
        assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
        assert all(want[index][0].startswith(text) for text in texts)


# -- CORS -------------------------------------------------------------------------------------------------------


def test_cors_default_is_same_origin_only(http: Http) -> None:
    status, headers, _ = http.call("GET", "/languages", headers={"Origin": "https://elsewhere.example"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    preflight = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"}
    status, _, _ = http.call("OPTIONS", "/translate", headers=preflight)
    assert status == 403


def test_cors_allows_listed_origins(model_dir: Path) -> None:
    with BackgroundServer(config(model_dir, http_cors_origins="https://app.example")) as server:
        http = Http(server)
        status, headers, _ = http.call("GET", "/languages", headers={"Origin": "https://app.example"})
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://app.example"
        preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        status, headers, _ = http.call("OPTIONS", "/v1/translate/stream", headers=preflight)
        assert status == 204 and "POST" in headers["Access-Control-Allow-Methods"]
        status, headers, _ = http.call("GET", "/languages", headers={"Origin": "https://other.example"})
        assert "Access-Control-Allow-Origin" not in headers


# -- keys, a real third-party client ----------------------------------------------------------------------------


def test_libretranslatepy_without_a_key(http: Http, engine: Engine) -> None:
    client = LibreTranslateAPI(http.base)
    assert client.translate(TEXTS[2], "en", "de") == best(engine, [TEXTS[2]])[0][0]
    assert client.languages()[0]["code"] == "en"


def test_keys_libretranslatepy_and_bearer(model_dir: Path, engine: Engine, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# keys\nsecret-key-1\n")
    with BackgroundServer(config(model_dir, auth_token_file=tokens)) as server:
        http = Http(server)
        good = LibreTranslateAPI(http.base, api_key="secret-key-1")
        assert good.translate(TEXTS[0], "en", "de") == best(engine, [TEXTS[0]])[0][0]
        for key, message in ((None, "Please contact the server operator"), ("wrong", "Invalid API key")):
            with pytest.raises(urllib.error.HTTPError) as caught:
                LibreTranslateAPI(http.base, api_key=key).translate(TEXTS[0], "en", "de")
            assert caught.value.code == 403 and message in json.loads(caught.value.read())["error"]
        fields = {"q": TEXTS, "source": "en", "target": "de", "api_key": "secret-key-1"}
        status, _, body = http.call("POST", "/translate", fields)
        assert status == 200 and body["translatedText"] == [w[0] for w in best(engine, TEXTS)]
        status, headers, body = http.call("POST", "/v1/translate", {"texts": ["a"]})
        assert status == 401 and "Bearer" in headers["WWW-Authenticate"]
        auth = {"Authorization": "Bearer secret-key-1"}
        status, _, body = http.call("POST", "/v1/translate", {"texts": [TEXTS[0]]}, headers=auth)
        assert status == 200
        assert_serving(http)  # health stays open, as over gRPC
        status, _, spec = http.call("GET", "/openapi.json")
        openapi_spec_validator.validate(spec)
        assert_security(spec, keys_required=True)  # no anonymous alternative where keys are required
        samples = metrics(server.metrics_url)
        refused = {k: v for k, v in samples.items() if k[0] == "nmtserve_unauthenticated_requests_total"}
        assert sum(refused.values()) == 3


def test_the_documented_query_api_key_works_with_every_body(model_dir: Path, engine: Engine, tmp_path: Path) -> None:
    """The OpenAPI document's libreApiKey is ``in: query`` (where generated clients put it); the query string was
    read only for form bodies, so a JSON /translate or a multipart /translate_file with ?api_key= got a 403."""
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-key-1\n")
    with BackgroundServer(config(model_dir, auth_token_file=tokens)) as server:
        http = Http(server)
        spec = http.call("GET", "/openapi.json")[2]
        assert spec["components"]["securitySchemes"]["libreApiKey"]["in"] == "query"
        fields = {"q": TEXTS[0], "source": "en", "target": "de"}
        status, _, body = http.call("POST", "/translate?api_key=secret-key-1", fields)
        assert (status, body) == (200, {"translatedText": best(engine, [TEXTS[0]])[0][0]})
        status, _, body = http.call("POST", "/translate?api_key=wrong", fields)
        assert (status, body) == (403, {"error": "Invalid API key"})
        status, _, body = http.call("POST", "/translate?api_key=wrong", {**fields, "api_key": "secret-key-1"})
        assert status == 200  # the body's field, LibreTranslate's place, comes first
        multipart = (
            b'--b\r\nContent-Disposition: form-data; name="source"\r\n\r\nen\r\n'
            b'--b\r\nContent-Disposition: form-data; name="target"\r\n\r\nde\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\n" + TEXTS[0].encode() + b"\r\n--b--\r\n"
        )
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        status, _, body = http.call("POST", "/translate_file?api_key=secret-key-1", data=multipart, headers=headers)
        assert status == 200 and "/download_file/" in body["translatedFileUrl"], body
        status, _, body = http.call("POST", "/translate_file", data=multipart, headers=headers)
        assert status == 403


# -- overload, disconnects, slow readers -------------------------------------------------------------------------


def test_queue_full_is_429_with_retry_after_and_disconnect_cancels(model_dir: Path, engine: Engine) -> None:
    slow = SlowEngine(engine, delay=0.02)
    cfg = config(model_dir, max_batch_size=1, max_queue_size=2, max_texts_per_request=2, batching="request")
    with BackgroundServer(cfg, engine=slow) as server:
        http = Http(server)
        results: list = []
        busy = threading.Thread(target=lambda: results.append(http.call("POST", "/v1/translate", {"texts": TEXTS[:2]})))
        busy.start()
        wait_for(lambda: server.server.state.inflight == 1 and server.server._scheduler.running == 1)
        status, headers, body = http.call("POST", "/translate", {"q": TEXTS[:2], "source": "en", "target": "de"})
        assert status == 429 and int(headers["Retry-After"]) >= 1 and "queue is full" in body["error"]
        busy.join(30)
        assert results[0][0] == 200
        # A deadline: X-Timeout-Ms plays grpc-timeout's part.
        status, _, body = http.call("POST", "/v1/translate", {"texts": [TEXTS[0]]}, headers={"X-Timeout-Ms": "50"})
        assert status == 504 and "deadline" in body["error"]
        wait_for(lambda: server.server.state.inflight == 0)  # so that the "one in flight" below is the next request
        # A client that disconnects mid-request: its handler is cancelled and its sentences leave the engine.
        sock = socket.create_connection(("127.0.0.1", server.server.http_port))
        payload = json.dumps({"texts": [TEXTS[0]]}).encode()
        head = (
            "POST /v1/translate HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Type: application/json\r\nContent-Length: {len(payload)}"
        )
        sock.sendall(head.encode() + b"\r\n\r\n" + payload)
        wait_for(lambda: server.server.state.inflight == 1)
        sock.close()
        key = ("nmtserve_requests_total", (("code", "CANCELLED"), ("method", "HTTP /v1/translate")))
        wait_for(lambda: metrics(server.metrics_url).get(key) == 1.0)
        expired = ("nmtserve_requests_total", (("code", "DEADLINE_EXCEEDED"), ("method", "HTTP /v1/translate")))
        assert metrics(server.metrics_url)[expired] == 1.0
        wait_for(lambda: server.server.state.inflight == 0)
        assert_serving(http)


# -- the page in a real browser ----------------------------------------------------------------------------------


def chromium_driver():
    """Headless Debian chromium through chromedriver (installed by .ci/run). A missing browser fails the test:
    CI must not pass without having run the page."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver, "chromium and chromium-driver are needed (apt-get install -y chromium chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1000,800"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_page_in_a_browser(http: Http, engine: Engine) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    nbest = best(engine, [TEXTS[0]], n=3)[0]
    browser = chromium_driver()
    try:
        browser.get(http.base + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_element(By.ID, "target").get_attribute("value") == "de")
        browser.find_element(By.ID, "text").send_keys(TEXTS[0])
        browser.find_element(By.ID, "go").click()
        wait.until(lambda b: b.find_element(By.ID, "status").text == "done")
        assert browser.find_element(By.ID, "error").text == ""
        output = browser.find_element(By.ID, "output")
        assert output.get_attribute("textContent") == nbest[0]
        assert int(output.get_attribute("data-partials")) >= 1  # the stable prefix was shown while decoding
        rows = [
            row.find_elements(By.TAG_NAME, "td") for row in browser.find_elements(By.CSS_SELECTOR, "#nbestTable tr")
        ]
        cells = [row for row in rows if row]  # the header row has th, not td
        assert [row[1].get_attribute("textContent") for row in cells] == nbest
        assert all(float(row[2].text) <= 0 for row in cells)
    finally:
        browser.quit()


def test_a_stream_nobody_reads_is_dropped(model_dir: Path) -> None:
    """Pipelined streams on one connection that is never read: once the socket buffers are full the server stops
    producing, drops the connection after ``http_slow_reader_timeout_s`` and cancels the work; it keeps serving."""
    cfg = config(model_dir, http_slow_reader_timeout_s=0.5, max_texts_per_request=256)
    words = " ".join(TEXTS).split()
    texts = [" ".join(words[(i + k) % len(words)] for k in range(60)) for i in range(256)]  # ~1 MB of events each
    payload = json.dumps({"texts": texts, "options": {"beam_size": 1}}).encode()
    head = "POST /v1/translate/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(payload)}"
    with BackgroundServer(cfg) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's buffer fills
        sock.connect(("127.0.0.1", server.server.http_port))
        try:
            sock.sendall((head.encode() + b"\r\n\r\n" + payload) * 12)  # ~12 MB if every event were buffered
            key = ("nmtserve_requests_total", (("code", "CANCELLED"), ("method", "HTTP /v1/translate/stream")))
            wait_for(lambda: metrics(server.metrics_url).get(key) == 1.0, timeout=120)
            wait_for(lambda: server.server.state.inflight == 0)
            # the engine drops the cancelled sentences at its next step; the gauges follow at the end of it
            idle = (("nmtserve_queue_depth", ()), ("nmtserve_running_sentences", ()))
            wait_for(lambda: all(metrics(server.metrics_url)[gauge] == 0 for gauge in idle), timeout=30)
            samples = metrics(server.metrics_url)
            done = samples.get(("nmtserve_requests_total", (("code", "OK"), ("method", "HTTP /v1/translate/stream"))))
            assert (done or 0) < 11  # the rest of the pipeline was never run
        finally:
            sock.close()
        assert_serving(Http(server))


# -- nmtserve loadtest --http --------------------------------------------------------------------------------------


def test_loadtest_over_http_open_and_closed_loop(server: BackgroundServer, tmp_path: Path) -> None:
    from nmtserve.cli.main import main

    lines = tmp_path / "input.en"
    lines.write_text("\n".join(TEXTS) + "\n")
    key = ("nmtserve_requests_total", (("code", "OK"), ("method", "HTTP /v1/translate")))
    before = metrics(server.metrics_url).get(key, 0)
    target = f"127.0.0.1:{server.server.http_port}"
    common = ["loadtest", "--http", "--server", target, "--input", str(lines), "--out", str(tmp_path), "--quiet"]
    assert main([*common, "--rate", "20", "--duration", "1", "--name", "open"]) == 0
    assert main([*common, "--concurrency", "2", "--once", "--name", "closed"]) == 0
    opened = json.loads((tmp_path / "open.json").read_text())
    closed = json.loads((tmp_path / "closed.json").read_text())
    assert opened["protocol"] == "http" and opened["model"]["precision"] == "fp32"
    sent = opened["levels"][0]["requests"] + closed["levels"][0]["requests"]
    assert opened["levels"][0]["ok"] == opened["levels"][0]["requests"] > 0
    assert closed["levels"][0]["ok"] == closed["levels"][0]["requests"] == len(TEXTS)
    assert metrics(server.metrics_url).get(key, 0) - before == sent  # every one reached the server over HTTP


# -- the gRPC port's TLS on the HTTP port -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """test_security's certificates: a CA, a server and a client certificate it signed, and a rogue CA's client."""
    return make_pki(tmp_path_factory.mktemp("http-pki"))


def test_https_and_mutual_tls(model_dir: Path, engine: Engine, pki: Pki) -> None:
    import ssl

    cfg = config(model_dir, tls_cert=pki.server.cert, tls_key=pki.server.key, tls_client_ca=pki.ca.cert)
    want = best(engine, [TEXTS[0]])[0][0]
    body = json.dumps({"q": TEXTS[0], "source": "en", "target": "de"}).encode()
    with BackgroundServer(cfg) as server:
        url = f"https://127.0.0.1:{server.server.http_port}/translate"

        def post(context: ssl.SSLContext) -> dict:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30, context=context) as answer:
                return json.loads(answer.read())

        trusted = ssl.create_default_context(cafile=str(pki.ca.cert))
        trusted.load_cert_chain(str(pki.client.cert), str(pki.client.key))
        assert post(trusted) == {"translatedText": want}
        anonymous = ssl.create_default_context(cafile=str(pki.ca.cert))  # no client certificate
        rogue = ssl.create_default_context(cafile=str(pki.ca.cert))
        rogue.load_cert_chain(str(pki.rogue_client.cert), str(pki.rogue_client.key))
        for context in (anonymous, rogue):
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                post(context)
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext on the TLS port
            urllib.request.urlopen(url.replace("https", "http"), data=body, timeout=10)


def test_not_serving_until_loaded_then_draining(model_dir: Path, engine: Engine) -> None:
    server = BackgroundServer(config(model_dir), load=False)
    with server:
        http = Http(server)
        status, _, body = http.call("GET", "/health")
        assert status == 503 and "still loading" in body["error"]
        fields = {"q": TEXTS[0], "source": "en", "target": "de"}
        for path, payload in (("/translate", fields), ("/v1/translate", {"texts": [TEXTS[0]]})):
            status, headers, body = http.call("POST", path, payload)
            assert status == 503 and headers["Retry-After"] == "1" and "error" in body
        server.load()
        assert_serving(http)
        assert http.call("POST", "/translate", fields)[2] == {"translatedText": best(engine, [TEXTS[0]])[0][0]}
        assert server.drain(timeout=5)
        status, _, body = http.call("GET", "/health")
        assert status == 503 and "draining" in body["error"]
        status, _, body = http.call("POST", "/v1/translate", {"texts": [TEXTS[0]]})
        assert status == 503 and "draining" in body["error"]


def test_a_stream_whose_client_leaves_is_cancelled(server: BackgroundServer) -> None:
    words = " ".join(TEXTS).split()
    texts = [" ".join(words[(i + k) % len(words)] for k in range(60)) for i in range(64)]
    payload = json.dumps({"texts": texts, "options": {"beam_size": 1}}).encode()
    head = "POST /v1/translate/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(payload)}\r\n\r\n"
    key = ("nmtserve_requests_total", (("code", "CANCELLED"), ("method", "HTTP /v1/translate/stream")))
    before = metrics(server.metrics_url).get(key, 0)
    with socket.create_connection(("127.0.0.1", server.server.http_port)) as sock:
        sock.sendall(head.encode() + payload)
        received = b""
        while b"event: partial" not in received:  # it started streaming; then the client leaves
            chunk = sock.recv(65536)
            assert chunk, "the stream ended before its first partial"
            received += chunk
    wait_for(lambda: metrics(server.metrics_url).get(key, 0) == before + 1)
    wait_for(lambda: server.server.state.inflight == 0)
    wait_for(lambda: metrics(server.metrics_url)[("nmtserve_running_sentences", ())] == 0)  # they left the batch
    assert_serving(Http(server))


def test_connections_beyond_the_cap_get_503(model_dir: Path) -> None:
    with BackgroundServer(config(model_dir, http_max_connections=5)) as server:
        http, port = Http(server), server.server.http_port
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        try:
            wait_for(lambda: len(server.server._http._runner.server.connections) == 5)
            status, headers, body = http.call("GET", "/health")
            assert status == 503 and headers["Retry-After"] == "1" and "http_max_connections" in body["error"]
        finally:
            for sock in idle:
                sock.close()
        wait_for(lambda: len(server.server._http._runner.server.connections) == 0)
        assert_serving(http)


def test_http_port_without_the_http_extra_is_a_clear_configuration_error(model_dir: Path) -> None:
    """Where aiohttp is not installed (the image's lock), --http-port fails at start-up with exit 2 and says why,
    and the CLI itself still works."""
    import subprocess
    import sys

    code = "import sys; sys.modules['aiohttp'] = None; from nmtserve.cli.main import main; sys.exit(main())"
    flags = ["serve", "--model", str(model_dir), "--port", "0", "--metrics-port", "0", "--http-port", str(free_port())]
    done = subprocess.run(
        [sys.executable, "-c", code, *flags, "--no-warmup", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "http_port needs the http extra: pip install 'nmtserve[http]'" in done.stderr + done.stdout
