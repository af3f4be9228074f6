"""The gRPC API through a second protobuf and HTTP/2 stack: a Node.js client (grpc-js with proto-loader, reading
``protos/nmtserve/v1/translator.proto`` at run time, as a JavaScript team would) against a real server on
127.0.0.1. It catches what Python-only tests cannot: proto3 ``optional`` fields as other runtimes see them, gzip
from another compressor, error details and trailers, the bidirectional stream's framing, and the standard health
service. The client (``tests/interop/node/client.mjs``) prints what it saw; this test compares it with the
offline engine. Node.js and npm are needed (``.ci/run`` installs them from apt); the npm packages are pinned by
``package-lock.json`` and installed with ``npm ci``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "tests" / "interop" / "node"
PROTO = ROOT / "protos" / "nmtserve" / "v1" / "translator.proto"
TEXTS = ["The package contains the documentation.", "Save the file.", "Open the settings and select a printer."]
INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 3, 4, 5  # grpc status codes, as numbers on the wire


@pytest.fixture(scope="module")
def node_client() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "Node.js and npm are needed (apt-get install -y nodejs npm)"
    if not (CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CLIENT, check=True, timeout=300)
    return Path(node)


@pytest.fixture(scope="module")
def seen(node_client: Path, demo_model_dir: Path) -> dict:
    config = ServerConfig(model=demo_model_dir, port=0, metrics_port=0, threads=1, warmup=False)
    with BackgroundServer(config) as server:
        done = subprocess.run(
            [str(node_client), "client.mjs", server.address, str(PROTO)],
            cwd=CLIENT,
            env={**os.environ, "INTEROP_TEXTS": json.dumps(TEXTS)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def offline(engine: Engine, texts: list[str], options: DecodingOptions) -> list[list[dict]]:
    return [[{"text": h.text, "score": h.score} for h in nbest] for nbest in engine.translate(texts, options)]


def assert_same(got: list[list[dict]], want: list[list[dict]]) -> None:
    assert [[h["text"] for h in nbest] for nbest in got] == [[h["text"] for h in nbest] for nbest in want]
    for got_nbest, want_nbest in zip(got, want, strict=True):
        for got_h, want_h in zip(got_nbest, want_nbest, strict=True):
            assert got_h["score"] == pytest.approx(want_h["score"], rel=1e-6, abs=1e-6)


NBEST = DecodingOptions(beam_size=4, num_hypotheses=2)


def test_unary_and_gzip_translations_equal_the_engines(seen: dict, demo_engine: Engine) -> None:
    want = offline(demo_engine, TEXTS, NBEST)
    assert_same(seen["unary"], want)
    assert_same(seen["gzip"], want)
    # proto3 optional: an unset score is absent for the other runtime too, not a 0.0 it cannot tell apart
    assert [[h["score"] for h in nbest] for nbest in seen["unary_no_scores"]] == [[None]]


def test_errors_carry_the_status_and_a_message_naming_the_field(seen: dict) -> None:
    beam = seen["too_wide_beam"]["error"]
    assert beam["code"] == INVALID_ARGUMENT
    assert "options.beam_size" in beam["details"] and "max_beam_size" in beam["details"]
    assert seen["no_texts"]["error"]["code"] == INVALID_ARGUMENT and "texts" in seen["no_texts"]["error"]["details"]
    assert seen["unknown_model"]["error"]["code"] == NOT_FOUND
    assert "no-such-model" in seen["unknown_model"]["error"]["details"]
    assert seen["deadline"]["error"]["code"] == DEADLINE_EXCEEDED
    assert seen["after_deadline"] == "ok"  # a call that ran out of time harms no later call


def test_model_info_and_list_models_as_another_runtime_reads_them(seen: dict, demo_engine: Engine) -> None:
    info = seen["model_info"]
    assert (info["name"], info["source_language"], info["target_language"]) == ("nmtserve-en-de-demo", "en", "de")
    assert info["vocab_size"] == demo_engine.info.vocab_size
    assert info["state"] == "MODEL_STATE_READY" and info["is_default"] and info["serving"]
    assert info["limits"]["max_beam_size"] == ServerConfig().max_beam_size
    defaults = info["default_options"]  # "every field set": the optional ones must arrive as present
    assert defaults["_length_penalty"] == "length_penalty" and defaults["_return_scores"] == "return_scores"
    assert [m["name"] for m in seen["list_models"]["models"]] == ["nmtserve-en-de-demo"]


def test_the_stream_answers_each_request_by_id_and_a_bad_one_alone(seen: dict, demo_engine: Engine) -> None:
    stream = seen["stream"]
    assert stream["status"]["code"] == 0, stream["status"]
    finals = {r["request_id"]: r for r in stream["seen"] if r["translations"] or r["error"]}
    assert sorted(finals) == ["a", "b", "bad"]
    assert_same(finals["a"]["translations"], offline(demo_engine, TEXTS[:2], NBEST))
    assert finals["bad"]["error"]["code"] == INVALID_ARGUMENT and "beam_size" in finals["bad"]["error"]["message"]
    default = DecodingOptions(beam_size=ServerConfig().beam_size)
    b_final = offline(demo_engine, TEXTS[-1:], default)
    assert_same(finals["b"]["translations"], b_final)
    partials = [p for r in stream["seen"] if r["request_id"] == "b" for p in r["partials"]]
    assert partials and all(p["index"] == 0 and b_final[0][0]["text"].startswith(p["text"]) for p in partials)


def test_the_standard_health_service_says_serving(seen: dict) -> None:
    assert seen["health"] == {"response": {"status": "SERVING"}}
    assert seen["health_translator"] == {"response": {"status": "SERVING"}}
