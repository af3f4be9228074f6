"""Hostile HTTP clients found by an attack sweep, each against a real server on 127.0.0.1 (the tiny exported model):
bodies that crash the JSON parser, error messages that quoted request texts.
Each case checks the offender's answer and that a bystander is served.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_http_server import Http, config

from nmtserve.export.testing import tiny_export
from nmtserve.server.background import BackgroundServer

PRIVATE = "my private sentence about the merger"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "tiny-model-attack", "fp32")


@pytest.fixture(scope="module")
def server(model_dir: Path):
    with BackgroundServer(config(model_dir)) as running:
        yield running


def bystander_is_served(http: Http) -> None:
    status, _, body = http.call("POST", "/v1/translate", json_body={"texts": ["open the file"]})
    assert status == 200, body
    assert body["translations"][0]["hypotheses"][0]["text"]


@pytest.mark.parametrize("path", ["/v1/translate", "/v1/translate/stream", "/translate"])
@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"q": ' + b'{"a": ' * 50_000], ids=["arrays", "objects"])
def test_deeply_nested_json_is_a_400(
    server: BackgroundServer, path: str, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """json.loads raises RecursionError (not a JSONDecodeError) past ~1,000 levels: the answer was aiohttp's
    plain-text 500 'Server got itself in trouble' and an ERROR traceback in the log, for a 100 KB body."""
    http = Http(server)
    with caplog.at_level(logging.ERROR):
        status, headers, answer = http.call("POST", path, data=body, headers={"Content-Type": "application/json"})
    assert status == 400, answer
    assert headers["Content-Type"].startswith("application/json")
    assert "nested too deeply" in answer["error"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no traceback for bad input"
    bystander_is_served(http)


@pytest.mark.parametrize("texts", [PRIVATE, {"text": PRIVATE}, 7, True], ids=["string", "object", "number", "bool"])
def test_texts_of_the_wrong_json_type_are_refused_without_quoting_them(server: BackgroundServer, texts) -> None:
    """``{"texts": "..."}`` (LibreTranslate's ``q`` is a string, so clients send it) was answered by json_format's
    message 'repeated field texts must be in [] which is <the text>': request texts never appear in errors."""
    http = Http(server)
    for path in ("/v1/translate", "/v1/translate/stream"):
        status, _, answer = http.call("POST", path, json_body={"texts": texts})
        assert status == 400, answer
        assert "texts must be an array of strings" in answer["error"]
        assert PRIVATE not in answer["error"] and "merger" not in answer["error"]
