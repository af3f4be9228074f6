"""The ``nmtserve.v1.Translator`` gRPC service (grpc.aio): validation, queueing, waiting, answering.

Handlers never run the engine: they tokenise, queue work items and await results that the engine thread posts.
Status codes: INVALID_ARGUMENT (empty request, text too long, bad options), RESOURCE_EXHAUSTED (queue full),
DEADLINE_EXCEEDED, CANCELLED, UNAVAILABLE (loading or draining), INTERNAL (the engine failed on this request's
own text). On TranslateStream, request-scoped failures come back in-band (``TranslateResponse.error``) so that one
bad request does not end a stream carrying others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata

import grpc

from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.config import ServerConfig
from nmtserve.server.engine import Engine
from nmtserve.server.responses import blank_translation, translation
from nmtserve.server.scheduler import EngineFailure, ShuttingDown
from nmtserve.server.sink import LoopSink
from nmtserve.server.tracking import ServingState
from nmtserve.server.validation import RequestError, default_options, encode_texts, resolve_options
from nmtserve.server.work import Request, WorkItem
from nmtserve.server.workqueue import QueueClosed, QueueFull, WorkQueue

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Translator"].full_name
PartialSender = Callable[[int, list[int]], Awaitable[None]]


def server_version() -> str:
    try:
        return metadata.version("nmtserve")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Backend:
    """What a loaded model gives the service."""

    engine: Engine
    queue: WorkQueue


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class TranslatorService(pb_grpc.TranslatorServicer):
    def __init__(self, config: ServerConfig, state: ServingState) -> None:
        self.config, self.state = config, state
        self.backend: Backend | None = None  # set once the model is loaded

    # -- the request pipeline, shared by Translate and TranslateStream --------------------------------------------

    async def _translate(
        self, request: pb.TranslateRequest, deadline: float | None, send_partial: PartialSender | None = None
    ) -> pb.TranslateResponse:
        reason = self.state.unavailable_reason()
        if reason is not None or self.backend is None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, reason or "the model is not loaded")
        backend = self.backend
        tokenizer = backend.engine.tokenizer
        options = resolve_options(request.options, self.config, backend.engine.info.vocab_size)
        encoded = encode_texts(list(request.texts), tokenizer, self.config)
        sink = LoopSink(asyncio.get_running_loop())
        work = Request(sink, deadline, partial=send_partial is not None)
        items = [WorkItem(work, text.index, text.source_ids, options) for text in encoded]
        try:
            if items:
                backend.queue.put(items)
        except QueueFull as error:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)) from None
        except QueueClosed as error:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, str(error)) from None
        done = False
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            results = await asyncio.wait_for(sink.collect([item.index for item in items], send_partial), timeout)
            done = True
        except TimeoutError:
            raise RequestError(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the translation finished"
            ) from None
        except EngineFailure as error:
            log.error("engine failure", extra={"fields": {"error": str(error)}})
            raise RequestError(grpc.StatusCode.INTERNAL, str(error)) from None
        except ShuttingDown as error:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, str(error)) from None
        finally:
            if not done:  # cancelled, expired or failed: free the queue and the running batch of its sentences
                work.cancel()  # the engine thread drops its running sentences at the next step
                removed = backend.queue.discard(work)
                if removed:
                    self.state.metrics.abandoned.labels("queue").inc(removed)
        response = pb.TranslateResponse()
        for i in range(len(request.texts)):
            if i in results:
                response.translations.append(translation(results[i], tokenizer))
            else:
                response.translations.append(blank_translation(options.return_scores))
        return response

    def _expired(self, deadline: float | None) -> bool:
        return deadline is not None and time.monotonic() >= deadline

    # -- RPCs ----------------------------------------------------------------------------------------------------

    async def Translate(self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext) -> pb.TranslateResponse:
        deadline = _deadline(context)
        with self.state.track("Translate") as call:
            try:
                return await self._translate(request, deadline)
            except RequestError as error:
                call.code = error.code
                await context.abort(error.code, error.message)
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.DEADLINE_EXCEEDED if self._expired(deadline) else grpc.StatusCode.CANCELLED
                raise
        raise AssertionError("unreachable")  # context.abort raises

    async def TranslateStream(
        self, request_iterator: AsyncIterator[pb.TranslateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranslateResponse]:
        deadline = _deadline(context)
        out: asyncio.Queue[pb.TranslateResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task] = set()

        async def read() -> None:
            try:
                ordinal = 0
                async for request in request_iterator:
                    request_id = request.request_id or str(ordinal)
                    ordinal += 1
                    task = asyncio.create_task(self._stream_one(request, request_id, deadline, out))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await out.get()) is not None:
                yield response
            await reader  # re-raises a failure of the request stream
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _stream_one(
        self, request: pb.TranslateRequest, request_id: str, deadline: float | None, out: asyncio.Queue
    ) -> None:
        tokenizer = self.backend.engine.tokenizer if self.backend else None
        sent: dict[int, str] = {}

        async def send_partial(index: int, token_ids: list[int]) -> None:
            text = tokenizer.decode(token_ids)
            previous = sent.get(index, "")
            if len(text) > len(previous) and text.startswith(previous):  # partials only ever extend
                sent[index] = text
                partial = pb.PartialTranslation(index=index, text=text)
                out.put_nowait(pb.TranslateResponse(request_id=request_id, partials=[partial]))

        with self.state.track("TranslateStream") as call:
            try:
                response = await self._translate(request, deadline, send_partial if request.stream_partial else None)
                response.request_id = request_id
                out.put_nowait(response)
            except RequestError as error:
                call.code = error.code
                message = pb.Error(code=error.code.value[0], message=error.message)
                out.put_nowait(pb.TranslateResponse(request_id=request_id, error=message))
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.DEADLINE_EXCEEDED if self._expired(deadline) else grpc.StatusCode.CANCELLED
                raise

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        with self.state.track("GetModelInfo") as call:
            if self.backend is None:
                call.code = grpc.StatusCode.UNAVAILABLE
                await context.abort(call.code, "the model is still loading")
            return model_info_message(self.backend.engine, self.config)


def model_info_message(engine: Engine, config: ServerConfig) -> pb.ModelInfo:
    info = engine.info
    languages = info.manifest.get("languages", {})
    defaults = default_options(config)
    return pb.ModelInfo(
        name=info.name,
        version=info.version,
        source_language=languages.get("source", ""),
        target_language=languages.get("target", ""),
        precision=info.precision,
        device=config.device,
        vocab_size=info.vocab_size,
        limits=pb.Limits(
            max_texts_per_request=config.max_texts_per_request,
            max_input_tokens=config.max_input_tokens,
            max_beam_size=config.max_beam_size,
            max_output_length=config.max_output_length,
            max_batch_size=config.max_batch_size,
            max_batch_tokens=config.max_batch_tokens,
            max_queue_size=config.max_queue_size,
        ),
        default_options=pb.DecodingOptions(
            beam_size=defaults.beam_size,
            length_penalty=defaults.length_penalty,
            max_length=defaults.max_length,
            num_hypotheses=defaults.num_hypotheses,
            return_scores=defaults.return_scores,
        ),
        batching=config.batching,
        server_version=server_version(),
    )
