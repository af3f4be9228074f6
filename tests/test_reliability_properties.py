"""Property-based tests (hypothesis): generated requests against a live server on the demo model.

Every generated request must be answered either with the translation the offline engine gives for it or with
exactly the status an independent oracle (written here from the documented limits, not from the server's own
validation code) predicts; never UNKNOWN or INTERNAL. Meanwhile a neighbour thread keeps sending good requests
whose answers must stay exact, and the server must still report SERVING at the end.

Runs are derandomized (the same examples on every run, so CI cannot flake on a new draw); set
NMTSERVE_HYPOTHESIS_EXAMPLES to draw more, and NMTSERVE_HYPOTHESIS_RANDOM=1 to explore new ones.
"""

from __future__ import annotations

import math
import os
import threading
import unicodedata
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.loadtest.client import MAX_MESSAGE_BYTES, TranslatorClient
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig

EXAMPLES = int(os.environ.get("NMTSERVE_HYPOTHESIS_EXAMPLES", "60"))
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("NMTSERVE_HYPOTHESIS_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
LIMITS = dict(
    max_texts_per_request=6,
    max_input_tokens=24,
    max_input_bytes=120,
    max_beam_size=5,
    max_output_length=24,
    max_length=12,
    beam_size=3,
    num_hypotheses=1,
    max_message_bytes=4096,
)
SENTENCES = [
    "The package contains the documentation.",
    "Open the file menu.",
    "Hello.",
    "Select the cells that you want to print.",
]
CLEAN_STATUSES = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}


@pytest.fixture(scope="module")
def config(demo_model_dir: Path) -> ServerConfig:
    settings_ = dict(model=demo_model_dir, port=0, metrics_port=0, threads=1, warmup=False, max_queue_delay_ms=2.0)
    return ServerConfig(**(settings_ | LIMITS))


@pytest.fixture(scope="module")
def server(config: ServerConfig):
    with BackgroundServer(config) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: BackgroundServer):
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(server.address, options=options) as channel:
        yield channel


@pytest.fixture(scope="module")
def neighbour(server: BackgroundServer, demo_engine: Engine):
    """Good requests sent all along; yields their list of mismatches (must stay empty)."""
    want = [n[0].text for n in demo_engine.translate(SENTENCES, DecodingOptions(beam_size=3, max_length=12))]
    stop, problems, answered = threading.Event(), [], [0]

    def run() -> None:
        with TranslatorClient(server.address) as client:
            while not stop.is_set():
                try:
                    got = client.translate_texts(SENTENCES)
                except grpc.RpcError as error:
                    problems.append(f"{error.code().name}: {error.details()}")
                    continue
                answered[0] += 1
                if got != want:
                    problems.append(f"wrong answer {got}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield problems
    stop.set()
    thread.join(timeout=120)
    assert answered[0] > 0 and not problems, problems
    with TranslatorClient(server.address) as client:
        assert client.health() == "SERVING"


# -- the oracle -----------------------------------------------------------------------------------------------------


def forbidden_control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in text)


def oracle(request: pb.TranslateRequest, config: ServerConfig, engine: Engine) -> tuple[str, DecodingOptions | None]:
    """The status the server must answer ``request`` with, and the options it must translate with when OK."""
    if len(request.SerializeToString()) > config.max_message_bytes:
        return "RESOURCE_EXHAUSTED", None
    texts, o = list(request.texts), request.options
    if not texts or len(texts) > config.max_texts_per_request:
        return "INVALID_ARGUMENT", None
    beam = o.beam_size or config.beam_size
    hypotheses = o.num_hypotheses or min(config.num_hypotheses, beam)
    max_length = o.max_length or config.max_length
    penalty = o.length_penalty if o.HasField("length_penalty") else config.length_penalty
    if beam > config.max_beam_size or hypotheses > beam or max_length > config.max_output_length:
        return "INVALID_ARGUMENT", None
    if not math.isfinite(penalty) or penalty < 0 or penalty > config.max_length_penalty:
        return "INVALID_ARGUMENT", None
    for text in texts:
        if len(text.encode()) > config.max_input_bytes or forbidden_control(text):
            return "INVALID_ARGUMENT", None
        if text.strip() and len(engine.tokenizer.encode_batch([text])[0]) > config.max_input_tokens:
            return "INVALID_ARGUMENT", None
    scores = o.return_scores if o.HasField("return_scores") else config.return_scores
    return "OK", DecodingOptions(
        beam_size=beam, length_penalty=penalty, max_length=max_length, num_hypotheses=hypotheses, return_scores=scores
    )


def check_answer(
    request: pb.TranslateRequest,
    code: str,
    response: pb.TranslateResponse | None,
    config: ServerConfig,
    engine: Engine,
) -> None:
    assert code in CLEAN_STATUSES, code
    want_code, options = oracle(request, config, engine)
    assert code == want_code, (request, code)
    if code != "OK":
        return
    texts = list(request.texts)
    assert len(response.translations) == len(texts)
    real = [i for i, text in enumerate(texts) if text.strip()]
    offline = engine.translate([texts[i] for i in real], options) if real else []
    for i, translation in enumerate(response.translations):
        hypotheses = translation.hypotheses
        assert all(h.HasField("score") == options.return_scores for h in hypotheses)
        if i not in real:
            assert [h.text for h in hypotheses] == [""]
            continue
        want = offline[real.index(i)]
        assert [h.text for h in hypotheses] == [h.text for h in want]
        if options.return_scores:
            assert [h.score for h in hypotheses] == pytest.approx([h.score for h in want], abs=1e-4)


# -- strategies -----------------------------------------------------------------------------------------------------

any_text = st.text(st.characters(codec="utf-8"), max_size=30)  # every code point but surrogates, controls included
texts = st.one_of(
    st.sampled_from(SENTENCES),
    any_text,
    st.text(st.sampled_from(["a", " ", ".", "\x00", "\x1b", "\x7f", "\x85", "\t", "\n", "\u200d", "é"]), max_size=12),
    st.integers(20, 30).map(lambda n: " ".join(["a"] * n)),  # around max_input_tokens
    st.integers(50, 70).map(lambda n: "ä" * n),  # around max_input_bytes
    st.sampled_from(["", " ", "\t\n"]),
)
text_lists = st.one_of(
    st.lists(texts, max_size=LIMITS["max_texts_per_request"] + 2),
    st.integers(35, 45).map(lambda n: ["Hello, world. " * 8] * n),  # around max_message_bytes
)
options = st.builds(
    pb.DecodingOptions,
    beam_size=st.integers(0, LIMITS["max_beam_size"] + 2),
    max_length=st.integers(0, LIMITS["max_output_length"] + 3),
    num_hypotheses=st.integers(0, 6),
    length_penalty=st.one_of(st.none(), st.floats(width=32), st.floats(0, 2, width=32)),
    return_scores=st.one_of(st.none(), st.booleans()),
)
requests = st.builds(lambda t, o: pb.TranslateRequest(texts=t, options=o), text_lists, options)


def call(stub: pb_grpc.TranslatorStub, request: pb.TranslateRequest) -> tuple[str, pb.TranslateResponse | None]:
    try:
        return "OK", stub.Translate(request, timeout=120)
    except grpc.RpcError as error:
        return error.code().name, None


# -- properties -----------------------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(request=requests)
def test_every_request_gets_a_translation_or_a_clean_status(request, channel, config, demo_engine, neighbour):
    code, response = call(pb_grpc.TranslatorStub(channel), request)
    check_answer(request, code, response, config, demo_engine)


@PROPERTY_SETTINGS
@given(body=st.one_of(st.binary(max_size=120), requests.map(lambda r: r.SerializeToString()[:-1] + b"\xff")))
def test_arbitrary_bytes_get_a_clean_status(body: bytes, channel, config, demo_engine, neighbour) -> None:
    try:
        code, data = "OK", channel.unary_unary("/nmtserve.v1.Translator/Translate")(body, timeout=120)
    except grpc.RpcError as error:
        code, data = error.code().name, None
    if len(body) > config.max_message_bytes:  # gRPC refuses it before anyone parses it
        assert code == "RESOURCE_EXHAUSTED"
        return
    try:
        request = pb.TranslateRequest.FromString(body)
    except Exception:  # does not parse: the server must say so
        assert code == "INVALID_ARGUMENT"
        return
    response = pb.TranslateResponse.FromString(data) if data is not None else None
    check_answer(request, code, response, config, demo_engine)


CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


@settings(PROPERTY_SETTINGS, max_examples=max(5, EXAMPLES // 4))
@given(batch=st.lists(requests, min_size=1, max_size=5))
def test_every_stream_request_gets_exactly_one_answer(batch, channel, config, demo_engine, neighbour) -> None:
    for i, request in enumerate(batch):
        request.request_id = f"q{i}"
    oversized = any(len(r.SerializeToString()) > config.max_message_bytes for r in batch)
    stub = pb_grpc.TranslatorStub(channel)
    answers: dict[str, list] = {}
    try:
        for response in stub.TranslateStream(iter(batch), timeout=300):
            if response.HasField("error"):
                answers.setdefault(response.request_id, []).append((CODE_NAMES[response.error.code], None))
            elif response.translations:
                answers.setdefault(response.request_id, []).append(("OK", response))
    except grpc.RpcError as error:
        # gRPC refuses an oversized message itself, and that ends the whole stream with RESOURCE_EXHAUSTED
        assert oversized and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        return
    assert not oversized
    assert sorted(answers) == sorted(r.request_id for r in batch)
    for request in batch:
        assert len(answers[request.request_id]) == 1, "exactly one answer per request"
        code, response = answers[request.request_id][0]
        check_answer(request, code, response, config, demo_engine)
