"""Checking and tokenising a request, cheap checks first and the expensive part off the event loop.

Any front door (the gRPC service, an HTTP API) calls ``RequestChecker.prepare`` with the request's texts and its
decoding options. The order is what keeps a hostile client cheap to refuse:
1. counts and byte sizes (``check_sizes``): no text is looked at beyond its length, on the loop;
2. the decoding options, on the loop;
3. control characters, blank texts and tokenising (``encode_texts``): on the loop only for small requests (at
   most ``inline_bytes`` of text, microseconds), otherwise in a small pool of worker threads, so that two clients
   sending 2 MB requests refused at the token check do not stall every other request and health check.
Documents are planned (parsed, segmented, tokenised) on the same workers, whatever their size.
At most ``max_waiting`` large requests and documents wait for or occupy those workers; more are refused with
RESOURCE_EXHAUSTED, so the memory held by requests waiting to be checked stays bounded by
``max_waiting`` x ``max_message_bytes``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from nmtserve.engine import DecodingOptions
from nmtserve.engine.tokenizer import Tokenizer
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.server.config import ServerConfig
from nmtserve.server.documents.requests import DocumentRequest, encode_documents
from nmtserve.server.validation import (
    EncodedText,
    Overloaded,
    RequestError,
    check_sizes,
    encode_texts,
    resolve_options,
)

INLINE_BYTES = 16 * 1024  # a request with at most this much text is checked on the loop: cheaper than a hop
CHECK_WORKERS = 2  # threads that check and tokenise large requests
MAX_WAITING = 16  # large requests checked or waiting to be; more are refused
T = TypeVar("T")
CHECK_RETRY_S = 0.1  # the retry hint then: a large request takes the pool milliseconds to tens of milliseconds


@dataclass(frozen=True)
class Prepared:
    """A request that passed every check: what the queue needs, and nothing of the request's texts."""

    options: DecodingOptions
    encoded: list[EncodedText]  # the non-blank texts, in order
    count: int  # texts in the request (blank ones are answered without the engine)


class RequestChecker:
    """Validates and tokenises requests for one loaded model; one per server, shared by its front doors."""

    def __init__(
        self,
        config: ServerConfig,
        tokenizer: Tokenizer,
        vocab_size: int,
        workers: int = CHECK_WORKERS,
        max_waiting: int = MAX_WAITING,
        inline_bytes: int = INLINE_BYTES,
    ) -> None:
        self.config, self.tokenizer, self.vocab_size = config, tokenizer, vocab_size
        self.max_waiting, self.inline_bytes = max_waiting, inline_bytes
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="nmtserve-check")
        self._waiting = 0  # touched on the event loop only

    @property
    def waiting(self) -> int:
        """Large requests being checked or waiting for a worker."""
        return self._waiting

    def _encode(
        self, texts: Sequence[str], prefix: Sequence[int], suffix: Sequence[int] = ()
    ) -> list[EncodedText] | RequestError:
        # The error is returned, not raised: raised in the worker, its traceback would keep this frame (and the
        # request's texts) alive until the cyclic garbage collector ran.
        try:
            return encode_texts(texts, self.tokenizer, self.config, prefix, suffix)
        except RequestError as error:
            return RequestError(error.code, error.message)

    def _plan(self, texts: Sequence[str], form: str, source: str, target: str) -> DocumentRequest | RequestError:
        try:
            return encode_documents(texts, form, self.tokenizer, self.config, source, target)
        except RequestError as error:
            return RequestError(error.code, error.message)

    async def _in_pool(self, work: Callable[..., T | RequestError], *args: Any) -> T:
        """``work(*args)`` on the workers, or RESOURCE_EXHAUSTED when ``max_waiting`` jobs already hold them."""
        if self._waiting >= self.max_waiting:
            raise Overloaded(
                f"{self._waiting} large requests are already being checked (the limit is {self.max_waiting}); retry "
                f"in {CHECK_RETRY_S:g} s or send smaller requests",
                CHECK_RETRY_S,
            )
        self._waiting += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)
        finally:
            self._waiting -= 1
        if isinstance(result, RequestError):
            raise result
        return result

    async def prepare(
        self,
        texts: Sequence[str],
        options: pb.DecodingOptions,
        prefix: Sequence[int] = (),
        suffix: Sequence[int] = (),
    ) -> Prepared:
        """The request's options and token ids (each source after ``prefix``, a target-language token), or
        RequestError (INVALID_ARGUMENT, or RESOURCE_EXHAUSTED when too many large requests are already checked)."""
        size = check_sizes(texts, self.config)
        resolved = resolve_options(options, self.config, self.vocab_size)
        if size <= self.inline_bytes:
            return Prepared(resolved, encode_texts(texts, self.tokenizer, self.config, prefix, suffix), len(texts))
        return Prepared(resolved, await self._in_pool(self._encode, texts, prefix, suffix), len(texts))

    async def plan_documents(self, texts: Sequence[str], form: str, source: str, target: str) -> DocumentRequest:
        """The request's documents parsed, segmented and tokenised (``encode_documents``) on the same bounded
        workers: a page of up to ``max_request_bytes`` takes seconds to plan (a pathological Markdown one 17 s of
        CPU), and on Python's default pool any number of them queued and ran at once, unbounded in CPU and
        memory. Now at most ``max_waiting`` are held, the rest are refused with RESOURCE_EXHAUSTED."""
        return await self._in_pool(self._plan, texts, form, source, target)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
