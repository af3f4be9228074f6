"""Overload and faults against live servers on the demo model: a bounded queue (sentences and tokens) with a retry
hint, the per-connection in-flight limit, deadlines and cancellation in the queue and in the running batch, an
engine failure confined to its own request, a model that fails to load, and SIGTERM.

Fault injection, where a test needs it, wraps the real engine: a *gate* that holds the engine thread inside a
decode step until the test opens it (so that "while the engine is busy" is a state the test controls, not a
race), and a *poison* text whose sentence makes the engine raise. Process-level tests run the real
``nmtserve serve``; the gate is then a file, installed by a small launcher before the CLI starts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.loadtest.client import TranslatorClient
from nmtserve.loadtest.serverproc import ServerProcess
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig

SHORT = ["Hello.", "Open the file.", "Save it.", "Print the page.", "Close the window.", "Thank you."]
LONG = "Select the cells that you want to print, then open the File menu and choose Print to print them."
POISON = "The quarantined sentence makes the engine fail."


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll until ``predicate()`` holds (a bound against hanging, not a timing assertion)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


def offline(engine: Engine, texts: list[str], **options) -> list[str]:
    return [nbest[0].text for nbest in engine.translate(texts, DecodingOptions(**options))]


def code_of(future) -> str:
    try:
        future.result(timeout=120)
        return "OK"
    except grpc.RpcError as error:
        return error.code().name


# -- fault injection around the real engine -------------------------------------------------------------------------


class Gate:
    """Holds the engine thread inside a decode step while closed."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self.waiting = threading.Event()  # the engine thread is held at the gate

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def pass_(self) -> None:
        if not self._open.is_set():
            self.waiting.set()
            self._open.wait()
            self.waiting.clear()


class FaultyBatch:
    """A real ``DecodingBatch`` behind the gate; raises in ``stage`` ("add" or "step") while a poisoned sentence
    is in it. Only the public batch API is used (add, step, cancel, len)."""

    def __init__(self, inner, gate: Gate, poison: list[int] | None, stage: str, failures: list[int]) -> None:
        self._inner, self._gate, self._poison, self._stage, self._failures = inner, gate, poison, stage, failures
        self._live: dict = {}  # key -> poisoned?

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def __len__(self) -> int:
        return len(self._inner)

    def add(self, sources, options, keys=None, target_prefixes=None):
        poisoned = [list(source) == self._poison for source in sources]
        if self._stage == "add" and any(poisoned):
            self._failures.append(len(sources))
            raise RuntimeError("injected encoder failure")
        result = self._inner.add(sources, options, keys, target_prefixes)
        for key, bad in zip(keys, poisoned, strict=True):
            self._live[key] = bad
        return result

    def cancel(self, key):
        self._live.pop(key, None)
        return self._inner.cancel(key)

    def step(self):
        self._gate.pass_()
        if self._stage == "step" and any(self._live.values()):
            self._failures.append(len(self._live))
            raise RuntimeError("injected decode failure")
        finished = self._inner.step()
        for done in finished:
            self._live.pop(done.key, None)
        return finished


class FaultyEngine:
    def __init__(self, engine: Engine, poison_text: str | None = None, stage: str = "step") -> None:
        self._engine, self.gate, self.stage, self.failures = engine, Gate(), stage, []
        self.poison = None
        if poison_text is not None:
            self.poison = [*engine.tokenizer.encode_batch([poison_text])[0], engine.tokenizer.eos_id]

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def new_batch(self) -> FaultyBatch:
        return FaultyBatch(self._engine.new_batch(), self.gate, self.poison, self.stage, self.failures)


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path) -> Engine:
    """The server's own engine (the offline reference, ``demo_engine``, is a separate one)."""
    return Engine.load(demo_model_dir, threads=1, spin=False)


def config(model: Path, **overrides) -> ServerConfig:
    # One engine thread: these tests hold it at a gate and count what waits behind it in the queue.
    settings = dict(
        model=model, port=0, metrics_port=0, threads=1, engine_workers=1, warmup=False, max_queue_delay_ms=2.0
    )
    return ServerConfig(**(settings | overrides))


def counter(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# -- overload ---------------------------------------------------------------------------------------------------


def test_queue_is_bounded_in_sentences_and_tokens_with_a_retry_hint(
    demo_model_dir: Path, engine: Engine, demo_engine: Engine, metrics_of
) -> None:
    faulty = FaultyEngine(engine)
    cfg = config(
        demo_model_dir,
        max_batch_size=1,
        max_queue_size=8,
        max_queue_tokens=200,
        max_texts_per_request=4,
        max_input_tokens=32,
    )
    long_texts = [" ".join(["a"] * 30)] * 4  # 30 tokens + EOS each: 124 tokens
    with BackgroundServer(cfg, engine=faulty) as server, TranslatorClient(server.address) as client:
        stub = client.stub
        queue = lambda: server.server.service.backend.queue  # noqa: E731
        faulty.gate.close()
        running = stub.Translate.future(pb.TranslateRequest(texts=SHORT[:1]))
        wait_for(faulty.gate.waiting.is_set, what="engine held at the gate")
        queued = [stub.Translate.future(pb.TranslateRequest(texts=long_texts))]
        wait_for(lambda: len(queue()) == 4)
        # Tokens: 124 waiting + 124 > 200. Refused while the engine is still held: "at once", not after a wait.
        with pytest.raises(grpc.RpcError) as caught:
            stub.Translate(pb.TranslateRequest(texts=long_texts))
        error = caught.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queue_tokens" in error.details() and "limit is 200" in error.details()
        assert "retry in" in error.details()
        assert int(dict(error.trailing_metadata())["grpc-retry-pushback-ms"]) >= 1
        # Sentences: 4 waiting + 4 short ones fit (8); one more does not.
        queued.append(stub.Translate.future(pb.TranslateRequest(texts=SHORT[:4])))
        wait_for(lambda: len(queue()) == 8)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Translate(pb.TranslateRequest(texts=SHORT[4:5]))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queue_size" in caught.value.details() and "limit is 8" in caught.value.details()
        assert "grpc-retry-pushback-ms" in dict(caught.value.trailing_metadata())
        assert faulty.gate.waiting.is_set() and len(queue()) == 8 and queue().tokens <= 200
        faulty.gate.open()
        answers = [[t.hypotheses[0].text for t in f.result(timeout=120).translations] for f in [running, *queued]]
        assert answers == [offline(demo_engine, t) for t in (SHORT[:1], long_texts, SHORT[:4])]
        samples = metrics_of(server.metrics_url)
        assert samples[("nmtserve_queue_depth", ())] == 0 and samples[("nmtserve_queue_tokens", ())] == 0


def test_a_burst_above_capacity_is_refused_not_buffered(
    demo_model_dir: Path, engine: Engine, demo_engine: Engine, metrics_of
) -> None:
    """60 requests at once against a queue of 16 sentences, engine held: 16 wait, the rest are refused at once;
    every request gets exactly one answer and every accepted one is translated correctly."""
    faulty = FaultyEngine(engine)
    cfg = config(demo_model_dir, max_batch_size=1, max_queue_size=16, max_texts_per_request=4)
    with BackgroundServer(cfg, engine=faulty) as server, TranslatorClient(server.address) as client:
        faulty.gate.close()
        first = client.stub.Translate.future(pb.TranslateRequest(texts=["Hello."]))
        wait_for(faulty.gate.waiting.is_set)
        burst = [client.stub.Translate.future(pb.TranslateRequest(texts=[SHORT[i % 6]])) for i in range(60)]
        # Every refusal arrives while the engine is held; then exactly 16 requests are left waiting.
        wait_for(lambda: sum(f.done() for f in burst) == 60 - 16, what="44 refusals")
        assert len(server.server.service.backend.queue) == 16
        depth_at_peak = metrics_of(server.metrics_url)[("nmtserve_queue_depth", ())]
        faulty.gate.open()
        codes = [code_of(f) for f in [first, *burst]]
        assert codes.count("OK") == 17 and codes.count("RESOURCE_EXHAUSTED") == 44
        want = dict(zip(SHORT, offline(demo_engine, SHORT), strict=True))
        for i, future in enumerate(burst):
            if code_of(future) == "OK":
                assert future.result().translations[0].hypotheses[0].text == want[SHORT[i % 6]]
    assert depth_at_peak == 16


def test_in_flight_limit_per_connection(demo_model_dir: Path, engine: Engine) -> None:
    faulty = FaultyEngine(engine)
    cfg = config(demo_model_dir, max_inflight_per_connection=2)
    separate = [("grpc.use_local_subchannel_pool", 1)]  # its own TCP connection, not a shared subchannel
    with BackgroundServer(cfg, engine=faulty) as server:
        a, b = (grpc.insecure_channel(server.address, separate) for _ in range(2))
        with a, b:
            stub_a, stub_b = pb_grpc.TranslatorStub(a), pb_grpc.TranslatorStub(b)
            faulty.gate.close()
            held = [stub_a.Translate.future(pb.TranslateRequest(texts=[text])) for text in SHORT[:2]]
            wait_for(lambda: server.server.state.inflight == 2)
            with pytest.raises(grpc.RpcError) as caught:
                stub_a.Translate(pb.TranslateRequest(texts=SHORT[2:3]))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_inflight_per_connection" in caught.value.details() and "limit is 2" in caught.value.details()
            assert "grpc-retry-pushback-ms" in dict(caught.value.trailing_metadata())
            # In-band on a stream of the same connection; another connection is not affected.
            [refusal] = list(stub_a.TranslateStream(iter([pb.TranslateRequest(texts=SHORT[3:4])]), timeout=60))
            assert refusal.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            other = stub_b.Translate.future(pb.TranslateRequest(texts=SHORT[4:5]))
            wait_for(lambda: server.server.state.inflight == 3)
            faulty.gate.open()
            assert all(code_of(f) == "OK" for f in [*held, other])


# -- deadlines and cancellation ---------------------------------------------------------------------------------


def test_deadlines_and_cancellation_free_the_queue_and_the_batch(
    demo_model_dir: Path, engine: Engine, demo_engine: Engine, metrics_of
) -> None:
    faulty = FaultyEngine(engine)
    cfg = config(demo_model_dir, max_batch_size=1)
    with BackgroundServer(cfg, engine=faulty) as server, TranslatorClient(server.address) as client:
        stub, url, scheduler = client.stub, server.metrics_url, server.server._scheduler

        def abandoned(stage: str) -> float:
            return counter(metrics_of(url), "nmtserve_abandoned_sentences_total", stage=stage)

        faulty.gate.close()
        running = stub.Translate.future(pb.TranslateRequest(texts=[LONG]))  # in the batch, held at the gate
        wait_for(lambda: faulty.gate.waiting.is_set() and scheduler.running == 1)
        # In the queue: an expiring request and a cancelled one leave it without ever reaching the engine.
        with pytest.raises(grpc.RpcError) as caught:
            stub.Translate(pb.TranslateRequest(texts=SHORT[:2]), timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        cancelled = stub.Translate.future(pb.TranslateRequest(texts=SHORT[2:5]))
        wait_for(lambda: len(server.server.service.backend.queue) == 3)
        cancelled.cancel()
        wait_for(lambda: abandoned("queue") == 5, what="5 sentences abandoned in the queue")
        assert len(server.server.service.backend.queue) == 0
        # In the batch: the client of the running sentence goes away; the engine drops it at the next step.
        running.cancel()
        wait_for(lambda: server.server.state.inflight == 0)
        faulty.gate.open()
        wait_for(lambda: abandoned("batch") == 1 and scheduler.running == 0, what="the running sentence dropped")
        # A deadline that passes while the sentence is in the batch.
        faulty.gate.close()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Translate(pb.TranslateRequest(texts=[LONG]), timeout=3.0)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert scheduler.running == 1 and faulty.gate.waiting.is_set()
        faulty.gate.open()
        wait_for(lambda: abandoned("batch") == 2 and scheduler.running == 0)
        # Nothing of theirs was decoded to the end, and the server goes on translating correctly.
        samples = metrics_of(url)
        assert counter(samples, "nmtserve_requests_total", method="Translate", code="OK") == 0
        assert client.translate_texts(SHORT[:2]) == offline(demo_engine, SHORT[:2])
        codes = {dict(k[1])["code"] for k in metrics_of(url) if k[0] == "nmtserve_requests_total"}
        assert codes == {"OK", "CANCELLED", "DEADLINE_EXCEEDED"}


# -- engine failure -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["step", "add"])
def test_engine_failure_fails_only_its_own_request(
    demo_model_dir: Path, engine: Engine, demo_engine: Engine, metrics_of, stage: str
) -> None:
    faulty = FaultyEngine(engine, POISON, stage)
    with BackgroundServer(config(demo_model_dir), engine=faulty) as server, TranslatorClient(server.address) as client:
        stub = client.stub
        faulty.gate.close()
        first = stub.Translate.future(pb.TranslateRequest(texts=["Hello."]))
        wait_for(faulty.gate.waiting.is_set)
        # These queue up behind the held batch and form the next batch together, poison included.
        neighbours = [stub.Translate.future(pb.TranslateRequest(texts=[text])) for text in SHORT[1:4]]
        failing = stub.Translate.future(pb.TranslateRequest(texts=[SHORT[4], POISON]))
        stream = stub.TranslateStream(
            iter([pb.TranslateRequest(texts=[POISON], request_id="bad"), pb.TranslateRequest(texts=SHORT[5:])])
        )
        wait_for(lambda: len(server.server.service.backend.queue) == 7)
        faulty.gate.open()
        with pytest.raises(grpc.RpcError) as caught:
            failing.result(timeout=120)
        assert caught.value.code() == grpc.StatusCode.INTERNAL and "text 1" in caught.value.details()
        want = offline(demo_engine, SHORT)
        assert [f.result(timeout=120).translations[0].hypotheses[0].text for f in [first, *neighbours]] == want[:4]
        events = {response.request_id: response for response in stream}
        assert events["bad"].error.code == grpc.StatusCode.INTERNAL.value[0]
        assert events["1"].translations[0].hypotheses[0].text == want[5]
        assert max(faulty.failures) >= 2, "the failure hit a batch shared with other requests"
        assert client.translate_texts(SHORT[:2]) == want[:2] and client.health() == "SERVING"
        assert metrics_of(server.metrics_url)[("nmtserve_engine_errors_total", ())] >= 1


# -- model load failures (real processes) -------------------------------------------------------------------------


def corrupt_byte(directory: Path) -> str:
    path = directory / "encoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return "sha256 mismatch for encoder.onnx"


def remove_tokenizer(directory: Path) -> str:
    (directory / "sentencepiece.model").unlink()
    return "sentencepiece.model listed in the manifest is missing"


def truncate_manifest(directory: Path) -> str:
    path = directory / "manifest.json"
    path.write_text(path.read_text()[:100])
    return "manifest.json is not valid JSON"


@pytest.mark.parametrize("damage", [corrupt_byte, remove_tokenizer, truncate_manifest])
def test_a_model_that_fails_to_load_keeps_health_not_serving(demo_model_dir: Path, tmp_path: Path, damage) -> None:
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    reason = damage(model)
    server = ServerProcess(model, "--threads", "1", wait_serving=False)
    with server:
        record = server.wait_for("model load failed")
        assert record["level"] == "error" and record["model"] == str(model) and reason in record["error"]
        with TranslatorClient(server.address, timeout=30) as client:
            assert client.health() == "NOT_SERVING" and client.health("nmtserve.v1.Translator") == "NOT_SERVING"
            for call in (lambda: client.translate(["Hello."]), client.model_info):
                with pytest.raises(grpc.RpcError) as caught:
                    call()
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "failed to load" in caught.value.details() and str(model) not in caught.value.details()
        assert server.process.poll() is None, "the server stays up, NOT_SERVING"
    assert server.process.returncode == 1


def test_exit_on_load_failure(demo_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    corrupt_byte(model)
    server = ServerProcess(model, "--exit-on-load-failure", wait_serving=False)
    with server:
        assert server.wait(timeout=60) == 1
    assert "model load failed" in server.log_text()


# -- SIGTERM (real processes, gate = a file) ------------------------------------------------------------------------

GATED_SERVE = """
import os, sys, time
from nmtserve.engine import DecodingBatch

GATE = os.environ["NMTSERVE_TEST_GATE"]
_step = DecodingBatch.step

def step(self):  # injected fault: the engine thread waits here while the gate file exists
    while os.path.exists(GATE):
        time.sleep(0.005)
    return _step(self)

DecodingBatch.step = step
from nmtserve.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def gated_server(model: Path, gate: Path, *flags: str) -> ServerProcess:
    env = dict(os.environ, NMTSERVE_TEST_GATE=str(gate))
    return ServerProcess(model, "--threads", "1", "--no-warmup", *flags, launcher=("-c", GATED_SERVE), env=env)


def inflight(server: ServerProcess, metrics_of) -> float:
    return metrics_of(server.metrics_url).get(("nmtserve_inflight_requests", ()), -1)


def test_sigterm_drains_in_flight_requests_then_exits_0(
    demo_model_dir: Path, demo_engine: Engine, tmp_path: Path, metrics_of
) -> None:
    gate = tmp_path / "gate"
    with gated_server(demo_model_dir, gate) as server, TranslatorClient(server.address, timeout=120) as client:
        gate.touch()
        texts = [SHORT[:1], SHORT[1:3], [LONG]]
        calls = [client.stub.Translate.future(pb.TranslateRequest(texts=t)) for t in texts]
        wait_for(lambda: inflight(server, metrics_of) == 3)
        server.signal(signal.SIGTERM)
        server.wait_for("draining")
        assert client.health() == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as caught:
            client.translate(["Hello."])
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in caught.value.details()
        events = list(client.stream([pb.TranslateRequest(texts=["Hello."], request_id="late")]))
        assert events[0].error[0] == grpc.StatusCode.UNAVAILABLE
        assert server.process.poll() is None and not any(call.done() for call in calls)
        gate.unlink()  # the engine may go on: in-flight requests finish, then the process exits
        answers = [[t.hypotheses[0].text for t in call.result(timeout=120).translations] for call in calls]
        assert answers == [offline(demo_engine, t) for t in texts]
        assert server.wait(timeout=60) == 0
    messages = [json.loads(line)["message"] for line in server.lines if line.startswith("{")]
    assert "drain timed out" not in messages and messages[-1] == "stopped"


@pytest.mark.parametrize("how", ["drain timeout", "second signal"])
def test_shutdown_answers_what_cannot_finish(demo_model_dir: Path, tmp_path: Path, metrics_of, how: str) -> None:
    """The engine never finishes (gate kept closed): after the drain timeout, or at a second SIGTERM, the server
    still exits 0 and every in-flight request gets exactly one answer (an error)."""
    gate = tmp_path / "gate"
    timeout = "1" if how == "drain timeout" else "600"
    with gated_server(demo_model_dir, gate, "--drain-timeout-s", timeout) as server:
        with TranslatorClient(server.address, timeout=120) as client:
            gate.touch()
            calls = [client.stub.Translate.future(pb.TranslateRequest(texts=[text])) for text in SHORT[:3]]
            wait_for(lambda: inflight(server, metrics_of) == 3)
            server.signal(signal.SIGTERM)
            server.wait_for("draining")
            if how == "second signal":
                server.signal(signal.SIGTERM)
            assert server.wait(timeout=60) == 0
            codes = [code_of(call) for call in calls]
        gate.unlink()
    assert all(code in ("CANCELLED", "UNAVAILABLE") for code in codes), codes


def test_health_watch_sees_the_whole_life_cycle(demo_model_dir: Path, tmp_path: Path) -> None:
    """SERVING after load, NOT_SERVING as soon as SIGTERM arrives (what a load balancer watches)."""
    with ServerProcess(demo_model_dir, "--threads", "1") as server, grpc.insecure_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        server.signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert server.wait(timeout=60) == 0
