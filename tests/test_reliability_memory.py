"""Memory under hostile clients (issue 18), measured on a real ``nmtserve serve`` process from /proc.

The server's RSS after warm-up is the baseline; a few hundred refused large requests, and many streams that never
read their answers, must leave it within ``RSS_BOUND`` of that baseline (figures in docs/reliability.md).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from nmtserve.loadtest.serverproc import ServerProcess
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc

RSS_BOUND = 96 * 1024 * 1024  # growth allowed over the warmed-up baseline (seen: up to +48 MiB right after a round)
MIB = 1024 * 1024
# 256 texts of 8 000 bytes, each over the 256-token limit (2 MB): refused at the token check, the costliest refusal
OVER_TOKENS = pb.TranslateRequest(texts=[("word " * 1700)[:8000]] * 256)
# ... and one refused only at its last text, so that 255 texts are tokenised first
LAST_OVER = pb.TranslateRequest(texts=["the cat sat on the mat. " * 20] * 255 + [("word " * 1700)[:8000]])
SLOW_READER = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]
BIG = [("grpc.max_send_message_length", 8 * MIB)]


def refuse(address: str, request: pb.TranslateRequest, count: int) -> None:
    with grpc.insecure_channel(address, options=BIG) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        for _ in range(count):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Translate(request, timeout=60)
            assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


def never_read(address: str, seconds: float) -> None:
    """A stream whose answers are never read: requests answered at once (in-band errors with long ids), and two
    large stream_partial requests."""
    requests = [pb.TranslateRequest(texts=["Hello world, this is a test."] * 16, stream_partial=True)] * 2
    requests += [pb.TranslateRequest(texts=[], request_id=f"{i:0256d}") for i in range(3000)]
    with grpc.insecure_channel(address, options=SLOW_READER) as channel:
        call = pb_grpc.TranslatorStub(channel).TranslateStream(iter(requests), timeout=60)
        time.sleep(seconds)  # not reading while the server pauses, then cancels the stream
        call.cancel()


@pytest.fixture(scope="module")
def server(demo_model_dir: Path):
    with ServerProcess(demo_model_dir, "--threads", "1", "--stream-stall-timeout-s", "1") as running:
        yield running


def refused_round(address: str) -> None:
    """Two clients flooding refused 2 MB requests (at the first text and at the last), 150 requests in all."""
    with ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(refuse, address, OVER_TOKENS, 60) for _ in range(2)]
        jobs += [pool.submit(refuse, address, LAST_OVER, 15) for _ in range(2)]
        for job in jobs:
            job.result()


def unread_round(address: str) -> None:
    """16 streams at once that never read."""
    with ThreadPoolExecutor(16) as pool:
        for job in [pool.submit(never_read, address, 2.0) for _ in range(16)]:
            job.result()


def test_rss_stays_flat_under_refused_large_requests_and_unread_streams(server: ServerProcess) -> None:
    """Warm-up is one round of each hostile load (the allocator's arenas and gRPC's buffers reach their working
    size); after it, two more rounds of each (300 refused 2 MB requests, 32 unread streams) must not grow RSS by
    more than ``RSS_BOUND``. Before the fix, refused requests alone grew a server from 181 to 1,511 MiB."""
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        for _ in range(3):
            assert stub.Translate(pb.TranslateRequest(texts=["Hello world."] * 8), timeout=60).translations
    refused_round(server.address)
    unread_round(server.address)
    baseline = server.rss_bytes()
    figures = {"after warm-up": baseline}
    for round_ in (1, 2):
        refused_round(server.address)
        figures[f"after {150 * round_} more refused"] = server.rss_bytes()
        unread_round(server.address)
        figures[f"after {16 * round_} more unread streams"] = server.rss_bytes()
    with grpc.insecure_channel(server.address) as channel:  # still serving
        assert pb_grpc.TranslatorStub(channel).Translate(pb.TranslateRequest(texts=["Hello."]), timeout=60)
    print({name: f"{value / MIB:.0f} MiB" for name, value in figures.items()})
    for name, value in figures.items():
        assert value - baseline <= RSS_BOUND, f"{name}: {value / MIB:.0f} MiB vs baseline {baseline / MIB:.0f} MiB"
    assert not [r for r in server.records if r.get("level") == "error"], server.tail()
