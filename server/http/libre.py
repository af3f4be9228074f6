"""LibreTranslate-compatible routes: ``POST /translate``, ``GET /languages``, ``GET /health``,
``GET /frontend/settings``.

Existing LibreTranslate clients (libretranslatepy, browser extensions, CAT-tool plugins) work unchanged and get
nmtserve's batched beam search behind the same contract: the same fields, status codes and 400 messages. The
deliberate differences are listed in docs/http.md (no language detector: ``source=auto`` is a 400 that says so;
``charLimit`` reports the UTF-8 byte limit of a request's texts). ``/translate_file`` lives in files.py.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.server.documents.files import FORMAT_OF_SUFFIX
from nmtserve.server.documents.plan import plan_document
from nmtserve.server.http.common import (
    HttpError,
    body_within_timeout,
    check_key,
    context_of,
    is_json,
    json_body,
    libre_key,
    translate_through_service,
)
from nmtserve.server.http.libre_languages import Catalogue, CatalogueCache, PairError, language_name

FILE_SUFFIXES = sorted(FORMAT_OF_SUFFIX)  # POST /translate_file (server/http/files.py)
FRONTEND_TIMEOUT_MS = 500  # how long LibreTranslate's page waits after typing before it translates
CATALOGUE = web.AppKey("libre_catalogue", CatalogueCache)
PART_HEADERS = "a part's headers are malformed or too long (8190 bytes a line)"  # never the client's bytes


def model_languages(request: web.Request) -> tuple[str, str]:
    """(source, target) codes of the default model, from its manifest; 503 while it is not loaded."""
    ctx = context_of(request)
    backend = ctx.service.backend
    if backend is None:
        reason = ctx.service.state.unavailable_reason() or "the model is not loaded"
        raise HttpError(503, reason, {"Retry-After": "1"})
    languages = backend.engine.info.manifest.get("languages", {})
    return languages.get("source", ""), languages.get("target", "")


def catalogue(request: web.Request) -> Catalogue:
    """The ready models' languages (the default model first; 503 while it is not loaded), built once per
    repository state: a ready model's serving version changing rebuilds it."""
    model_languages(request)
    service = context_of(request).service
    registry = service.registry
    assert registry is not None  # the default model is loaded (model_languages)
    backends: list[tuple[str, Any]] = [(registry.default, service.backend)]
    for name in registry.names():
        serving = registry.serving(name) if name != registry.default else None
        if serving is not None and serving.backend is not None:
            backends.append((name, serving.backend))
    return request.app[CATALOGUE].get(backends)


async def languages(request: web.Request) -> web.Response:
    """LibreTranslate's listing: each source language with the targets it translates into, the union over models
    (server/http/libre_languages.py); gzip-compressed for a client that accepts it (NLLB-200's: ~300 kB, ~5 kB)."""
    found = catalogue(request)
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body, headers = found.gzipped(), {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
    else:
        body, headers = found.body(), {"Vary": "Accept-Encoding"}
    return web.Response(body=body, content_type="application/json", headers=headers)


async def health(request: web.Request) -> web.Response:
    service = context_of(request).service
    reason = service.state.unavailable_reason()
    if reason is None and service.backend is None:  # a model repository whose default model is not ready
        reason = "the default model has no ready version"
    if reason is not None:
        return web.json_response({"status": "not serving", "error": reason}, status=503)
    return web.json_response({"status": "ok"})


async def frontend_settings(request: web.Request) -> web.Response:
    ctx = context_of(request)
    source, target = model_languages(request)
    listed = catalogue(request).models[0].listed
    source, target = listed.get(source, source), listed.get(target, target)
    keys = ctx.tokens is not None
    return web.json_response(
        {
            "charLimit": ctx.config.max_request_bytes,  # q's texts are documents (translate, below)
            "frontendTimeout": FRONTEND_TIMEOUT_MS,
            "apiKeys": keys,
            "keyRequired": keys,
            "suggestions": False,
            "filesTranslation": True,
            "supportedFilesFormat": FILE_SUFFIXES,
            "language": {
                "source": {"code": source, "name": language_name(source)},
                "target": {"code": target, "name": language_name(target)},
            },
        }
    )


async def _parameters(request: web.Request) -> dict[str, Any]:
    """The request's parameters from a JSON body, or from a form body and the query string."""
    if is_json(request):
        return await json_body(request)
    try:
        form = await body_within_timeout(request, request.post()) if request.can_read_body else {}
    except (ValueError, HttpProcessingError) as error:  # a malformed multipart or form body
        message = PART_HEADERS if isinstance(error, HttpProcessingError) else str(error)
        raise HttpError(400, f"Invalid request: malformed form body: {message}") from None
    params: dict[str, Any] = {}
    for source in (request.query, form):
        for key in source:
            values = source.getall(key)  # type: ignore[attr-defined] # both are MultiDicts
            params[key] = values if key == "q" and len(values) > 1 else values[-1]
    for key, value in params.items():
        if not isinstance(value, str | list):  # a multipart file where a text was expected
            raise HttpError(400, f"Invalid request: {key} parameter must be text, not a file")
    return params


def _texts(q: Any) -> tuple[list[str], bool]:
    """(texts, whether q was an array)."""
    if q is None or q == "" or q == []:
        raise HttpError(400, "Invalid request: missing q parameter")
    if isinstance(q, str):
        return [q], False
    if isinstance(q, list) and all(isinstance(text, str) for text in q):
        return q, True
    raise HttpError(400, "Invalid request: q parameter must be a string or an array of strings")


def _alternatives(value: Any, max_beam_size: int) -> int:
    """LibreTranslate's ``max(0, int(alternatives))``: a JSON number is truncated (``2.0`` and ``2.7`` are 2, as
    LibreTranslate's ``int()`` makes them; a 400 here broke clients whose JSON writes integers as floats), a string
    must be an integer (``"1.5"`` is LibreTranslate's 400 too)."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise HttpError(400, "Invalid request: alternatives parameter is not a number")
    if isinstance(value, float) and not math.isfinite(value):  # json.loads reads NaN and Infinity
        raise HttpError(400, "Invalid request: alternatives parameter is not a number")
    try:
        number = int(value)
    except ValueError:
        raise HttpError(400, "Invalid request: alternatives parameter is not a number") from None
    limit = max_beam_size - 1
    if number > limit:
        raise HttpError(400, f"Invalid request: alternatives parameter must be <= {limit}")
    return max(0, number)


def _code(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        raise HttpError(400, f"Invalid request: missing {name} parameter")
    if not isinstance(value, str):
        raise HttpError(400, f"Invalid request: {name} parameter must be a string")
    return value.strip()


@dataclass(frozen=True)
class LanguagePair:
    """A LibreTranslate request's languages: the model's codes (what the service is asked for), the target as
    ``/languages`` lists it, and whether the request names them (a repository, or a multilingual model)."""

    source: str
    target: str
    listed_target: str
    named: bool


def check_language_pair(request: web.Request, params: dict[str, Any]) -> LanguagePair:
    """The languages of a LibreTranslate request, or its 400: missing, ``auto`` (no detector), unsupported. A code
    is a listed one, the model's own (both without regard to case) or LibreTranslate's older zh/zt/pb."""
    found = catalogue(request)
    source, target = _code(params, "source"), _code(params, "target")
    if source.casefold() == "auto":
        raise HttpError(
            400,
            f"source=auto needs a language detector and this server has none; pass the source "
            f"({', '.join(found.sources())})",
        )
    try:
        model, own_source, own_target = found.resolve(source, target)
    except PairError as error:
        raise HttpError(400, str(error)) from None
    named = len(found.models) > 1 or model.multilingual
    return LanguagePair(own_source, own_target, model.listed[own_target], named)


def _one_sentence(text: str, language: str, max_input_bytes: int) -> bool:
    """Whether plain ``text`` is one sentence of one line (what the document layer would not split). A text over
    ``max_input_bytes`` is not: as one model input it would be refused, as a document it is translated."""
    if len(text) > max_input_bytes or len(text.encode("utf-8")) > max_input_bytes:
        return False
    return len(plan_document(text, "text", language).sentences) <= 1


def _all_one_sentence(texts: list[str], language: str, max_input_bytes: int) -> bool:
    return all(_one_sentence(text, language, max_input_bytes) for text in texts)


async def translate(request: web.Request) -> web.Response:
    ctx = context_of(request)
    params = await _parameters(request)
    check_key(request, libre_key(request, params.get("api_key")), "POST /translate", 403)
    texts, batch = _texts(params.get("q"))
    pair = check_language_pair(request, params)
    text_format = params.get("format") or "text"
    alternatives = _alternatives(params.get("alternatives"), ctx.config.max_beam_size)
    if text_format not in ("text", "html"):
        raise HttpError(400, f"{text_format} format is not supported")
    # Every text is a document (server/documents), as LibreTranslate splits its texts into lines and sentences:
    # format=html keeps the markup and translates the text nodes, format=text keeps the line breaks and translates
    # sentence by sentence. The one exception is alternatives for texts that are each one sentence: those are the
    # model's n-best, as a document gives one hypothesis (alternatives are then [], as LibreTranslate's for html).
    # segmenting is CPU work of up to max_message_bytes: off the event loop, as the document path's parsing is
    nbest = bool(alternatives) and text_format == "text"
    nbest = nbest and await asyncio.to_thread(_all_one_sentence, texts, pair.source, ctx.config.max_input_bytes)
    options = pb.DecodingOptions(num_hypotheses=alternatives + 1 if nbest else 1, return_scores=False)
    if nbest:
        options.beam_size = max(ctx.config.beam_size, alternatives + 1)
    message = pb.TranslateRequest(texts=texts, options=options, format="" if nbest else text_format)
    if pair.named:  # a model repository: the pair picks the model; a multilingual model: the pair it translates
        message.source_language, message.target_language = pair.source, pair.target
    response = await translate_through_service(ctx, request, message, "HTTP /translate")
    results = []
    for translation in response.translations:
        best = translation.hypotheses[0].text if translation.hypotheses else ""
        others = []
        for hypothesis in translation.hypotheses[1:]:  # as LibreTranslate: distinct, and not the best one again
            if hypothesis.text != best and hypothesis.text not in others:
                others.append(hypothesis.text)
        results.append((best, others))
    body: dict[str, Any] = {"translatedText": [best for best, _ in results] if batch else results[0][0]}
    if alternatives:
        body["alternatives"] = [others for _, others in results] if batch else results[0][1]
    return web.json_response(body)


SUGGESTIONS_OFF = "Suggestions are disabled on this server."  # LibreTranslate's words, for its clients


async def suggest(request: web.Request) -> web.Response:
    """LibreTranslate's ``POST /suggest`` with suggestions off (``/frontend/settings`` says ``suggestions: false``):
    its 403 and message, where a 404 told a LibreTranslate client that this is not a LibreTranslate server."""
    raise HttpError(403, SUGGESTIONS_OFF)


def add_routes(app: web.Application) -> None:
    app[CATALOGUE] = CatalogueCache()
    app.router.add_post("/translate", translate)
    app.router.add_post("/suggest", suggest)
    app.router.add_get("/languages", languages)
    app.router.add_get("/health", health)
    app.router.add_get("/frontend/settings", frontend_settings)
