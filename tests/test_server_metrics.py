"""Per-model metrics: ``ServerMetrics.for_model`` series labelled ``model``/``version``, ``forget_model`` leaving
nothing stale, ``ServerMetrics`` itself standing in for its served model, and a real engine thread (Scheduler
with the demo model) recording into its own model's series. Everything is read back through the Prometheus text
exposition, parsed with prometheus_client's parser, as a scraper would see it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nmtserve.engine import DecodingOptions, Engine, Hypothesis
from nmtserve.server.batching import Budget
from nmtserve.server.metrics import ServerMetrics
from nmtserve.server.scheduler import Scheduler
from nmtserve.server.work import Request, WorkItem
from nmtserve.server.workqueue import WorkQueue

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def exposed(metrics: ServerMetrics) -> Samples:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def of_model(samples: Samples, model: str, version: str | None = None) -> Samples:
    """The samples labelled with ``model`` (and ``version`` when given)."""
    return {
        key: value
        for key, value in samples.items()
        if dict(key[1]).get("model") == model and (version is None or dict(key[1]).get("version") == version)
    }


def test_for_model_gives_each_pair_its_own_labelled_series_and_the_same_object_again() -> None:
    metrics = ServerMetrics()
    fp32, int8 = metrics.for_model("demo", "1"), metrics.for_model("demo", "2")
    assert metrics.for_model("demo", "1") is fp32 and fp32 is not int8
    fp32.queue_wait.observe(0.01)
    fp32.queue_depth.set(3)
    fp32.tokens.labels("input").inc(7)
    fp32.abandoned.labels("queue").inc()
    int8.queue_depth.set(5)
    int8.engine_errors.inc(2)
    int8.queue_capacity.labels("sentences").set(64)
    samples = exposed(metrics)
    one = (("model", "demo"), ("version", "1"))
    two = (("model", "demo"), ("version", "2"))
    assert samples[("nmtserve_queue_wait_seconds_count", one)] == 1
    assert samples[("nmtserve_queue_wait_seconds_count", two)] == 0
    assert samples[("nmtserve_queue_depth", one)] == 3 and samples[("nmtserve_queue_depth", two)] == 5
    assert samples[("nmtserve_tokens_total", (("direction", "input"), *one))] == 7
    assert samples[("nmtserve_tokens_total", (("direction", "output"), *two))] == 0  # exported from the start
    assert samples[("nmtserve_abandoned_sentences_total", (*one[:1], ("stage", "queue"), *one[1:]))] == 1
    assert samples[("nmtserve_engine_errors_total", two)] == 2 and samples[("nmtserve_engine_errors_total", one)] == 0
    assert samples[("nmtserve_queue_capacity", (*two[:1], ("unit", "sentences"), *two[1:]))] == 64
    # every per-model series names its model: nothing unlabelled is left over from the one-model days
    for name, labels in samples:
        if name.startswith(("nmtserve_queue", "nmtserve_batch", "nmtserve_decode", "nmtserve_tokens")):
            assert {"model", "version"} <= dict(labels).keys(), (name, labels)


def test_forget_model_removes_every_series_of_that_pair_and_only_that_pair() -> None:
    metrics = ServerMetrics()
    for version in ("1", "2"):
        model = metrics.describe_model("demo", version, "fp32", "cpu")
        model.queue_wait.observe(0.01)
        model.queue_capacity.labels("tokens").set(1000)
        model.abandoned.labels("batch").inc()
    metrics.for_model("other", "1").running.set(2)
    metrics.count_request("Translate", "OK", "demo", 0.1)
    metrics.count_request("Translate", "OK", "other", 0.1)
    metrics.forget_model("demo", "1")
    samples = exposed(metrics)
    assert of_model(samples, "demo", "1") == {}
    assert not any(name == "nmtserve_model_info" and dict(labels)["version"] == "1" for name, labels in samples)
    assert of_model(samples, "demo", "2")[("nmtserve_queue_wait_seconds_count", (("model", "demo"), ("version", "2")))]
    # demo version 2 still serves: demo's request series stay
    assert samples[("nmtserve_requests_total", (("code", "OK"), ("method", "Translate"), ("model", "demo")))] == 1
    metrics.forget_model("demo", "2")
    samples = exposed(metrics)
    assert of_model(samples, "demo") == {}, "the name's last version is gone: its request series go too"
    assert samples[("nmtserve_running_sentences", (("model", "other"), ("version", "1")))] == 2
    assert samples[("nmtserve_requests_total", (("code", "OK"), ("method", "Translate"), ("model", "other")))] == 1
    metrics.forget_model("never", "loaded")  # nothing to forget is no error
    assert metrics.for_model("demo", "1") is not None  # and a forgotten pair can come back


def test_server_metrics_records_into_the_model_set_model_names() -> None:
    """The one-model server hands ServerMetrics to its queue and engine thread before it knows the model's name."""
    metrics = ServerMetrics()
    depth = metrics.queue_depth.set  # bound early, as the work queue's callback is
    depth(4)
    metrics.queue_capacity.labels("sentences").set(128)
    metrics.queue_wait.observe(0.5)  # before the model is named: not recorded (no series with an empty model)
    assert not any("model" in dict(labels) for _, labels in exposed(metrics))
    metrics.set_model("demo", "1", "fp32", "cpu")
    depth(6)
    metrics.queue_wait.observe(0.01)
    metrics.tokens.labels("output").inc(3)
    samples = exposed(metrics)
    pair = (("model", "demo"), ("version", "1"))
    assert samples[("nmtserve_queue_depth", pair)] == 6
    assert samples[("nmtserve_queue_capacity", (pair[0], ("unit", "sentences"), pair[1]))] == 128  # remembered
    assert samples[("nmtserve_queue_wait_seconds_count", pair)] == 1
    assert samples[("nmtserve_tokens_total", (("direction", "output"), *pair))] == 3
    assert samples[("nmtserve_model_info", (("device", "cpu"), ("name", "demo"), ("precision", "fp32"), *pair[1:]))]
    metrics.set_model("demo", "2", "int8", "cpu")  # a new version served: recording moves to it
    metrics.queue_wait.observe(0.02)
    samples = exposed(metrics)
    two = (pair[0], ("version", "2"))
    assert samples[("nmtserve_queue_capacity", (pair[0], ("unit", "sentences"), ("version", "2")))] == 128
    assert samples[("nmtserve_queue_wait_seconds_count", two)] == 1
    assert samples[("nmtserve_queue_wait_seconds_count", pair)] == 1, "the old version keeps its series..."
    metrics.forget_model("demo", "1")
    samples = exposed(metrics)
    assert of_model(samples, "demo", "1") == {}, "...until it is forgotten (unloaded)"
    assert [dict(labels)["version"] for name, labels in samples if name == "nmtserve_model_info"] == ["2"]


def test_request_series_carry_the_routed_model() -> None:
    metrics = ServerMetrics()
    metrics.count_request("Translate", "INVALID_ARGUMENT", "", 0.001)  # refused before routing
    metrics.count_request("Translate", "OK", "en-de", 0.2)
    samples = exposed(metrics)
    assert samples[("nmtserve_requests_total", (("code", "INVALID_ARGUMENT"), ("method", "Translate"), ("model", "")))]
    key = (("code", "OK"), ("method", "Translate"), ("model", "en-de"))
    assert samples[("nmtserve_request_duration_seconds_count", key)] == 1


class WaitingSink:
    """A RequestSink for a test on plain threads: results land in a dict, ``done`` is set when all are in."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.results: dict[int, list[Hypothesis]] = {}
        self.errors: list[BaseException] = []
        self.done = threading.Event()

    def finished(self, index: int, hypotheses: list[Hypothesis]) -> None:
        self.results[index] = hypotheses
        if len(self.results) == self.count:
            self.done.set()

    def partial(self, index: int, token_ids: list[int]) -> None:
        pass

    def failed(self, error: BaseException) -> None:
        self.errors.append(error)
        self.done.set()


@pytest.mark.parametrize("per_model", [True, False], ids=["for_model", "server_metrics"])
def test_the_engine_thread_records_into_its_models_series(
    demo_model_dir: Path, demo_engine: Engine, per_model: bool
) -> None:
    metrics = ServerMetrics()
    if per_model:
        target = metrics.for_model("demo", "7")
    else:
        metrics.set_model("demo", "7", "fp32", "cpu")
        target = metrics  # type: ignore[assignment]
    queue = WorkQueue(64, on_depth=target.queue_depth.set, on_tokens=target.queue_tokens.set)
    scheduler = Scheduler(demo_engine, queue, Budget(8, 4096, 64), target)
    texts = ["Hello world.", "The cat sat on the mat.", "How are you?"]
    sources = demo_engine.encode_texts(texts)
    sink = WaitingSink(len(texts))
    request = Request(sink)
    options = DecodingOptions(beam_size=2)
    scheduler.start()
    try:
        queue.put([WorkItem(request, i, ids, options) for i, ids in enumerate(sources)])
        assert sink.done.wait(60) and not sink.errors
    finally:
        scheduler.stop()
    reference = demo_engine.translate_ids(sources, options)
    assert [sink.results[i][0].token_ids for i in range(len(texts))] == [r[0].token_ids for r in reference]
    pair = (("model", "demo"), ("version", "7"))
    samples = exposed(metrics)
    assert samples[("nmtserve_queue_wait_seconds_count", pair)] == len(texts)
    assert samples[("nmtserve_decode_step_seconds_count", pair)] >= 1
    turns = samples[("nmtserve_turn_wait_seconds_count", pair)]  # every encode and step took a turn
    assert (
        turns
        == samples[("nmtserve_decode_step_seconds_count", pair)] + samples[("nmtserve_encode_seconds_count", pair)]
    )
    assert samples[("nmtserve_tokens_total", (("direction", "input"), *pair))] == sum(len(s) for s in sources)
    assert samples[("nmtserve_queue_depth", pair)] == 0
