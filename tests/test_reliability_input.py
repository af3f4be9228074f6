"""Bad input against a live server on the demo model: every kind gets a clear status naming the field and the
limit, unusual Unicode is translated, and requests sent alongside are answered exactly as the offline engine
translates them.

Real gRPC on 127.0.0.1, the real engine on ``export/demo/fp32``; nothing is mocked.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.loadtest.client import MAX_MESSAGE_BYTES, TranslatorClient, decoding_options
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig

GOOD = [
    "The package contains the documentation.",
    "Open the file menu.",
    "This program prints the version number of the installed kernel.",
    "Hello.",
]
LIMITS = dict(
    max_texts_per_request=8,
    max_input_tokens=48,
    max_input_bytes=400,
    max_beam_size=6,
    max_output_length=64,
    max_message_bytes=16 * 1024,
    max_length=40,
)
TRANSLATE = "/nmtserve.v1.Translator/Translate"
STREAM = "/nmtserve.v1.Translator/TranslateStream"


def server_config(model: Path, **overrides) -> ServerConfig:
    settings = dict(model=model, port=0, metrics_port=0, threads=1, warmup=False, max_queue_delay_ms=5.0) | LIMITS
    return ServerConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def server(demo_model_dir: Path):
    with BackgroundServer(server_config(demo_model_dir)) as running:  # the server loads its own engine
        yield running


@pytest.fixture(scope="module")
def channel(server: BackgroundServer):
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]  # so that the server is the one that refuses
    with grpc.insecure_channel(server.address, options=options) as channel:
        yield channel


def offline(engine: Engine, texts: list[str], **options) -> list[str]:
    defaults = dict(max_length=LIMITS["max_length"])
    return [nbest[0].text for nbest in engine.translate(texts, DecodingOptions(**(defaults | options)))]


def long_text(tokens: int) -> str:
    return " ".join(["a"] * tokens)  # one piece per word: many tokens in few bytes


BAD_REQUESTS = [
    # (id, request, code, fragments the message must contain)
    ("empty request", pb.TranslateRequest(), "INVALID_ARGUMENT", ["texts is empty"]),
    (
        "too many texts",
        pb.TranslateRequest(texts=["Hello."] * 9),
        "INVALID_ARGUMENT",
        ["texts has 9 entries", "limit is 8", "max_texts_per_request"],
    ),
    (
        "too many tokens",
        pb.TranslateRequest(texts=["Hello.", long_text(60)]),
        "INVALID_ARGUMENT",
        ["texts[1] has", "tokens", "limit is 48", "max_input_tokens"],
    ),
    (
        "too many bytes",
        pb.TranslateRequest(texts=["ä" * 201]),  # 402 bytes in UTF-8, far fewer tokens than the token limit
        "INVALID_ARGUMENT",
        ["texts[0] is 402 bytes", "limit is 400", "max_input_bytes"],
    ),
    (
        "NUL",
        pb.TranslateRequest(texts=["Hello", "Hello\x00world"]),
        "INVALID_ARGUMENT",
        ["texts[1]", "control character U+0000 at offset 5"],
    ),
    ("escape", pb.TranslateRequest(texts=["\x1b[31mred"]), "INVALID_ARGUMENT", ["texts[0]", "U+001B"]),
    ("delete", pb.TranslateRequest(texts=["a\x7fb"]), "INVALID_ARGUMENT", ["U+007F"]),
    ("C1 control", pb.TranslateRequest(texts=["next\x85line"]), "INVALID_ARGUMENT", ["U+0085"]),
    (
        "beam too large",
        pb.TranslateRequest(texts=GOOD[:1], options=decoding_options(beam_size=7)),
        "INVALID_ARGUMENT",
        ["options.beam_size 7", "limit of 6", "max_beam_size"],
    ),
    (
        "max_length too large",
        pb.TranslateRequest(texts=GOOD[:1], options=decoding_options(max_length=65)),
        "INVALID_ARGUMENT",
        ["options.max_length 65", "limit of 64", "max_output_length"],
    ),
    (
        "more hypotheses than beams",
        pb.TranslateRequest(texts=GOOD[:1], options=decoding_options(beam_size=2, num_hypotheses=3)),
        "INVALID_ARGUMENT",
        ["options.num_hypotheses 3", "options.beam_size 2"],
    ),
    (
        "negative length penalty",
        pb.TranslateRequest(texts=GOOD[:1], options=decoding_options(length_penalty=-0.5)),
        "INVALID_ARGUMENT",
        ["options.length_penalty", ">= 0"],
    ),
    (
        "NaN length penalty",
        pb.TranslateRequest(texts=GOOD[:1], options=decoding_options(length_penalty=float("nan"))),
        "INVALID_ARGUMENT",
        ["options.length_penalty", "finite"],
    ),
    (
        "huge length penalty",  # length ** 309 overflows a float: found by the property-based tests
        pb.TranslateRequest(texts=GOOD[:1], options=decoding_options(length_penalty=309.0)),
        "INVALID_ARGUMENT",
        ["options.length_penalty 309", "limit of 10", "max_length_penalty"],
    ),
    (
        "message too large",
        pb.TranslateRequest(texts=["Hello. " * 50] * 60),  # ~21 KB > 16 KiB
        "RESOURCE_EXHAUSTED",
        [str(16 * 1024)],
    ),
]


@pytest.mark.parametrize(
    ("request_", "code", "fragments"), [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS]
)
def test_bad_request_gets_a_clear_status(channel, request_: pb.TranslateRequest, code: str, fragments: list[str]):
    stub = pb_grpc.TranslatorStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Translate(request_, timeout=30)
    assert caught.value.code().name == code, caught.value.details()
    for fragment in fragments:
        assert fragment in caught.value.details()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"\x0a\x03\xff\xfe\xfd", "UTF-8"),  # texts[0] = 3 bytes of invalid UTF-8
        (b"\x0a\x05ab\xc3(c", "UTF-8"),  # a truncated two-byte sequence
        (b"\xff\xff\xff\xff", "nmtserve.v1.TranslateRequest"),  # not protobuf at all
        (b"\x0a\x64abc", "nmtserve.v1.TranslateRequest"),  # a length running past the end
    ],
)
def test_malformed_message_is_invalid_argument(channel, body: bytes, fragment: str) -> None:
    raw = channel.unary_unary(TRANSLATE)  # no serializer: the bytes go out as they are
    with pytest.raises(grpc.RpcError) as caught:
        raw(body, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in caught.value.details()


@pytest.mark.parametrize("method", ["LoadModel", "UnloadModel", "SetDefaultModel"])
def test_malformed_admin_message_is_invalid_argument(demo_model_dir: Path, tmp_path: Path, method: str) -> None:
    """gRPC's own deserializer answered UNKNOWN ('Unexpected DecodeError') and logged a traceback."""
    tokens = tmp_path / "admin-tokens"
    tokens.write_text("admin-secret\n")
    good = (("authorization", "Bearer admin-secret"),)
    with (
        BackgroundServer(server_config(demo_model_dir, admin_token_file=tokens)) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        raw = channel.unary_unary(f"/nmtserve.v1.Admin/{method}")
        for body, fragment in ((b"\xff\xff\xff\xff", "Wire format"), (b"\x0a\x02\xc3\x28", "UTF-8")):
            with pytest.raises(grpc.RpcError) as caught:
                raw(body, timeout=30, metadata=good)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
            assert f"nmtserve.v1.{method}Request" in caught.value.details() and fragment in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:  # the token is still checked first
            raw(b"\xff\xff", timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:  # a message that parses goes on to the checks of the call
            pb_grpc.AdminStub(channel).LoadModel(pb.LoadModelRequest(), timeout=30, metadata=good)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "model: required" in caught.value.details()
        status = pb_grpc.AdminStub(channel).SetDefaultModel(
            pb.SetDefaultModelRequest(model="nmtserve-en-de-demo"), timeout=30, metadata=good
        )
        assert status.is_default


UNUSUAL = [
    "Zero\u200bwidth\u200djoiners and a\u00adsoft hyphen.",
    "\u202eReversed\u202c text with bidi controls \u200f.",
    "Combining marks: e\u0301 a\u0308 n\u0303.",
    "Emoji 😀👩‍💻🇩🇪 in a sentence.",
    "中文字符 and 日本語 and 한국어.",
    "Private use \ue000\uf8ff and noncharacters \ufffe\uffff and \U0010ffff.",
    "Tabs\tand\nnewlines\r\nare whitespace.",
    "\ufeffA byte order mark.",
    "\u00a0\u2003\u3000 unusual spaces \u2028 and separators \u2029",
]


def test_unusual_unicode_is_translated(server: BackgroundServer, demo_engine: Engine) -> None:
    with TranslatorClient(server.address) as client:
        for texts in (UNUSUAL[:5], UNUSUAL[5:]):  # at most max_texts_per_request (8) per request
            assert client.translate_texts(texts) == offline(demo_engine, texts)


def test_zero_means_the_default_in_proto3(server: BackgroundServer, demo_engine: Engine) -> None:
    """beam_size / max_length / num_hypotheses of 0 cannot be told from unset on the wire: the server's default."""
    options = pb.DecodingOptions(beam_size=0, max_length=0, num_hypotheses=0)
    with TranslatorClient(server.address) as client:
        nbest = client.translate(GOOD[:2], options)
    assert [n[0].text for n in nbest] == offline(demo_engine, GOOD[:2]) and all(len(n) == 1 for n in nbest)


def test_bad_requests_do_not_disturb_their_neighbours(server: BackgroundServer, demo_engine: Engine, channel) -> None:
    """Good requests run concurrently with a stream of bad ones; every good one is answered, correctly."""
    want = offline(demo_engine, GOOD)
    stop = threading.Event()
    codes: list[str] = []

    def throw_bad() -> None:
        stub = pb_grpc.TranslatorStub(channel)
        raw = channel.unary_unary(TRANSLATE)
        while not stop.is_set():
            for _, request, _, _ in BAD_REQUESTS:
                try:
                    stub.Translate(request, timeout=30)
                    codes.append("OK")
                except grpc.RpcError as error:
                    codes.append(error.code().name)
            try:
                raw(b"\x0a\x01\xff", timeout=30)
            except grpc.RpcError as error:
                codes.append(error.code().name)

    with TranslatorClient(server.address) as client, ThreadPoolExecutor(6) as pool:
        bad = [pool.submit(throw_bad) for _ in range(2)]
        good = [pool.submit(client.translate_texts, GOOD[i:] + GOOD[:i]) for i in range(len(GOOD)) for _ in range(3)]
        results = [future.result(timeout=120) for future in good]
        stop.set()
        for future in bad:
            future.result(timeout=60)
    for i, result in enumerate(results):
        shift = i // 3
        assert result == want[shift:] + want[:shift]
    assert codes and set(codes) <= {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
    with TranslatorClient(server.address) as client:
        assert client.health() == "SERVING"


def test_stream_answers_bad_messages_in_band_and_goes_on(server: BackgroundServer, demo_engine: Engine, channel):
    raw_stream = channel.stream_stream(STREAM)  # raw bytes, so that one message can be malformed
    messages = [
        pb.TranslateRequest(texts=GOOD[:2], request_id="good-1").SerializeToString(),
        b"\x0a\x02\xc3\x28",  # invalid UTF-8: answered under its ordinal, "1"
        pb.TranslateRequest(texts=["x\x00"], request_id="nul").SerializeToString(),
        pb.TranslateRequest(texts=GOOD[2:3], request_id="r" * 300).SerializeToString(),  # request_id too long
        pb.TranslateRequest(texts=GOOD[2:], request_id="good-2", stream_partial=True).SerializeToString(),
    ]
    finals, errors = {}, {}
    for data in raw_stream(iter(messages), timeout=120):
        response = pb.TranslateResponse.FromString(data)
        if response.HasField("error"):
            assert response.request_id not in errors, "two answers to one request"
            errors[response.request_id] = response.error
        elif response.translations:
            assert response.request_id not in finals, "two answers to one request"
            finals[response.request_id] = [t.hypotheses[0].text for t in response.translations]
    assert finals == {"good-1": offline(demo_engine, GOOD[:2]), "good-2": offline(demo_engine, GOOD[2:])}
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert {key: error.code for key, error in errors.items()} == {"1": invalid, "nul": invalid, "3": invalid}
    assert "UTF-8" in errors["1"].message and "U+0000" in errors["nul"].message
    assert "request_id has 300 characters" in errors["3"].message


def test_blank_texts_can_be_refused(demo_model_dir: Path, demo_engine: Engine) -> None:
    config = server_config(demo_model_dir, reject_blank_texts=True)
    with BackgroundServer(config) as server, TranslatorClient(server.address) as client:
        for texts in (["Hello.", ""], ["  \t"]):
            with pytest.raises(grpc.RpcError) as caught:
                client.translate(texts)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "is blank" in caught.value.details() and "reject_blank_texts" in caught.value.details()
        assert client.translate_texts(["Hello."]) == offline(demo_engine, ["Hello."])


def test_blank_texts_are_answered_blank_by_default(server: BackgroundServer, demo_engine: Engine) -> None:
    with TranslatorClient(server.address) as client:
        assert client.translate_texts(["", "Hello.", " "]) == ["", *offline(demo_engine, ["Hello."]), ""]
        # invisible format characters alone (zero-width space and joiner, BOM, bidi marks) are blank too: the model
        # must not be asked to translate them (the demo model invented a word for a lone U+200B)
        invisible = ["\u200b", "\ufeff \u200d", "\u200e\u2066\u2069"]
        assert client.translate_texts(["Hello.", *invisible]) == [*offline(demo_engine, ["Hello."]), "", "", ""]
