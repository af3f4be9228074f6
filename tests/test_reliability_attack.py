"""Hostile HTTP clients found by an attack sweep, each against a real server on 127.0.0.1 (the tiny exported model):
bodies that crash the JSON parser, error messages that quoted request texts, connections that hold a slot forever
by sending nothing or a byte at a time. Each case checks the offender's answer and that a bystander is served.
No test asserts a duration: the waits are generous bounds that only catch a hang.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pytest
from test_http_server import Http, config

from nmtserve.export.testing import tiny_export
from nmtserve.server.background import BackgroundServer

HANG_S = 30.0  # far beyond the 1 s timeouts the servers here are given: only a hang reaches it
PRIVATE = "my private sentence about the merger"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "tiny-model-attack", "fp32")


@pytest.fixture(scope="module")
def server(model_dir: Path):
    with BackgroundServer(config(model_dir, http_idle_timeout_s=1.0, http_body_timeout_s=1.0)) as running:
        yield running


@pytest.fixture
def four_slots(model_dir: Path):
    """A server with 4 connection slots (http_max_connections) and a 1 s idle timeout, for this test alone."""
    with BackgroundServer(config(model_dir, http_max_connections=4, http_idle_timeout_s=1.0)) as running:
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


def read_until_closed(sock: socket.socket) -> bytes:
    """What the server sends before it closes ``sock``; fails if it has not closed it within HANG_S."""
    sock.settimeout(HANG_S)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_idle_and_slow_header_connections_are_closed(four_slots: BackgroundServer) -> None:
    """Connections that send nothing, or headers a byte at a time, were kept for aiohttp's default keep-alive
    timeout of 3,630 s: four of them (http_max_connections here) locked every other client out with 503s for an
    hour (on the old code the first read below hangs). Now each is closed after http_idle_timeout_s, and then a
    bystander is served. (Whether the slots were full meanwhile is not asserted: with a 1 s timeout on a busy
    machine the first may already be closed.)"""
    http = Http(four_slots)
    port = four_slots.server.http_port
    idle = socket.create_connection(("127.0.0.1", port))
    after_answer = socket.create_connection(("127.0.0.1", port))
    after_answer.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # one answer, then idle keep-alive
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        for sock in slow:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers begun, never finished
        for sock in slow:  # trickle a header byte every 0.2 s: arriving bytes do not restart the timer
            for _ in range(3):
                sock.sendall(b"X")
                time.sleep(0.2)
        assert read_until_closed(idle) == b""
        assert read_until_closed(after_answer).startswith(b"HTTP/1.1 200")
        for sock in slow:
            assert read_until_closed(sock) == b""
        bystander_is_served(http)
    finally:
        for sock in (idle, after_answer, *slow):
            sock.close()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/translate", "application/json"),
        ("/translate", "application/x-www-form-urlencoded"),
        ("/translate_file", "multipart/form-data; boundary=XyZ"),
        ("/v1/translate_file", "multipart/form-data; boundary=XyZ"),
    ],
)
def test_a_body_trickled_byte_by_byte_is_answered_408(server: BackgroundServer, path: str, content_type: str) -> None:
    """A body announced as 1,000 bytes and sent a byte every 0.1 s held its connection and handler for as long as
    the client kept sending (aiohttp has no body timeout). Now: 408 naming http_body_timeout_s, connection closed."""
    http = Http(server)
    sock = socket.create_connection(("127.0.0.1", server.server.http_port))
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 1000\r\n\r\n"
        sock.sendall(head.encode() + b"--XyZ\r\n")
        sock.settimeout(0.1)
        answer = b""
        deadline = time.monotonic() + HANG_S
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"a")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert "http_body_timeout_s" in body["error"]
        bystander_is_served(http)
    finally:
        sock.close()
