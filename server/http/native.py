"""The native JSON API, a mirror of the nmtserve.v1 proto: ``POST /v1/translate``, ``POST /v1/translate/stream``
(Server-Sent Events), ``GET /v1/models``, ``GET /v1/models/{name}``.

Bodies and answers are the proto messages in protobuf's canonical JSON mapping (``json_format``), with the field
names of the .proto file, so the two APIs cannot drift apart: a field added to ``TranslateRequest`` is accepted
here too, and an unknown or mistyped field is a 400 that names it.

Streaming: each decode step that grows a text's stable prefix (the part every live beam agrees on, which can
only extend) becomes an ``event: partial`` with ``{"index", "text"}``; the final answer is ``event: result``
with the ``TranslateResponse``; a failure after the stream began is ``event: error``. A client that stops
reading is not buffered for: writes wait for the socket, the engine's partials wait for the writes, and a
client that reads nothing for ``http_slow_reader_timeout_s`` is dropped with its work cancelled.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format

from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.server.http.common import (
    HttpError,
    bearer_of,
    check_key,
    context_of,
    deadline_of,
    from_request_error,
    json_body,
    peer_of,
    translate_through_service,
)
from nmtserve.server.model_messages import list_models, version_info
from nmtserve.server.models import ModelRegistry
from nmtserve.server.partials import labeller
from nmtserve.server.validation import RequestError

JSON_KINDS = {str: "a string", dict: "an object", bool: "a boolean", int: "a number", float: "a number"}
MODEL_HEADER = "X-Nmtserve-Model"  # "<model>/<version>" that answered, as gRPC's nmtserve-model trailer


class SlowReader(Exception):
    """The streaming client read nothing for ``http_slow_reader_timeout_s``."""


def to_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


async def _request_message(request: web.Request, method: str) -> pb.TranslateRequest:
    check_key(request, bearer_of(request), method, 401)
    body = await json_body(request)
    texts = body.get("texts")
    if texts is not None and not isinstance(texts, list):
        # json_format's own message for a repeated field given a scalar quotes the value ("repeated field texts
        # must be in [] which is <the text>"), and request texts never appear in errors
        kind = JSON_KINDS.get(type(texts), "not an array")
        raise HttpError(
            400, f"the body is not a valid nmtserve.v1.TranslateRequest: texts must be an array of strings, not {kind}"
        )
    try:
        return json_format.ParseDict(body, pb.TranslateRequest())
    except json_format.ParseError as error:
        raise HttpError(400, f"the body is not a valid nmtserve.v1.TranslateRequest: {error}") from None


async def translate(request: web.Request) -> web.Response:
    ctx = context_of(request)
    message = await _request_message(request, "POST /v1/translate")
    served: list[str] = []
    routed = lambda name, version: served.append(f"{name}/{version}")  # noqa: E731
    response = await translate_through_service(ctx, request, message, "HTTP /v1/translate", routed)
    response.request_id = message.request_id
    return web.json_response(to_json(response), headers={MODEL_HEADER: served[0]} if served else None)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def translate_stream(request: web.Request) -> web.StreamResponse:
    ctx = context_of(request)
    message = await _request_message(request, "POST /v1/translate/stream")
    deadline = deadline_of(request)
    timeout = ctx.config.http_slow_reader_timeout_s
    stream = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    sent: dict[int, str] = {}

    async def write(data: bytes) -> None:
        if not stream.prepared:
            await stream.prepare(request)
        try:  # aiohttp waits for the socket to drain once its buffer is full: a stalled reader stalls us here
            await asyncio.wait_for(stream.write(data), timeout)
        except TimeoutError:
            raise SlowReader() from None

    async def send_partial(index: int, text: str, complete: bool) -> None:
        previous = sent.get(index, "")
        if len(text) > len(previous) and text.startswith(previous):  # partials only ever extend
            sent[index] = text
            await write(_event("partial", {"index": index, "text": text}))

    with ctx.service.state.track("HTTP /v1/translate/stream") as call:
        try:
            routed = labeller(call)
            response = await ctx.service.translate(message, deadline, send_partial, peer_of(request), routed)
            response.request_id = message.request_id
            await write(_event("result", to_json(response)))
        except RequestError as error:
            call.code = error.code
            failure = from_request_error(error)
            if not stream.prepared:  # nothing sent yet: a plain JSON error with the right status
                raise failure from None
            await write(_event("error", {"error": failure.message, "status": failure.status}))
        except SlowReader:
            call.code = grpc.StatusCode.CANCELLED
            if request.transport is not None:
                request.transport.close()
            return stream
        except ConnectionResetError:  # the client went away mid-stream; its work was cancelled on the way out
            call.code = grpc.StatusCode.CANCELLED
            return stream
    await stream.write_eof()
    return stream


def _registry(request: web.Request) -> ModelRegistry:
    ctx = context_of(request)
    if ctx.service.registry is None:
        raise HttpError(503, ctx.service.state.unavailable_reason() or "the model is not loaded", {"Retry-After": "1"})
    return ctx.service.registry


async def models(request: web.Request) -> web.Response:
    """Every model of the repository (``ListModelsResponse``); ``models`` keeps its first shape too: each ready
    model's ``ModelInfo`` (as with one model, before repositories)."""
    check_key(request, bearer_of(request), "GET /v1/models", 401)
    ctx = context_of(request)
    registry = _registry(request)
    if ctx.service.backend is None:
        raise HttpError(503, ctx.service.state.unavailable_reason() or "the model is not loaded", {"Retry-After": "1"})
    infos = []
    for name in registry.names():
        serving = registry.serving(name)
        if serving is not None:
            infos.append(to_json(version_info(registry, serving, ctx.config)))
    listing = to_json(list_models(registry, ctx.config))
    return web.json_response(
        {"models": infos, "repository": listing.get("models", []), "default_model": registry.default}
    )


async def model(request: web.Request) -> web.Response:
    """``GET /v1/models/{name}`` (``?version=V``): the ``ModelInfo`` of the model's serving (or that) version."""
    check_key(request, bearer_of(request), "GET /v1/models/{name}", 401)
    ctx = context_of(request)
    registry = _registry(request)
    if ctx.service.backend is None and not registry.any_ready():
        raise HttpError(503, ctx.service.state.unavailable_reason() or "the model is not loaded", {"Retry-After": "1"})
    try:
        held = registry.find(request.match_info["name"], request.query.get("version", ""))
    except RequestError as error:
        raise from_request_error(error) from None
    return web.json_response(to_json(version_info(registry, held, ctx.config)))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/translate", translate)
    app.router.add_post("/v1/translate/stream", translate_stream)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{name}", model)
