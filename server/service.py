"""The ``nmtserve.v1.Translator`` gRPC service (grpc.aio): validation, queueing, waiting, answering.

Handlers never run the engine: they tokenise, queue work items and await results that the engine thread posts.
Status codes: INVALID_ARGUMENT (a message that does not parse, e.g. invalid UTF-8; empty request, text too long,
control characters, bad options), RESOURCE_EXHAUSTED (queue full, too many requests in flight on the connection,
or a message over ``max_message_bytes``, refused by gRPC itself), DEADLINE_EXCEEDED, CANCELLED, UNAVAILABLE
(loading, draining, or the model failed to load), INTERNAL (the engine failed on this request's own text),
UNAUTHENTICATED (``security.py``). RESOURCE_EXHAUSTED from the queue carries a retry hint: the trailing metadata
``grpc-retry-pushback-ms`` (which gRPC clients with a retry policy honour) and the same figure in the message.
On TranslateStream, request-scoped failures come back in-band (``TranslateResponse.error``) so that one bad
request does not end a stream carrying others.

Requests arrive as raw bytes and are parsed here rather than by gRPC's deserializer: a message that does not
parse would otherwise fail as UNKNOWN with an exception logged, instead of a clean INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata

import grpc
from google.protobuf.message import DecodeError, Message

from nmtserve.engine import Engine
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.config import ServerConfig
from nmtserve.server.documents.requests import DocumentProgress, document_response, encode_documents
from nmtserve.server.responses import blank_translation, translation
from nmtserve.server.scheduler import EngineFailure, ShuttingDown
from nmtserve.server.sink import LoopSink
from nmtserve.server.tracking import ConnectionLimiter, ServingState
from nmtserve.server.validation import (
    RequestError,
    check_request_id,
    default_options,
    encode_texts,
    resolve_options,
)
from nmtserve.server.work import Request, WorkItem
from nmtserve.server.workqueue import QueueClosed, QueueFull, WorkQueue

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Translator"].full_name
PartialSender = Callable[[int, list[int] | str], Awaitable[None]]  # token ids, or a document's text


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


RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


class Overloaded(RequestError):
    """RESOURCE_EXHAUSTED with a retry hint."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        self.retry_after_s = retry_after_s

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((RETRY_PUSHBACK_KEY, str(max(1, round(self.retry_after_s * 1000)))),)


def parse(message_type: type[Message], data: bytes | Message) -> Message:
    """``data`` parsed as ``message_type`` (messages pass through), or INVALID_ARGUMENT."""
    if not isinstance(data, bytes | bytearray | memoryview):
        return data
    try:
        return message_type.FromString(bytes(data))
    except DecodeError as error:
        detail = str(error).rsplit(": ", 1)[-1] if ": " in str(error) else "malformed"
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {message_type.DESCRIPTOR.full_name} message ({detail}; strings must be "
            "valid UTF-8)",
        ) from None


def _peer(context: grpc.aio.ServicerContext) -> str:
    try:
        return context.peer() or ""
    except Exception:  # the call is already gone
        return ""


class TranslatorService(pb_grpc.TranslatorServicer):
    def __init__(self, config: ServerConfig, state: ServingState) -> None:
        self.config, self.state = config, state
        self.backend: Backend | None = None  # set once the model is loaded
        self.connections = ConnectionLimiter(config.max_inflight_per_connection)

    # -- the request pipeline, shared by Translate and TranslateStream --------------------------------------------

    def _retry_after_s(self) -> float:
        return self.backend.queue.retry_after_s() if self.backend is not None else 1.0

    async def _translate(
        self,
        request: pb.TranslateRequest,
        deadline: float | None,
        send_partial: PartialSender | None = None,
        peer: str = "",
    ) -> pb.TranslateResponse:
        reason = self.state.unavailable_reason()
        if reason is not None or self.backend is None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, reason or "the model is not loaded")
        if not self.connections.acquire(peer):
            retry = self._retry_after_s()
            raise Overloaded(
                f"{self.connections.inflight(peer)} requests are in flight on this connection; the limit is "
                f"{self.connections.limit} (max_inflight_per_connection); retry in {retry:.2f} s or open another "
                "connection",
                retry,
            )
        try:
            return await self._translate_admitted(request, deadline, send_partial)
        finally:
            self.connections.release(peer)

    async def _translate_admitted(
        self, request: pb.TranslateRequest, deadline: float | None, send_partial: PartialSender | None
    ) -> pb.TranslateResponse:
        backend = self.backend
        tokenizer = backend.engine.tokenizer
        options = resolve_options(request.options, self.config, backend.engine.info.vocab_size)
        document = progress = None
        if request.format:  # document mode: sentences are the work items (server/documents/)
            language = backend.engine.info.manifest.get("languages", {}).get("source", "en")
            # parsing a large page takes a while: off the event loop, so that other requests are not held up
            texts = list(request.texts)
            document = await asyncio.to_thread(
                encode_documents, texts, request.format, tokenizer, self.config, language
            )
            progress = DocumentProgress(document, tokenizer, send_partial)
            encoded = document.encoded
        else:
            encoded = encode_texts(list(request.texts), tokenizer, self.config)
        sink = LoopSink(asyncio.get_running_loop())
        work = Request(sink, deadline, partial=send_partial is not None and document is None)
        items = [WorkItem(work, text.index, text.source_ids, options) for text in encoded]
        try:
            if items:
                backend.queue.put(items)
        except QueueFull as error:
            raise Overloaded(str(error), error.retry_after_s) from None
        except QueueClosed as error:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, str(error)) from None
        done = False
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            indices = [item.index for item in items]
            collecting = (
                sink.collect(indices, on_final=progress.finished) if progress else sink.collect(indices, send_partial)
            )
            results = await asyncio.wait_for(collecting, timeout)
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
        if document is not None:
            return await asyncio.to_thread(document_response, document, results, tokenizer, options.return_scores)
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

    async def Translate(
        self, request: bytes | pb.TranslateRequest, context: grpc.aio.ServicerContext
    ) -> pb.TranslateResponse:
        deadline = _deadline(context)
        with self.state.track("Translate") as call:
            try:
                return await self._translate(parse(pb.TranslateRequest, request), deadline, peer=_peer(context))
            except RequestError as error:
                call.code = error.code
                metadata = error.trailing_metadata() if isinstance(error, Overloaded) else ()
                await context.abort(error.code, error.message, trailing_metadata=metadata)
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.DEADLINE_EXCEEDED if self._expired(deadline) else grpc.StatusCode.CANCELLED
                raise
        raise AssertionError("unreachable")  # context.abort raises

    async def TranslateStream(
        self, request_iterator: AsyncIterator[bytes | pb.TranslateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranslateResponse]:
        deadline = _deadline(context)
        peer = _peer(context)
        out: asyncio.Queue[pb.TranslateResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task] = set()

        async def read() -> None:
            try:
                ordinal = 0
                async for data in request_iterator:
                    request: pb.TranslateRequest | RequestError
                    try:
                        request = parse(pb.TranslateRequest, data)
                        request_id = request.request_id or str(ordinal)
                        check_request_id(request_id)
                    except RequestError as error:  # answered in-band under the message's ordinal
                        request, request_id = error, str(ordinal)
                    ordinal += 1
                    task = asyncio.create_task(self._stream_one(request, request_id, deadline, out, peer))
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
        self,
        request: pb.TranslateRequest | RequestError,
        request_id: str,
        deadline: float | None,
        out: asyncio.Queue,
        peer: str = "",
    ) -> None:
        tokenizer = self.backend.engine.tokenizer if self.backend else None
        sent: dict[int, str] = {}

        async def send_partial(index: int, token_ids: list[int] | str) -> None:
            text = token_ids if isinstance(token_ids, str) else tokenizer.decode(token_ids)
            previous = sent.get(index, "")
            if len(text) > len(previous) and text.startswith(previous):  # partials only ever extend
                sent[index] = text
                partial = pb.PartialTranslation(index=index, text=text)
                out.put_nowait(pb.TranslateResponse(request_id=request_id, partials=[partial]))

        with self.state.track("TranslateStream") as call:
            try:
                if isinstance(request, RequestError):
                    raise request
                partial = send_partial if request.stream_partial else None
                response = await self._translate(request, deadline, partial, peer)
                response.request_id = request_id
                out.put_nowait(response)
            except RequestError as error:
                call.code = error.code
                message = pb.Error(code=error.code.value[0], message=error.message)
                out.put_nowait(pb.TranslateResponse(request_id=request_id, error=message))
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.DEADLINE_EXCEEDED if self._expired(deadline) else grpc.StatusCode.CANCELLED
                raise

    async def GetModelInfo(
        self, request: bytes | pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        with self.state.track("GetModelInfo") as call:
            try:
                parse(pb.GetModelInfoRequest, request)
            except RequestError as error:
                call.code = error.code
                await context.abort(error.code, error.message)
            if self.backend is None:
                call.code = grpc.StatusCode.UNAVAILABLE
                reason = self.state.unavailable_reason() or "the model is still loading"
                await context.abort(call.code, reason)
            return model_info_message(self.backend.engine, self.config)


def add_translator_service(service: TranslatorService, server: grpc.aio.Server) -> None:
    """Register ``service`` like the generated ``add_TranslatorServicer_to_server``, but with requests handed over
    as raw bytes so that ``parse`` can answer a malformed message with INVALID_ARGUMENT."""
    handlers = {
        "Translate": grpc.unary_unary_rpc_method_handler(
            service.Translate, response_serializer=pb.TranslateResponse.SerializeToString
        ),
        "TranslateStream": grpc.stream_stream_rpc_method_handler(
            service.TranslateStream, response_serializer=pb.TranslateResponse.SerializeToString
        ),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            service.GetModelInfo, response_serializer=pb.ModelInfo.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


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
            max_input_bytes=config.max_input_bytes,
            max_message_bytes=config.max_message_bytes,
            max_length_penalty=config.max_length_penalty,
            max_queue_tokens=config.max_queue_tokens,
            max_inflight_per_connection=config.max_inflight_per_connection,
            max_request_bytes=config.max_request_bytes,
            max_sentences_per_request=config.max_sentences_per_request,
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
