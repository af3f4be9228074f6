"""A light client is not stuck behind a big document: the scheduler deals batch slots round robin over requests.

A live server on the demo model with small batches (4 sentences), in both batching modes, gets a 60-sentence
document, then, once the document's first batch is running, a one-sentence request. First in, first out would
admit all 60 document sentences before the light one; fair share admits it in the next batch. The property is a
count of sentences admitted to the engine (from /metrics) before the light answer arrived, not a time.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig

BATCH = 4
DOCUMENT = " ".join(["Open the file menu.", "The package contains the documentation.", "Hello."] * 20)  # 60
ADMITTED = ("nmtserve_admitted_batch_size_sum", ())


@pytest.fixture(scope="module", params=["request", "continuous"])
def server(demo_model_dir: Path, request: pytest.FixtureRequest):
    config = ServerConfig(
        batching=request.param,
        model=demo_model_dir,
        port=0,
        metrics_port=0,
        threads=1,
        warmup=False,
        max_length=40,
        max_batch_size=BATCH,
        max_sentences_per_request=100,
    )
    with BackgroundServer(config) as running:
        yield running


def test_a_light_request_joins_the_next_batch_not_the_end_of_the_document(server, metrics_of):
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        before = metrics_of(server.metrics_url).get(ADMITTED, 0.0)
        answer: list[pb.TranslateResponse] = []
        document = threading.Thread(
            target=lambda: answer.append(stub.Translate(pb.TranslateRequest(texts=[DOCUMENT], format="text"))),
            daemon=True,
        )
        document.start()
        while metrics_of(server.metrics_url).get(ADMITTED, 0.0) - before < BATCH:  # its first batch is running
            assert document.is_alive()
            time.sleep(0.01)
        light = stub.Translate(pb.TranslateRequest(texts=["Hello."]))
        admitted = metrics_of(server.metrics_url)[ADMITTED] - before
        still_running = document.is_alive()
        document.join(timeout=600)
    assert light.translations[0].hypotheses[0].text
    # the document's first batch (or two, if the first ended before the light request was queued), the batch the
    # light one joined, and perhaps one more admitted by the time we scraped: far from the 61 that first in,
    # first out admits before the light sentence
    assert admitted <= 5 * BATCH, admitted
    assert still_running
    assert len(answer) == 1 and answer[0].translations[0].hypotheses[0].text
