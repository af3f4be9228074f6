"""Hostile clients to mix into a soak: a few threads that, for as long as the soak runs, send oversized requests
(refused at the token check: the costliest refusal) and open streams that never read their answers.

Bounded on purpose (``clients`` threads, each one request or stream at a time, with a pause between), so that
they test the server's guarantees (bounded memory, a free event loop, nothing lost for the others) rather than
saturate the machine the soak measures. Each hostile outcome is counted by status code; an oversized request
must be refused with INVALID_ARGUMENT (or RESOURCE_EXHAUSTED when too many are being checked), never answered
or failed otherwise.
"""

from __future__ import annotations

import threading
from collections import Counter

import grpc

from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc

# A reader that stops reading: no BDP probing and a 16 KiB window, so that gRPC's flow control pushes back at once.
SLOW_READER = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]
REFUSED_CODES = ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED")
PAUSE_S = 0.05  # between two hostile requests of one client
STREAM_HOLD_S = 3.0  # how long a never-reading stream stays open before its client gives up


def oversized(limits: pb.Limits) -> list[pb.TranslateRequest]:
    """Requests as large as the server's limits allow, refused at the token check: at the first text, and at the
    last one (so that every other text is tokenised first)."""
    count = max(1, min(limits.max_texts_per_request, 256))
    size = max(8, min(limits.max_input_bytes, 8192))
    over = ("word " * (size // 5 + 1))[:size]  # one token per word: far over max_input_tokens
    fits = "the cat sat on the mat. " * max(1, limits.max_input_tokens // 12)  # 11 tokens per sentence: fits
    return [pb.TranslateRequest(texts=[over] * count), pb.TranslateRequest(texts=[fits] * (count - 1) + [over])]


class HostileClients:
    """``with HostileClients(target, 4) as hostile: ...; hostile.figures()``; half the clients flood oversized
    requests, the other half open streams that never read."""

    def __init__(self, target: str, clients: int) -> None:
        self.target, self.clients = target, clients
        self.codes: Counter[str] = Counter()  # oversized unary requests, by status
        self.streams: Counter[str] = Counter()  # never-reading streams, by how they ended
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._flood if i % 2 == 0 else self._unread, name=f"hostile-{i}", daemon=True)
            for i in range(clients)
        ]

    def _count(self, counter: Counter[str], key: str) -> None:
        with self._lock:
            counter[key] += 1

    def _flood(self) -> None:
        options = [("grpc.max_send_message_length", 64 << 20)]
        with grpc.insecure_channel(self.target, options=options) as channel:
            stub = pb_grpc.TranslatorStub(channel)
            requests = oversized(stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).limits)
            sent = 0
            while not self._stop.is_set():
                try:
                    stub.Translate(requests[sent % len(requests)], timeout=60)
                    self._count(self.codes, "OK")
                except grpc.RpcError as error:
                    self._count(self.codes, error.code().name)
                sent += 1
                self._stop.wait(PAUSE_S)

    def _unread(self) -> None:
        while not self._stop.is_set():
            with grpc.insecure_channel(self.target, options=SLOW_READER) as channel:
                stub = pb_grpc.TranslatorStub(channel)
                requests = [pb.TranslateRequest(texts=["Hello world, this is a test."] * 16, stream_partial=True)] * 2
                requests += [pb.TranslateRequest(texts=[], request_id=f"{i:0256d}") for i in range(2000)]
                call = stub.TranslateStream(iter(requests), timeout=60)
                self._stop.wait(STREAM_HOLD_S)
                if call.done():
                    self._count(self.streams, call.code().name)  # the server ended it (RESOURCE_EXHAUSTED)
                else:
                    call.cancel()
                    self._count(self.streams, "held until the client gave up")
            self._stop.wait(PAUSE_S)

    def __enter__(self) -> HostileClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=70)

    def figures(self) -> dict:
        return {
            "clients": self.clients,
            "oversized_requests": dict(self.codes),
            "unread_streams": dict(self.streams),
            "all_oversized_refused": bool(self.codes) and set(self.codes) <= set(REFUSED_CODES),
        }
