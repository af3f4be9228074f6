"""Hostile clients and hostile settings (issue 18): a used port, reflection off, refused requests that must not
pin memory, the event loop kept free while requests are checked, bounded streams."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import socket
import sys
import threading
import unicodedata
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc._cython.cygrpc import ExecuteBatchError
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nmtserve.cli.main import main as cli_main
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.admission import RequestChecker
from nmtserve.server.app import TranslationServer, serve
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig
from nmtserve.server.logs import GRPC_LOGGER, quiet_expected_races
from nmtserve.server.metrics import ServerMetrics, serve_metrics
from nmtserve.server.validation import Overloaded, RequestError, control_character


def test_a_second_server_on_a_used_port_exits_2(caplog: pytest.LogCaptureFixture) -> None:
    """gRPC's default SO_REUSEPORT let a second server start and take half of the new connections."""

    async def scenario() -> tuple[int, int]:
        first = TranslationServer(ServerConfig(port=0, metrics_port=0))
        await first.start()
        try:
            return first.port, await serve(ServerConfig(port=first.port, metrics_port=0))
        finally:
            await first.stop()

    with caplog.at_level(logging.ERROR):
        port, status = asyncio.run(scenario())
    assert status == 2
    assert any(f"cannot listen on 127.0.0.1:{port}" in record.getMessage() for record in caplog.records)


def test_reuse_port_is_opt_in() -> None:
    async def scenario() -> int:
        first = TranslationServer(ServerConfig(port=0, metrics_port=0, reuse_port=True))
        await first.start()
        second = TranslationServer(ServerConfig(port=first.port, metrics_port=0, reuse_port=True))
        try:
            await second.start()  # both opted in: the kernel shares the port
            return second.port - first.port
        finally:
            await second.stop()
            await first.stop()

    assert asyncio.run(scenario()) == 0


@pytest.mark.parametrize("enabled", [True, False])
def test_reflection_can_be_turned_off(enabled: bool) -> None:
    config = ServerConfig(port=0, metrics_port=0, reflection=enabled)
    with BackgroundServer(config, load=False) as server, grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        if enabled:
            answer = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
            assert any(s.name == "nmtserve.v1.Translator" for s in answer.list_services_response.service)
        else:
            with pytest.raises(grpc.RpcError) as caught:
                next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_control_character_scan_matches_unicode_category_cc() -> None:
    """The compiled scan that replaced the per-character loop finds exactly category Cc less tab, LF and CR."""
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        expected = char not in "\t\n\r" and unicodedata.category(char) == "Cc"
        assert (control_character("ab" + char) == (2, char)) is expected, f"U+{code:04X}"


# 256 texts of 8 000 bytes, each over the 256-token limit: refused at the token check, the most expensive refusal.
OVER_TOKENS = pb.TranslateRequest(texts=[("word " * 1700)[:8000]] * 256)


@pytest.fixture(scope="module")
def server(demo_model_dir: Path):
    config = ServerConfig(model=demo_model_dir, port=0, metrics_port=0, warmup=False)
    with BackgroundServer(config) as running:
        yield running


def test_refused_requests_leave_no_request_data_in_reference_cycles(server: BackgroundServer) -> None:
    """A refused request's texts and token ids must be freed by reference counting when it is answered, not left
    in cycles (error, abort exception, handler frames) for the cyclic collector: that grew a server to 1.5 GB."""
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        gc.collect()
        gc.disable()
        try:
            for _ in range(10):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Translate(OVER_TOKENS, timeout=30)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "texts[0] has" in caught.value.details() and "max_input_tokens" in caught.value.details()
                answers = list(stub.TranslateStream(iter([OVER_TOKENS]), timeout=30))
                assert answers[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            held = [
                o
                for o in gc.garbage
                if (isinstance(o, str | bytes) and len(o) >= 4000)
                or (isinstance(o, list) and len(o) >= 16)
                or isinstance(o, pb.TranslateRequest)
            ]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert held == [], f"{len(held)} request objects were only freed by the cyclic collector"


# A client that does not read: no BDP probing and a 16 KiB window, so gRPC's flow control pushes back at once.
SLOW_READER = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]


def test_a_stream_that_is_not_read_is_paused_then_cancelled(demo_model_dir: Path) -> None:
    """Its answers wait in a bounded buffer, its requests pause, and after stream_stall_timeout_s the stream ends
    with RESOURCE_EXHAUSTED instead of the server buffering everything it would have sent."""
    config = ServerConfig(model=demo_model_dir, port=0, metrics_port=0, warmup=False, stream_stall_timeout_s=0.5)
    sent = 5000  # each answered at once with an in-band error echoing a 256-character id: ~1.6 MB in all
    requests = (pb.TranslateRequest(texts=[], request_id=f"{i:0256d}") for i in range(sent))
    with BackgroundServer(config) as server, grpc.insecure_channel(server.address, options=SLOW_READER) as channel:
        call = pb_grpc.TranslatorStub(channel).TranslateStream(requests, timeout=60)
        threading.Event().wait(2.0)  # not reading
        received = 0
        with pytest.raises(grpc.RpcError) as caught:
            for answer in call:
                assert answer.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
                received += 1
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "stream_stall_timeout_s" in caught.value.details()
        assert received < sent // 2
        # the server is fine for everyone else
        answer = pb_grpc.TranslatorStub(channel).Translate(pb.TranslateRequest(texts=["Hello."]), timeout=30)
        assert answer.translations[0].hypotheses[0].text


def test_partials_are_coalesced_to_whole_words(server: BackgroundServer, demo_engine) -> None:
    """At most one partial per text per new word (the issue measured 8,177 partial messages for a 16 KB request)."""
    text = "Select the cells that you want to print, then open the File menu and choose Print to print them."
    request = pb.TranslateRequest(texts=[text, text], stream_partial=True)
    with grpc.insecure_channel(server.address) as channel:
        answers = list(pb_grpc.TranslatorStub(channel).TranslateStream(iter([request]), timeout=60))
    final = answers[-1].translations
    partials: dict[int, list[str]] = {}
    for answer in answers[:-1]:
        for partial in answer.partials:
            partials.setdefault(partial.index, []).append(partial.text)
    assert partials, "no partial output at all"
    for index, texts in partials.items():
        best = final[index].hypotheses[0].text
        assert len(texts) <= len(best.split()), (len(texts), best)
        for earlier, later in itertools.pairwise(texts):
            assert later.startswith(earlier) and len(later.split()) > len(earlier.split())
        for partial in texts:  # whole words only: the final continues each partial with a space
            assert best.startswith(partial) and best[len(partial)] == " ", (partial, best)


def test_expected_races_log_no_error(server: BackgroundServer, caplog: pytest.LogCaptureFixture) -> None:
    """Deadlines expiring while a refusal is sent, and streams cancelled mid-write, are normal: no ERROR."""
    texts = ["Select the cells that you want to print, then open the File menu and choose Print to print them."] * 4
    with caplog.at_level(logging.INFO), grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        for i in range(10):
            requests = [pb.TranslateRequest(texts=texts, stream_partial=True) for _ in range(10)]
            call = stub.TranslateStream(iter(requests), timeout=60)
            for count, _ in enumerate(call):
                if count == i % 4:
                    call.cancel()
                    break
        for i in range(300):  # refused at once, with deadlines around the time the refusal takes
            with contextlib.suppress(grpc.RpcError):
                stub.Translate(pb.TranslateRequest(), timeout=0.001 + (i % 10) * 0.0003)
        assert stub.Translate(pb.TranslateRequest(texts=["Hello."]), timeout=30).translations
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == [], [record.getMessage() for record in errors]


def test_grpc_execute_batch_errors_are_logged_as_info(caplog: pytest.LogCaptureFixture) -> None:
    quiet_expected_races()
    with caplog.at_level(logging.INFO, logger=GRPC_LOGGER):
        try:
            raise ExecuteBatchError("Failed execute_batch")
        except ExecuteBatchError:
            logging.getLogger(GRPC_LOGGER).exception("ExecuteBatchError raised in core by servicer method [%s]", "/m")
        logging.getLogger(GRPC_LOGGER).error("something else")
    race, other = caplog.records
    assert race.levelname == "INFO" and race.exc_info is None and "[/m]" in race.getMessage()
    assert other.levelname == "ERROR"


def test_metrics_endpoint_bounds_threads_and_times_out_half_open_requests() -> None:
    """prometheus_client's server held a thread per connection for as long as a half-open request lasted."""
    endpoint = serve_metrics(ServerMetrics(), "127.0.0.1", 0, workers=2, backlog=2, timeout_s=0.5)
    before = threading.active_count()
    sockets = []
    try:
        for _ in range(30):
            sock = socket.create_connection(("127.0.0.1", endpoint.port), timeout=10)
            sock.sendall(b"GET /metr")  # and never the rest
            sockets.append(sock)
        workers = [t for t in threading.enumerate() if t.name.startswith("nmtserve-metrics_")]
        assert len(workers) <= 2 and threading.active_count() <= before + 2
        for sock in sockets:  # every one is closed by the server: refused at once, or after the timeout
            while sock.recv(1024):  # (a timed-out request may get an error line first)
                pass
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=10) as answer:
            assert b"nmtserve_queue_depth" in answer.read()
    finally:
        for sock in sockets:
            sock.close()
        endpoint.close()


@pytest.mark.parametrize(
    "flags",
    [
        ["--max-message-bytes", "2147483648"],
        ["--max-queue-delay-ms", "inf"],
        ["--max-queue-size", "4294967296"],
        ["--threads", "100000"],
    ],
)
def test_settings_that_broke_the_server_exit_2(flags: list[str], capsys: pytest.CaptureFixture) -> None:
    """Configuration errors are exit 2 with a one-line message, never a traceback at start (exit 1)."""
    assert cli_main(["serve", "--port", "0", "--metrics-port", "0", *flags]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_checker_bounds_large_requests_waiting_and_keeps_small_ones_inline(demo_engine) -> None:
    """Beyond max_waiting large requests, one more is refused with a retry hint; small ones never wait."""
    config = ServerConfig()
    checker = RequestChecker(config, demo_engine.tokenizer, demo_engine.info.vocab_size, max_waiting=0)
    try:
        small = asyncio.run(checker.prepare(["Hello.", ""], pb.DecodingOptions()))
        assert small.count == 2 and [text.index for text in small.encoded] == [0]
        with pytest.raises(Overloaded) as caught:
            asyncio.run(checker.prepare(["Hello world. " * 500] * 4, pb.DecodingOptions()))
        assert dict(caught.value.trailing_metadata())["grpc-retry-pushback-ms"] == "100"
        with pytest.raises(RequestError, match="max_texts_per_request"):  # counts are checked before anything
            asyncio.run(checker.prepare(["x"] * 257, pb.DecodingOptions()))
    finally:
        checker.close()


def test_documents_are_planned_on_the_checkers_bounded_workers(demo_engine) -> None:
    """Planning a page takes seconds (a 1 MiB ``*a*a...`` Markdown one 17 s of CPU); it ran on Python's default
    pool, where any number of them queued and ran at once. Now they share the checker's workers and its bound."""
    config = ServerConfig()
    checker = RequestChecker(config, demo_engine.tokenizer, demo_engine.info.vocab_size, workers=1, max_waiting=1)
    costly = "*a*a " * 40_000  # 200 kB of emphasis runs: well over a second to plan, then too many sentences

    async def two_at_once() -> tuple[BaseException | None, BaseException | None]:
        first = asyncio.create_task(checker.plan_documents([costly], "markdown", "en", "de"))
        await asyncio.sleep(0)  # the first holds the one place
        second = asyncio.create_task(checker.plan_documents(["Hello."], "text", "en", "de"))
        done = await asyncio.gather(first, second, return_exceptions=True)
        return tuple(r if isinstance(r, BaseException) else None for r in done)  # type: ignore[return-value]

    try:
        first, second = asyncio.run(two_at_once())
        assert isinstance(second, Overloaded) and "the limit is 1" in str(second.message)
        assert isinstance(first, RequestError) and "max_sentences_per_request" in first.message
        plan = asyncio.run(checker.plan_documents(["Hello. Save the file."], "text", "en", "de"))
        assert [len(sentences) for sentences in plan.sentences] == [2]
    finally:
        checker.close()
