"""The gRPC server end to end: a real server on 127.0.0.1 (free ports), real gRPC, the tiny exported model.

Servers run in a background thread of the test process (``BackgroundServer``) so that a test can wrap the engine
to slow it down or inject a failure; everything else is the production code path.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from conftest import scrape_metrics as metrics
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.export.testing import tiny_export
from nmtserve.loadtest.client import TranslatorClient, decoding_options
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig

TEXTS = [
    "the cat sat on the mat",
    "open the file and save it",
    "a package manager installs software",
    "select a printer from the list",
    "this program prints the version number",
    "save it",
]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32")


@pytest.fixture(scope="session")
def engine(model_dir: Path) -> Engine:
    return Engine.load(model_dir, threads=1)


def config(model_dir: Path, **overrides) -> ServerConfig:
    settings = dict(model=model_dir, port=0, metrics_port=0, threads=1, warmup=False, max_queue_delay_ms=5.0)
    return ServerConfig(**(settings | overrides))


@pytest.fixture(scope="module", params=["request", "continuous"])
def server(model_dir: Path, request: pytest.FixtureRequest):
    with BackgroundServer(config(model_dir, batching=request.param)) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: BackgroundServer):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.TranslatorStub(channel)


def expected(engine: Engine, texts: list[str], options: DecodingOptions) -> list[list[tuple[str, float | None]]]:
    return [[(h.text, h.score) for h in nbest] for nbest in engine.translate(texts, options)]


def as_pairs(translations) -> list[list[tuple[str, float | None]]]:
    return [[(h.text, h.score if h.HasField("score") else None) for h in t.hypotheses] for t in translations]


def assert_same(got, want) -> None:
    assert [[text for text, _ in nbest] for nbest in got] == [[text for text, _ in nbest] for nbest in want]
    for got_nbest, want_nbest in zip(got, want, strict=True):
        for (_, got_score), (_, want_score) in zip(got_nbest, want_nbest, strict=True):
            assert (got_score is None) == (want_score is None)
            if want_score is not None:
                assert got_score == pytest.approx(want_score, abs=1e-5)


# -- translations equal the engine's ------------------------------------------------------------------------------

OPTION_CASES = [
    ({}, DecodingOptions()),  # server defaults = engine defaults
    (
        dict(beam_size=2, num_hypotheses=2, length_penalty=0.0, max_length=12),
        DecodingOptions(beam_size=2, num_hypotheses=2, length_penalty=0.0, max_length=12),
    ),
    (dict(beam_size=1, return_scores=False), DecodingOptions(beam_size=1, return_scores=False)),
]


@pytest.mark.parametrize(("request_options", "engine_options"), OPTION_CASES)
def test_unary_equals_engine(stub, engine: Engine, request_options: dict, engine_options: DecodingOptions) -> None:
    response = stub.Translate(pb.TranslateRequest(texts=TEXTS, options=decoding_options(**request_options)))
    assert_same(as_pairs(response.translations), expected(engine, TEXTS, engine_options))


def test_blank_texts_stay_blank(stub, engine: Engine) -> None:
    response = stub.Translate(pb.TranslateRequest(texts=["", TEXTS[0], "   "]))
    texts = [t.hypotheses[0].text for t in response.translations]
    assert texts == ["", expected(engine, TEXTS[:1], DecodingOptions())[0][0][0], ""]


def test_stream_answers_each_request_with_partials(stub, engine: Engine) -> None:
    options = dict(beam_size=3)
    requests = [
        pb.TranslateRequest(texts=[text], options=decoding_options(**options), request_id=f"r{i}", stream_partial=True)
        for i, text in enumerate(TEXTS)
    ]
    requests.append(pb.TranslateRequest(texts=TEXTS[:2], options=decoding_options(**options)))  # id "6" by ordinal
    requests.append(pb.TranslateRequest(texts=[], request_id="bad"))  # an in-band error, the stream goes on
    finals, partials, errors = {}, {}, {}
    for response in stub.TranslateStream(iter(requests), timeout=60):
        if response.HasField("error"):
            errors[response.request_id] = response.error
        for partial in response.partials:
            partials.setdefault((response.request_id, partial.index), []).append(partial.text)
        if response.translations:
            finals[response.request_id] = as_pairs(response.translations)
    want = expected(engine, TEXTS, DecodingOptions(beam_size=3))
    for i in range(len(TEXTS)):
        assert_same(finals[f"r{i}"], [want[i]])
    assert_same(finals["6"], want[:2])
    assert errors["bad"].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert not any(key[0] == "6" for key in partials), "partials only when asked for"
    assert partials, "beam search produced no partial output"
    for (request_id, index), texts in partials.items():
        final = finals[request_id][index][0][0]
        for earlier, later in itertools.pairwise(texts):
            assert later.startswith(earlier) and later != earlier
        assert final.startswith(texts[-1]), (texts[-1], final)


def test_translate_cli_with_server(server: BackgroundServer, engine: Engine, monkeypatch, capsys) -> None:
    import io

    from nmtserve.cli.main import main

    lines = [TEXTS[0], "", TEXTS[1], TEXTS[2]]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["translate", "--server", server.address, "--batch-size", "2"]) == 0
    want = [nbest[0][0] for nbest in expected(engine, [TEXTS[0], TEXTS[1], TEXTS[2]], DecodingOptions())]
    assert capsys.readouterr().out.splitlines() == [want[0], "", want[1], want[2]]


def test_model_info(stub, server: BackgroundServer) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (info.source_language, info.target_language, info.precision, info.device) == ("en", "de", "fp32", "cpu")
    assert info.default_options.beam_size == 4 and info.limits.max_input_tokens == 256
    assert info.batching == server.config.batching and info.name and info.version
    # Every limit a request can run into is advertised, with the value the server enforces.
    config = server.config
    for field in pb.Limits.DESCRIPTOR.fields:
        assert getattr(info.limits, field.name) == pytest.approx(getattr(config, field.name)), field.name


# -- errors ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "options", "message"),
    [
        ([], {}, "texts is empty"),
        (["word " * 300], {}, "the limit is 256"),
        (TEXTS[:1], dict(beam_size=17), "beam_size 17 exceeds"),
        (TEXTS[:1], dict(beam_size=2, num_hypotheses=3), "num_hypotheses 3 exceeds"),
        (TEXTS[:1], dict(length_penalty=-1.0), "length_penalty"),
        (TEXTS[:1], dict(max_length=10_000), "max_length 10000 exceeds"),
    ],
)
def test_invalid_argument(stub, texts: list[str], options: dict, message: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Translate(pb.TranslateRequest(texts=texts, options=decoding_options(**options)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()


class SlowBatch:
    """A DecodingBatch whose steps take at least its engine's ``delay`` seconds (read at every step, so a test can
    slow a phase down) and fail while a poisoned sentence is in it."""

    def __init__(self, inner, engine: SlowEngine, poison_len: int | None) -> None:
        self._inner, self._engine, self._poison_len = inner, engine, poison_len

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def __len__(self) -> int:
        return len(self._inner)

    def step(self):
        time.sleep(self._engine.delay)
        if self._poison_len is not None and any(s.source_len == self._poison_len for s in self._inner._sentences):
            raise RuntimeError("injected engine failure")
        return self._inner.step()


class SlowEngine:
    def __init__(self, engine: Engine, delay: float = 0.0, poison_len: int | None = None) -> None:
        self._engine, self.delay, self._poison_len = engine, delay, poison_len

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def new_batch(self) -> SlowBatch:
        return SlowBatch(self._engine.new_batch(), self, self._poison_len)


def wait_for(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


def test_deadline_cancel_and_queue_full(model_dir: Path, engine: Engine) -> None:
    slow = SlowEngine(engine, delay=0.02)
    cfg = config(  # one engine thread: a second would take the waiting sentence this test counts on
        model_dir, max_batch_size=1, max_queue_size=2, max_texts_per_request=2, batching="request", engine_workers=1
    )
    with BackgroundServer(cfg, engine=slow) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        url = server.metrics_url
        # Deadline: a long translation cannot finish in 0.1 s; its sentence leaves the batch.
        with pytest.raises(grpc.RpcError) as caught:
            stub.Translate(pb.TranslateRequest(texts=[TEXTS[0]]), timeout=0.1)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The client may hear of its deadline before the server's handler has ended: wait for the server's side, or
        # the "one in flight" below could be this request rather than the next one.
        expired = ("nmtserve_requests_total", (("code", "DEADLINE_EXCEEDED"), ("method", "Translate")))
        wait_for(lambda: server.server.state.inflight == 0 and metrics(url).get(expired))
        # Cancellation: the client gives up; the server stops working on it. Steps of 0.5 s meanwhile, so that the
        # translation cannot finish (OK) before the cancel arrives, however busy the machine is.
        slow.delay = 0.5
        call = stub.Translate.future(pb.TranslateRequest(texts=[TEXTS[1]]))
        wait_for(lambda: server.server.state.inflight == 1)
        call.cancel()
        wait_for(
            lambda: metrics(url).get(("nmtserve_requests_total", (("code", "CANCELLED"), ("method", "Translate"))))
        )
        wait_for(
            lambda: sum(v for (name, _), v in metrics(url).items() if name == "nmtserve_abandoned_sentences_total") >= 2
        )
        slow.delay = 0.02
        # Queue full: one sentence decoding and one waiting leave no room for two more.
        busy = stub.Translate.future(pb.TranslateRequest(texts=TEXTS[2:4]))
        wait_for(lambda: server.server.state.inflight == 1 and server.server._scheduler.running == 1)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Translate(pb.TranslateRequest(texts=TEXTS[:2]))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in caught.value.details()
        assert len(busy.result(timeout=30).translations) == 2
        wait_for(lambda: server.server.state.inflight == 0)
        samples = metrics(url)
        codes = {dict(labels)["code"]: v for (name, labels), v in samples.items() if name == "nmtserve_requests_total"}
        assert codes == {"DEADLINE_EXCEEDED": 1.0, "CANCELLED": 1.0, "RESOURCE_EXHAUSTED": 1.0, "OK": 1.0}
        # The engine thread sets the gauges just after it delivers the last answer: give it that moment.
        wait_for(lambda: metrics(url)[("nmtserve_running_sentences", ())] == 0)
        samples = metrics(url)
        assert samples[("nmtserve_running_sentences", ())] == 0 and samples[("nmtserve_queue_depth", ())] == 0


def test_engine_failure_is_the_requests_own(model_dir: Path, engine: Engine) -> None:
    poison = "select a printer from the list and print the version number of this program"
    poison_len = len(engine.encode_texts([poison])[0])
    assert all(len(ids) != poison_len for ids in engine.encode_texts(TEXTS))
    slow = SlowEngine(engine, delay=0.002, poison_len=poison_len)
    with BackgroundServer(config(model_dir, max_queue_delay_ms=50.0), engine=slow) as server:
        with TranslatorClient(server.address) as client, ThreadPoolExecutor(4) as pool:
            neighbours = [pool.submit(client.translate_texts, [text]) for text in TEXTS[:3]]
            failing = pool.submit(client.translate_texts, [TEXTS[3], poison])
            with pytest.raises(grpc.RpcError) as caught:
                failing.result(timeout=60)
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert "text 1" in caught.value.details()
            want = [nbest[0][0] for nbest in expected(engine, TEXTS[:3], DecodingOptions())]
            assert [f.result(timeout=60)[0] for f in neighbours] == want
            assert client.translate_texts(TEXTS[:1]) == want[:1]  # and the server keeps serving
        assert metrics(server.metrics_url)[("nmtserve_engine_errors_total", ())] >= 1


# -- batching, health, reflection, metrics --------------------------------------------------------------------------


@pytest.mark.parametrize("batching", ["request", "continuous"])
def test_concurrent_requests_are_batched_and_counted(model_dir: Path, engine: Engine, batching: str) -> None:
    with BackgroundServer(config(model_dir, max_queue_delay_ms=20.0, batching=batching)) as server:
        with TranslatorClient(server.address) as client, ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda text: client.translate_texts([text]), TEXTS * 3))
            with pytest.raises(grpc.RpcError):
                client.translate([])
            client.model_info()
        want = [nbest[0][0] for nbest in expected(engine, TEXTS, DecodingOptions())]
        assert [r[0] for r in results] == want * 3
        samples = metrics(server.metrics_url)
    translate = (("code", "OK"), ("method", "Translate"))
    assert samples[("nmtserve_requests_total", translate)] == 18
    assert samples[("nmtserve_request_duration_seconds_count", translate)] == 18
    invalid = (("code", "INVALID_ARGUMENT"), ("method", "Translate"))
    assert samples[("nmtserve_requests_total", invalid)] == 1
    assert samples[("nmtserve_requests_total", (("code", "OK"), ("method", "GetModelInfo")))] == 1
    assert samples[("nmtserve_queue_wait_seconds_count", ())] == 18
    steps = samples[("nmtserve_batch_size_count", ())]
    single = samples[("nmtserve_batch_size_bucket", (("le", "1.0"),))]
    assert steps > single, "no decode step ran more than one sentence"
    assert samples[("nmtserve_decode_step_seconds_count", ())] == steps
    assert samples[("nmtserve_tokens_total", (("direction", "input"),))] == 3 * sum(
        map(len, engine.encode_texts(TEXTS))
    )
    assert samples[("nmtserve_tokens_total", (("direction", "output"),))] > 0
    assert samples[("nmtserve_inflight_requests", ())] == 0
    info = [labels for (name, labels), v in samples.items() if name == "nmtserve_model_info" and v == 1]
    assert dict(info[0])["precision"] == "fp32" and dict(info[0])["device"] == "cpu"
    settings = server.config
    assert samples[("nmtserve_queue_capacity", (("unit", "sentences"),))] == settings.max_queue_size
    assert samples[("nmtserve_queue_capacity", (("unit", "tokens"),))] == settings.max_queue_tokens


@pytest.mark.parametrize("window", [0, 10_000])
def test_request_batching_join_window(model_dir: Path, engine: Engine, window: int) -> None:
    """Request-level batching: a sentence that arrives while a batch decodes joins it during the batch's first
    ``join_window_steps`` steps (and, short, finishes first); with no window it waits for the whole batch."""
    slow = SlowEngine(engine, delay=0.005)  # 5 ms a step: the first request decodes for about a second
    # one engine thread: with two, the second sentence would start its own batch on the idle one
    cfg = config(model_dir, batching="request", join_window_steps=window, engine_workers=1)
    with BackgroundServer(cfg, engine=slow) as server:
        with TranslatorClient(server.address) as client, ThreadPoolExecutor(2) as pool:
            # A long source (output cap 2 x source + 10) and the tiny random model, which loops rather than ending.
            first = pool.submit(client.translate_texts, [" ".join(TEXTS * 2)], pb.DecodingOptions(max_length=400))
            wait_for(lambda: server.server._scheduler.running == 1)
            second = pool.submit(client.translate_texts, [TEXTS[5]], pb.DecodingOptions(max_length=3))
            second.result(timeout=60)
            first_finished_before_second = first.done()
            first.result(timeout=60)
        samples = metrics(server.metrics_url)
    single = samples[("nmtserve_batch_size_bucket", (("le", "1.0"),))]
    shared_steps = samples[("nmtserve_batch_size_count", ())] - single
    if window:
        assert not first_finished_before_second and shared_steps > 0
    else:  # no decode step ever held both sentences: the second waited for the first batch to end
        assert shared_steps == 0


@pytest.mark.parametrize("limit", [0, 2])
def test_continuous_batching_closes_to_joins_after_max_later_joins(model_dir: Path, engine: Engine, limit: int) -> None:
    """Continuous batching with ``max_later_joins`` 2: two short sentences join a long running one (and finish
    first), a third waits for the long one to finish; with no limit the third joins too and finishes first."""
    slow = SlowEngine(engine, delay=0.005)  # 5 ms a step: the long sentence decodes for over a second
    cfg = config(model_dir, batching="continuous", max_later_joins=limit, engine_workers=1)
    with (
        BackgroundServer(cfg, engine=slow) as server,
        TranslatorClient(server.address) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        # the tiny random model loops to the output cap (2 x source + 10) rather than ending
        first = pool.submit(client.translate_texts, [" ".join(TEXTS * 2)], pb.DecodingOptions(max_length=400))
        wait_for(lambda: server.server._scheduler.running == 1)
        short = pb.DecodingOptions(max_length=3)
        joined = [client.translate_texts([TEXTS[i]], short) and not first.done() for i in (3, 4)]
        client.translate_texts([TEXTS[5]], short)
        third_waited = first.done()
        first.result(timeout=60)
    assert joined == [True, True]  # both modes let the first two join
    assert third_waited == bool(limit)


@pytest.mark.parametrize("workers", [1, 2])
def test_engine_workers_decode_batches_side_by_side(model_dir: Path, engine: Engine, workers: int) -> None:
    """``engine_workers``: two engine threads on one queue and one engine's sessions. With batches of one sentence,
    two sentences running at once means two batches at once: with two threads the second request starts on the
    idle one (the gauge sums both), with one thread it waits. Either way the answers are the engine's own."""
    slow = SlowEngine(engine, delay=0.02)  # the tiny random model loops to max_length: 60 steps, over a second
    cfg = config(model_dir, batching="request", max_batch_size=1, join_window_steps=0, engine_workers=workers)
    texts = [" ".join(TEXTS * 2), " ".join(TEXTS[::-1] * 2)]
    earlier = set(threading.enumerate())  # other tests' servers may still be winding down
    with BackgroundServer(cfg, engine=slow) as server, TranslatorClient(server.address) as client:
        threads = {t for t in threading.enumerate() if t.name.startswith("nmtserve-engine-") and t not in earlier}
        with ThreadPoolExecutor(2) as pool:
            calls = [pool.submit(client.translate_texts, [text], pb.DecodingOptions(max_length=60)) for text in texts]
            most, gauge = 0, 0.0
            while not all(call.done() for call in calls):
                most = max(most, server.server._scheduler.running)
                if most == 2:  # the gauge is set after each step: look until it shows both batches
                    gauge = max(gauge, metrics(server.metrics_url)[("nmtserve_running_sentences", ())])
                time.sleep(0.002)
            got = [call.result()[0] for call in calls]
    assert len(threads) == workers
    assert most == workers, f"at most {most} sentences ran at once with {workers} engine threads"
    assert workers == 1 or gauge == 2, "the running-sentences gauge is not the sum over the engine threads"
    assert got == [nbest[0][0] for nbest in expected(engine, texts, DecodingOptions(max_length=60))]


@pytest.mark.parametrize("batching", ["continuous", "request"])
def test_a_newcomer_starts_on_the_idle_engine_thread_not_in_the_running_batch(
    model_dir: Path, engine: Engine, batching: str
) -> None:
    """Two engine threads, one running a sentence: a second sentence goes to the idle thread (a batch of its own)
    rather than joining the running batch, though both modes' join rules would let it join (continuous: one
    waiting is a quarter of one running; request-level: within the first join_window_steps). The idle thread
    waits max_queue_delay_ms (here 200 ms, ten steps) for its batch to fill, so a running batch that joined
    newcomers whenever its own rule allowed would have taken it first."""
    slow = SlowEngine(engine, delay=0.02)
    cfg = config(model_dir, batching=batching, engine_workers=2, max_queue_delay_ms=200.0, join_window_steps=1000)
    with BackgroundServer(cfg, engine=slow) as server, TranslatorClient(server.address) as client:
        threads = server.server._scheduler
        with ThreadPoolExecutor(2) as pool:
            options = pb.DecodingOptions(max_length=80)
            first = pool.submit(client.translate_texts, [" ".join(TEXTS * 2)], options)
            wait_for(lambda: threads.running == 1)
            second = pool.submit(client.translate_texts, [" ".join(TEXTS[::-1] * 2)], options)
            wait_for(lambda: threads.running == 2)
            shares = sorted(scheduler.running for scheduler in threads.schedulers)
            first.result(timeout=60), second.result(timeout=60)
    assert shares == [1, 1], f"sentences per engine thread {shares}: the newcomer joined the running batch"


def test_reflection_v1_and_v1alpha(server: BackgroundServer) -> None:
    """Both reflection protocols list the services, and v1 describes itself and the Translator as v1 files."""
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="nmtserve.v1.Translator"),
    ]
    with grpc.insecure_channel(server.address) as channel:
        answers = {}
        for package in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
            call = channel.stream_stream(
                f"/{package}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            answers[package] = list(call(iter(requests), timeout=10))
    for listing, *_ in answers.values():
        services = {s.name for s in listing.list_services_response.service}
        assert {"nmtserve.v1.Translator", "grpc.health.v1.Health"} <= services
        assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= services
    _, itself, translator = answers["grpc.reflection.v1"]
    v1 = descriptor_pb2.FileDescriptorProto.FromString(itself.file_descriptor_response.file_descriptor_proto[0])
    alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(alpha)
    assert v1.package == "grpc.reflection.v1" and [s.name for s in v1.service] == ["ServerReflection"]

    def shapes(file: descriptor_pb2.FileDescriptorProto) -> list[tuple[str, str, int, int, str]]:
        """Every field's wire identity: same numbers and types means the two protocols encode alike."""
        return [
            (m.name, f.name, f.number, f.type, f.type_name.rsplit(".", 1)[-1])
            for m in file.message_type
            for f in m.field
        ]

    assert shapes(v1) == shapes(alpha) and len(shapes(v1)) > 10
    described = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in translator.file_descriptor_response.file_descriptor_proto
    ]
    assert any(f.package == "nmtserve.v1" and "Translator" in [s.name for s in f.service] for f in described)


def test_health_and_reflection(model_dir: Path) -> None:
    server = BackgroundServer(config(model_dir, warmup=True), load=False).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status(service: str = "") -> int:
                return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

            not_serving, serving = health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING
            assert status() == not_serving and status("nmtserve.v1.Translator") == not_serving
            assert metrics(server.metrics_url)[("nmtserve_serving", ())] == 0
            stub = pb_grpc.TranslatorStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Translate(pb.TranslateRequest(texts=TEXTS[:1]))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            seen = []
            watcher = threading.Thread(
                target=lambda: seen.extend(r.status for _, r in zip(range(3), watch, strict=False))
            )
            watcher.start()
            server.load()
            assert status() == serving and status("nmtserve.v1.Translator") == serving
            assert metrics(server.metrics_url)[("nmtserve_serving", ())] == 1
            assert stub.Translate(pb.TranslateRequest(texts=TEXTS[:1])).translations
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
            assert "nmtserve.v1.Translator" in services and "grpc.health.v1.Health" in services
            assert server.drain(timeout=5)
            assert status() == not_serving
            assert metrics(server.metrics_url)[("nmtserve_serving", ())] == 0
            watcher.join(timeout=10)
            assert seen[:3] == [not_serving, serving, not_serving]
            with pytest.raises(grpc.RpcError) as caught:
                stub.Translate(pb.TranslateRequest(texts=TEXTS[:1]))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in caught.value.details()
    finally:
        server.stop()
