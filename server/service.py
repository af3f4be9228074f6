"""The ``nmtserve.v1.Translator`` gRPC service (grpc.aio): validation, queueing, waiting, answering.

Handlers never run the engine: they check and tokenise (``admission.py``: cheap checks first, large requests in
worker threads), queue work items and await results that the engine thread posts.
Status codes: INVALID_ARGUMENT (a message that does not parse, e.g. invalid UTF-8; empty request, text too long,
control characters, bad options), RESOURCE_EXHAUSTED (queue full, too many requests in flight on the connection,
too many large requests being checked, a stream whose answers are not read for ``stream_stall_timeout_s``, or a
message over ``max_message_bytes``, refused by gRPC itself), DEADLINE_EXCEEDED, CANCELLED, UNAVAILABLE
(loading, draining, or the model failed to load), INTERNAL (the engine failed on this request's own text),
UNAUTHENTICATED (``security.py``). RESOURCE_EXHAUSTED from the queue carries a retry hint: the trailing metadata
``grpc-retry-pushback-ms`` (which gRPC clients with a retry policy honour) and the same figure in the message.
On TranslateStream, request-scoped failures come back in-band (``TranslateResponse.error``) so that one bad
request does not end a stream carrying others. A stream's answers are bounded (``streams.py``): a client that
stops reading pauses its requests, then loses the stream; its partial outputs are coalesced to whole words.

Requests arrive as raw bytes and are parsed here rather than by gRPC's deserializer: a message that does not
parse would otherwise fail as UNKNOWN with an exception logged, instead of a clean INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import NoReturn

import grpc
from google.protobuf.message import DecodeError, Message
from grpc._cython.cygrpc import ExecuteBatchError  # what a batch on a finished call raises; grpc.aio has no alias

from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.backend import Backend
from nmtserve.server.config import ServerConfig
from nmtserve.server.documents.requests import DocumentProgress, document_response
from nmtserve.server.model_messages import list_models, model_info_message, server_version, version_info
from nmtserve.server.models import ModelRegistry
from nmtserve.server.partials import PartialSender, document_sender, labeller, sentence_sender
from nmtserve.server.responses import blank_translation, translation
from nmtserve.server.scheduler import EngineFailure, ShuttingDown
from nmtserve.server.sink import LoopSink
from nmtserve.server.streams import StreamBuffer, word_prefix
from nmtserve.server.tracking import ConnectionLimiter, ServingState
from nmtserve.server.validation import (
    EncodedText,
    Overloaded,
    RequestError,
    check_request_id,
    language_prefixes,
    resolve_options,
)

__all__ = ["SERVICE_NAME", "Backend", "Overloaded", "TranslatorService", "model_info_message", "server_version"]
from nmtserve.server.work import Request, WorkItem
from nmtserve.server.workqueue import QueueClosed, QueueFull

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Translator"].full_name
MODEL_METADATA_KEY = "nmtserve-model"  # trailing metadata of a Translate answer: "<model>/<version>" that served it


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


STREAM_BUFFER = 32  # answers of one stream waiting to be written; then its requests wait (see StreamBuffer)
STREAM_MAX_INFLIGHT = 64  # requests of one stream being answered; then the stream is not read (gRPC flow control)
PARTIAL_INTERVAL_S = 0.1  # at most one partial per text per this interval


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


@dataclass(frozen=True)
class Failure:
    """What a RequestError answers with, detached from the exception (and so from its traceback's frames)."""

    code: grpc.StatusCode
    message: str
    metadata: tuple[tuple[str, str], ...] = ()


def _failure(error: RequestError) -> Failure:
    metadata = error.trailing_metadata() if isinstance(error, Overloaded) else ()
    return Failure(error.code, error.message, metadata)


async def abort(context: grpc.aio.ServicerContext, failure: Failure, method: str) -> NoReturn:
    """``context.abort`` with ``failure``; a call that ended meanwhile (its deadline passed, the client cancelled)
    is an expected race: logged at INFO, where gRPC would log an ERROR traceback of ExecuteBatchError."""
    try:
        await context.abort(failure.code, failure.message, trailing_metadata=failure.metadata)
    except ExecuteBatchError:
        log.info(
            "the call ended before its error could be sent",
            extra={"fields": {"method": method, "code": failure.code.name}},
        )
        raise asyncio.CancelledError from None
    raise AssertionError("unreachable")  # context.abort raises


def _peer(context: grpc.aio.ServicerContext) -> str:
    try:
        return context.peer() or ""
    except Exception:  # the call is already gone
        return ""


class TranslatorService(pb_grpc.TranslatorServicer):
    def __init__(self, config: ServerConfig, state: ServingState) -> None:
        self.config, self.state = config, state
        self.registry: ModelRegistry | None = None  # set by the server before it loads
        self.connections = ConnectionLimiter(config.max_inflight_per_connection)

    @property
    def backend(self) -> Backend | None:
        """The default model's serving version (None while none is ready): what single-model callers use."""
        if self.registry is None:
            return None
        serving = self.registry.serving(self.registry.default)
        return serving.backend if serving is not None else None

    # -- the request pipeline, shared by Translate and TranslateStream --------------------------------------------

    def _retry_after_s(self) -> float:
        backend = self.backend
        return backend.queue.retry_after_s() if backend is not None else 1.0

    def _unavailable(self) -> RequestError | None:
        reason = self.state.unavailable_reason()
        if reason is not None or self.registry is None:
            return RequestError(grpc.StatusCode.UNAVAILABLE, reason or "the model is not loaded")
        return None

    async def translate(
        self,
        request: pb.TranslateRequest,
        deadline: float | None,
        send_partial: PartialSender | None = None,
        peer: str = "",
        on_routed: Callable[[str, str], None] | None = None,
    ) -> pb.TranslateResponse:
        """The request path every front door shares (gRPC here, HTTP in ``server/http``): availability, routing
        to a model version (``on_routed(name, version)`` is told which), the per-connection limit, validation,
        queueing, waiting, cancellation; raises RequestError."""
        refusal = self._unavailable()
        if refusal is not None:
            raise refusal
        assert self.registry is not None
        held = self.registry.acquire(
            request.model, request.model_version, request.source_language, request.target_language
        )
        if on_routed is not None:
            on_routed(held.name, held.version)
        try:
            return await self._translate_on(held.backend, request, deadline, send_partial, peer)
        finally:
            self.registry.release(held)

    async def _translate_on(
        self,
        backend: Backend | None,
        request: pb.TranslateRequest,
        deadline: float | None,
        send_partial: PartialSender | None,
        peer: str,
    ) -> pb.TranslateResponse:
        assert backend is not None  # a ready version has its backend until it is released
        if not self.connections.acquire(peer):
            retry = self._retry_after_s()
            raise Overloaded(
                f"{self.connections.inflight(peer)} requests are in flight on this connection; the limit is "
                f"{self.connections.limit} (max_inflight_per_connection); retry in {retry:.2f} s or open another "
                "connection",
                retry,
            )
        try:
            return await self._translate_admitted(backend, request, deadline, send_partial)
        finally:
            self.connections.release(peer)

    async def _translate_admitted(
        self,
        backend: Backend,
        request: pb.TranslateRequest,
        deadline: float | None,
        send_partial: PartialSender | None,
    ) -> pb.TranslateResponse:
        config = backend.config or self.config
        tokenizer = backend.engine.tokenizer
        pair = backend.engine.info.manifest.get("languages", {})
        languages = language_prefixes(request.source_language, request.target_language, tokenizer, pair)
        prefix = languages.source
        document = progress = None
        if request.format:  # document mode: sentences are the work items (server/documents/)
            options = resolve_options(request.options, config, backend.engine.decodable_vocabulary)
            texts, form = list(request.texts), request.format
            # Sentences are cut by the rules of the language the text is in: the request's source_language (checked
            # above; a multilingual model's sources are in many languages), else the model's own source.
            source = request.source_language or pair.get("source", "en")
            target = request.target_language or pair.get("target", "")  # how a long sentence's pieces are joined
            del request
            # parsing a large page takes a while: off the event loop, on the checker's bounded workers
            document = await backend.checker.plan_documents(texts, form, source, target)
            del texts
            progress = DocumentProgress(document, tokenizer, document_sender(send_partial))
            suffix = languages.source_suffix
            encoded = [EncodedText(t.index, [*prefix, *t.source_ids, *suffix]) for t in document.encoded]
            count = 0  # the answer is rebuilt from the document
        else:
            prepared = await backend.checker.prepare(request.texts, request.options, prefix, languages.source_suffix)
            options, count, encoded = prepared.options, prepared.count, prepared.encoded
            del request, prepared  # from here on only the token ids are needed: the texts can go
        sink = LoopSink(asyncio.get_running_loop())
        work = Request(sink, deadline, partial=send_partial is not None and document is None)
        items = [WorkItem(work, text.index, text.source_ids, options, languages.target) for text in encoded]
        del encoded
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
                sink.collect(indices, on_final=progress.finished)
                if progress
                else sink.collect(indices, sentence_sender(send_partial, tokenizer))
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
                if removed and backend.metrics is not None:
                    backend.metrics.abandoned.labels("queue").inc(removed)
        if document is not None:
            return await asyncio.to_thread(document_response, document, results, tokenizer, options.return_scores)
        response = pb.TranslateResponse()
        for i in range(count):
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

            def routed(name: str, version: str) -> None:  # which version answers: clients can check it
                call.model = name
                context.set_trailing_metadata(((MODEL_METADATA_KEY, f"{name}/{version}"),))

            try:
                message = parse(pb.TranslateRequest, request)
                return await self.translate(message, deadline, peer=_peer(context), on_routed=routed)
            except RequestError as error:
                failure = _failure(error)
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.DEADLINE_EXCEEDED if self._expired(deadline) else grpc.StatusCode.CANCELLED
                raise
            # Aborted outside the except block and without the request: raised inside it, the abort exception
            # chained the RequestError, whose traceback held the handler frames and the request's texts in a
            # reference cycle that only the cyclic garbage collector freed (1.5 GB after 900 refused requests).
            del request
            message = None
            call.code = failure.code
            await abort(context, failure, "Translate")
        raise AssertionError("unreachable")  # abort raises

    async def TranslateStream(
        self, request_iterator: AsyncIterator[bytes | pb.TranslateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranslateResponse]:
        deadline = _deadline(context)
        peer = _peer(context)
        out: StreamBuffer[pb.TranslateResponse] = StreamBuffer(STREAM_BUFFER, self.config.stream_stall_timeout_s)
        tasks: set[asyncio.Task] = set()
        inflight = asyncio.Semaphore(STREAM_MAX_INFLIGHT)  # a stream's requests being answered; then reading pauses

        async def read() -> None:
            try:
                ordinal = 0
                async for data in request_iterator:
                    if out.closed:  # the stream stalled: read no more
                        break
                    request: pb.TranslateRequest | RequestError
                    try:
                        request = parse(pb.TranslateRequest, data)
                        request_id = request.request_id or str(ordinal)
                        check_request_id(request_id)
                    except RequestError as error:  # answered in-band under the message's ordinal
                        request, request_id = RequestError(error.code, error.message), str(ordinal)
                    del data
                    ordinal += 1
                    await inflight.acquire()
                    task = asyncio.create_task(self._stream_one(request, request_id, deadline, out, peer))
                    del request
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    task.add_done_callback(lambda _: inflight.release())
                while tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                out.close()

        reader = asyncio.create_task(read())
        try:
            while (response := await out.get()) is not None:
                yield response
            if out.stalled:  # stop reading and answering at once: the abort may wait for the unread answers
                reader.cancel()
                for task in list(tasks):
                    task.cancel()
                log.info(
                    "stream cancelled: the client did not read its answers",
                    extra={"fields": {"peer": peer, "stall_timeout_s": self.config.stream_stall_timeout_s}},
                )
                message = (
                    f"the stream's answers were not read for {self.config.stream_stall_timeout_s:g} s with "
                    f"{STREAM_BUFFER} waiting (stream_stall_timeout_s); read the answers as they come"
                )
                await abort(context, Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, message), "TranslateStream")
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
        out: StreamBuffer,
        peer: str = "",
    ) -> None:
        sent: dict[int, tuple[str, float]] = {}  # index -> (text sent, when)

        async def send_partial(index: int, text: str, complete: bool) -> None:
            # a sentence's stable prefix (cut to whole words), or a document's text so far (whole sentences)
            text = text if complete else word_prefix(text)
            previous, at = sent.get(index, ("", -math.inf))
            now = time.monotonic()
            # Coalesced: only when the stable prefix gains a whole word, at most one per text per
            # PARTIAL_INTERVAL_S, and dropped (superseded by a later one or the final) while the buffer is full.
            if len(text) > len(previous) and text.startswith(previous) and now - at >= PARTIAL_INTERVAL_S:
                partial = pb.PartialTranslation(index=index, text=text)
                if out.offer(pb.TranslateResponse(request_id=request_id, partials=[partial])):
                    sent[index] = (text, now)

        with self.state.track("TranslateStream") as call:
            failure = None
            try:
                if isinstance(request, RequestError):
                    raise request
                partial = send_partial if request.stream_partial else None
                response = await self.translate(request, deadline, partial, peer, on_routed=labeller(call))
                response.request_id = request_id
            except RequestError as error:
                failure = _failure(error)
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.DEADLINE_EXCEEDED if self._expired(deadline) else grpc.StatusCode.CANCELLED
                raise
            del request
            if failure is not None:
                call.code = failure.code
                message = pb.Error(code=failure.code.value[0], message=failure.message)
                response = pb.TranslateResponse(request_id=request_id, error=message)
            if not await out.put(response):
                call.code = grpc.StatusCode.RESOURCE_EXHAUSTED

    async def GetModelInfo(
        self, request: bytes | pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        with self.state.track("GetModelInfo") as call:
            failure = None
            try:
                message = parse(pb.GetModelInfoRequest, request)
                refusal = self._unavailable()
                if refusal is not None:
                    raise refusal
                assert self.registry is not None
                held = self.registry.find(message.model or self.registry.default, message.model_version)
                return version_info(self.registry, held, self.config)
            except RequestError as error:
                failure = _failure(error)
            call.code = failure.code  # aborted outside the except block: see Translate
            await abort(context, failure, "GetModelInfo")
        raise AssertionError("unreachable")

    async def ListModels(
        self, request: bytes | pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        with self.state.track("ListModels") as call:
            failure = None
            try:
                parse(pb.ListModelsRequest, request)
                if self.registry is None:
                    raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is starting; retry shortly")
                return list_models(self.registry, self.config)
            except RequestError as error:
                failure = _failure(error)
            call.code = failure.code
            await abort(context, failure, "ListModels")
        raise AssertionError("unreachable")


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
        "ListModels": grpc.unary_unary_rpc_method_handler(
            service.ListModels, response_serializer=pb.ListModelsResponse.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
