"""The HTTP counterpart of ``runner.Connections``: load on the native JSON API (``POST /v1/translate``).

The same open- and closed-loop drivers use it, so gRPC and HTTP are measured the same way on the same sentences.
HTTP/1.1 carries one request at a time per connection, so the pool opens as many keep-alive connections as there
are requests in flight (gRPC multiplexes them over a few HTTP/2 connections instead). Answers are reported with
the gRPC status names they stand for (429 -> RESOURCE_EXHAUSTED...), so the two reports read alike.
"""

from __future__ import annotations

import asyncio

import aiohttp
from google.protobuf.json_format import MessageToDict

from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb

CODE_NAMES = {
    200: "OK",
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "UNAUTHENTICATED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def base_url(target: str) -> str:
    return target.rstrip("/") if target.startswith(("http://", "https://")) else f"http://{target}"


class HttpConnections:
    """A keep-alive connection pool to one server's HTTP port."""

    def __init__(self, target: str, count: int = 0) -> None:
        self.base = base_url(target)
        self._session: aiohttp.ClientSession | None = None
        self._limit = count  # 0: one connection per request in flight

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def wait_ready(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    async with self.session.get(self.base + "/health") as answer:
                        if answer.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)

    async def model_info(self) -> dict:
        async with self.session.get(self.base + "/v1/models", timeout=aiohttp.ClientTimeout(total=10)) as answer:
            answer.raise_for_status()
            return (await answer.json())["models"][0]

    async def call(self, texts: list[str], options: pb.DecodingOptions, timeout: float) -> str:
        body = {"texts": texts, "options": MessageToDict(options, preserving_proto_field_name=True)}
        headers = {"X-Timeout-Ms": str(round(timeout * 1000))}
        try:
            async with self.session.post(
                self.base + "/v1/translate", json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as answer:
                await answer.read()
                return CODE_NAMES.get(answer.status, f"HTTP_{answer.status}")
        except TimeoutError:
            return "DEADLINE_EXCEEDED"
        except aiohttp.ClientError:
            return "UNAVAILABLE"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
