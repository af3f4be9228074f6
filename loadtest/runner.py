"""Send load with grpc.aio: open loop (Poisson arrivals at a rate) or closed loop (a fixed number in flight).

Open-loop latency is measured from each request's scheduled arrival time, not from when the client got round to
sending it, so a stalled client or server cannot hide queueing (no coordinated omission). Every run is bounded:
by its duration, by an optional request budget, by a per-request deadline, and (open loop) by a cap on requests
in flight beyond which arrivals are counted as CLIENT_OVERLOADED instead of piling up.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import grpc
from google.protobuf.json_format import MessageToDict

from nmtserve.loadtest.stats import Sample
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc

Progress = Callable[[int], None]  # called with the number of requests just completed


class Transport(Protocol):
    """What the load loops need of a client: Connections (gRPC) or loadtest.http.HttpConnections (HTTP)."""

    async def call(self, texts: list[str], options: pb.DecodingOptions, timeout: float) -> str: ...


class Connections:
    """A few independent HTTP/2 connections (one is a bottleneck for a Python client at high request rates)."""

    def __init__(self, target: str, count: int = 4) -> None:
        self.channels = [
            grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1), ("nmtserve.conn", i)])
            for i in range(count)
        ]
        self.stubs = [pb_grpc.TranslatorStub(channel) for channel in self.channels]
        self._next = itertools.cycle(self.stubs)

    def stub(self) -> pb_grpc.TranslatorStub:
        return next(self._next)

    async def call(self, texts: list[str], options: pb.DecodingOptions, timeout: float) -> str:
        """One Translate on the next connection; its status name."""
        return await _call(self.stub(), texts, options, timeout)

    async def model_info(self) -> dict:
        info = await self.stub().GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        return MessageToDict(info, preserving_proto_field_name=True)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in self.channels)), timeout)

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self.channels))


async def _call(stub: pb_grpc.TranslatorStub, texts: list[str], options: pb.DecodingOptions, timeout: float) -> str:
    try:
        await stub.Translate(pb.TranslateRequest(texts=texts, options=options), timeout=timeout)
        return "OK"
    except grpc.aio.AioRpcError as error:
        return error.code().name


async def open_loop(
    connections: Transport,
    requests: Iterable[list[str]],
    rate: float,
    duration: float,
    options: pb.DecodingOptions,
    timeout: float = 30.0,
    max_inflight: int = 1024,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[Sample]:
    """Poisson arrivals at ``rate`` requests/s for ``duration`` seconds (or until ``requests`` runs out)."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    samples: list[Sample] = []
    tasks: set[asyncio.Task] = set()
    start = loop.time()
    due = 0.0
    source: Iterator[list[str]] = iter(requests)

    async def one(texts: list[str], due: float) -> None:
        code = await connections.call(texts, options, timeout)
        samples.append(Sample(due, loop.time() - start - due, code, len(texts)))
        if progress:
            progress(1)

    while True:
        due += rng.expovariate(rate)
        if due >= duration:
            break
        texts = next(source, None)
        if texts is None:
            break
        delay = start + due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_inflight:
            samples.append(Sample(due, math.nan, "CLIENT_OVERLOADED", len(texts)))
            continue
        task = asyncio.create_task(one(texts, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*list(tasks))
    return samples


async def closed_loop(
    connections: Transport,
    requests: Iterable[list[str]],
    concurrency: int,
    duration: float,
    options: pb.DecodingOptions,
    timeout: float = 30.0,
    progress: Progress | None = None,
) -> list[Sample]:
    """``concurrency`` workers, each sending its next request as soon as the previous one is answered, until
    ``duration`` seconds have passed or ``requests`` runs out."""
    loop = asyncio.get_running_loop()
    samples: list[Sample] = []
    source: Iterator[list[str]] = iter(requests)
    start = loop.time()
    stop_at = start + duration

    async def worker() -> None:
        while loop.time() < stop_at:
            texts = next(source, None)
            if texts is None:
                return
            due = loop.time() - start
            code = await connections.call(texts, options, timeout)
            samples.append(Sample(due, loop.time() - start - due, code, len(texts)))
            if progress:
                progress(1)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples
