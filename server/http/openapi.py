"""The OpenAPI 3 description of the HTTP API (``GET /openapi.json``) and a plain HTML page of it (``GET /docs``).

The request and answer schemas of /v1 are derived from the proto descriptors, so they name exactly the fields
``json_format`` accepts; the LibreTranslate routes are described by hand. The docs page is rendered here from the
same document (no Swagger UI bundle: nothing is fetched from a CDN, and the page works offline).

Security: two schemes. ``bearerAuth`` (``Authorization: Bearer <key>``) is what /v1 takes, and LibreTranslate's
routes take it too. ``libreApiKey`` is LibreTranslate's ``api_key``: OpenAPI 3 can only place an API key in a
header, query or cookie, so the scheme says ``query`` (read with any body, after the body's field) and its
description, like the request schemas, names the ``api_key`` body field that LibreTranslate clients actually
send. Each operation lists what it accepts; where the server requires no key (no ``auth_token_file``), the
empty requirement ``{}`` is listed too, so the document says truthfully that anonymous calls are served.
"""

from __future__ import annotations

import html
from typing import Any

from aiohttp import web
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.server.http.common import MAX_TIMEOUT_MS
from nmtserve.server.service import server_version

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "minimum": 0},
    FieldDescriptor.TYPE_INT32: {"type": "integer"},
}


def message_schema(descriptor: Descriptor) -> dict[str, Any]:
    """A JSON schema reference for a message, its fields as protobuf's JSON mapping writes them."""
    return {"$ref": f"#/components/schemas/{descriptor.name}"}


def _field_schema(field: FieldDescriptor) -> dict[str, Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        schema = message_schema(field.message_type)
    else:
        schema = dict(_SCALARS.get(field.type, {"type": "string"}))
    return {"type": "array", "items": schema} if field.is_repeated else schema


def _components() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    pending = [
        pb.TranslateRequest.DESCRIPTOR,
        pb.TranslateResponse.DESCRIPTOR,
        pb.ModelInfo.DESCRIPTOR,
        pb.ModelStatus.DESCRIPTOR,
    ]
    while pending:
        descriptor = pending.pop()
        if descriptor.name in schemas:
            continue
        schemas[descriptor.name] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {field.name: _field_schema(field) for field in descriptor.fields},
        }
        pending += [f.message_type for f in descriptor.fields if f.type == FieldDescriptor.TYPE_MESSAGE]
    schemas["Error"] = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    schemas["LibreTranslateRequest"] = {
        "type": "object",
        "required": ["q", "source", "target"],
        "properties": {
            "q": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "source": {"type": "string", "description": "the model's source language code (no detector: no auto)"},
            "target": {"type": "string"},
            "format": {"type": "string", "enum": ["text", "html"], "default": "text"},
            "alternatives": {"type": "integer", "minimum": 0, "default": 0},
            "api_key": API_KEY_FIELD,
        },
    }
    schemas["LibreTranslateFileRequest"] = {
        "type": "object",
        "required": ["file", "source", "target"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "a UTF-8 .txt, .html, .md or .srt file"},
            "source": {"type": "string"},
            "target": {"type": "string"},
            "api_key": API_KEY_FIELD,
        },
    }
    schemas["FileRequest"] = {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "a UTF-8 .txt, .html, .md or .srt file"},
            "options": {"type": "string", "description": "a DecodingOptions message as JSON (optional)"},
        },
    }
    return {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES}


API_KEY_FIELD = {
    "type": "string",
    "description": "LibreTranslate's key (the libreApiKey scheme); needed when the server has auth_token_file",
}
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "one of the keys in the server's auth_token_file, as 'Authorization: Bearer <key>'",
    },
    "libreApiKey": {
        "type": "apiKey",
        "in": "query",
        "name": "api_key",
        "description": "LibreTranslate's api_key: sent as the api_key field of the JSON or form body (as "
        "LibreTranslate clients do), or in the query string (with any body); the same keys as bearerAuth",
    },
}


def security(keys_required: bool, *schemes: str) -> list[dict[str, list[str]]]:
    """An operation's security requirements: any one of ``schemes``; anonymous too when no key is required."""
    alternatives: list[dict[str, list[str]]] = [{scheme: []} for scheme in schemes]
    return alternatives if keys_required else [*alternatives, {}]


def _errors(*codes: int) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    names = {
        400: "bad request", 401: "no valid bearer token", 403: "no valid api_key", 404: "not found",
        413: "body too large", 429: "queue full (see Retry-After)", 500: "the engine failed on this request's text",
        503: "not serving", 504: "deadline passed",
    }  # fmt: skip
    return {str(code): {"description": names[code], "content": content} for code in codes}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def document(keys_required: bool = False) -> dict[str, Any]:
    ref = message_schema
    libre_security = security(keys_required, "libreApiKey", "bearerAuth")
    v1_security = security(keys_required, "bearerAuth")
    public: list[dict[str, list[str]]] = []  # no key, ever
    file_part = {"schema": {"type": "string", "format": "binary"}}
    libre_file_body = {
        "required": True,
        "content": {"multipart/form-data": {"schema": {"$ref": "#/components/schemas/LibreTranslateFileRequest"}}},
    }
    file_body = {
        "required": True,
        "content": {"multipart/form-data": {"schema": {"$ref": "#/components/schemas/FileRequest"}}},
    }
    translated_file = {
        "description": "the translated file (Content-Disposition: attachment)",
        "content": {media: file_part for media in ("text/plain", "text/html", "text/markdown", "application/x-subrip")},
    }
    request_schema = {"schema": ref(pb.TranslateRequest.DESCRIPTOR)}
    translate_body = {"required": True, "content": {"application/json": request_schema}}
    libre_body = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/LibreTranslateRequest"}},
            "application/x-www-form-urlencoded": {"schema": {"$ref": "#/components/schemas/LibreTranslateRequest"}},
        },
    }
    timeout = {"name": "X-Timeout-Ms", "in": "header", "required": False,
               "schema": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": MAX_TIMEOUT_MS},
               "description": "deadline in milliseconds; the work is cancelled when it passes"}  # fmt: skip
    paths = {
        "/translate": {"post": {
            "summary": "Translate (LibreTranslate-compatible)", "tags": ["LibreTranslate"], "parameters": [timeout],
            "requestBody": libre_body, "security": libre_security,
            "responses": {"200": _json({"type": "object", "properties": {
                "translatedText": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                "alternatives": {"type": "array"}}}), **_errors(400, 403, 413, 429, 500, 503, 504)},
        }},
        "/translate_file": {"post": {
            "summary": "Translate a file (LibreTranslate-compatible): answers a download URL",
            "tags": ["LibreTranslate"], "parameters": [timeout], "requestBody": libre_file_body,
            "security": libre_security,
            "responses": {"200": _json({"type": "object", "properties": {"translatedFileUrl": {"type": "string"}}}),
                          **_errors(400, 403, 413, 429, 500, 503, 504)},
        }},
        "/download_file/{token}": {"get": {
            "summary": "A translated file, for a while after /translate_file (the token is the credential)",
            "tags": ["LibreTranslate"], "security": public,
            "parameters": [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": translated_file, **_errors(404)},
        }},
        "/languages": {"get": {"summary": "Languages and their targets", "tags": ["LibreTranslate"],
                               "security": public,
                               "responses": {"200": _json({"type": "array", "items": {"type": "object"}})}}},
        "/health": {"get": {"summary": "ok while serving, 503 otherwise", "tags": ["LibreTranslate"],
                            "security": public, "responses": {"200": _json({"type": "object"}), **_errors(503)}}},
        "/suggest": {"post": {"summary": "LibreTranslate's suggestions: off here (403, as LibreTranslate's when off)",
                              "tags": ["LibreTranslate"], "security": public, "responses": {"403": {
            "description": "Suggestions are disabled on this server.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}},
        "/frontend/settings": {"get": {"summary": "Settings for front ends", "tags": ["LibreTranslate"],
                                       "security": public, "responses": {"200": _json({"type": "object"})}}},
        "/v1/translate_file": {"post": {
            "summary": "Translate a file: the translated file is the answer", "tags": ["v1"],
            "parameters": [timeout], "requestBody": file_body, "security": v1_security,
            "responses": {"200": translated_file, **_errors(400, 401, 413, 429, 500, 503, 504)},
        }},
        "/v1/translate": {"post": {
            "summary": "Translate (the proto's TranslateRequest as JSON)", "tags": ["v1"], "parameters": [timeout],
            "requestBody": translate_body, "security": v1_security,
            "responses": {"200": _json(ref(pb.TranslateResponse.DESCRIPTOR)),
                          **_errors(400, 401, 404, 413, 429, 500, 503, 504)},
        }},
        "/v1/translate/stream": {"post": {
            "summary": "Translate with Server-Sent Events: partial (stable prefix) events, then result",
            "tags": ["v1"], "parameters": [timeout], "requestBody": translate_body, "security": v1_security,
            "responses": {"200": {"description": "text/event-stream of partial, result or error events",
                                  "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                          **_errors(400, 401, 404, 413, 429, 500, 503, 504)},
        }},
        "/v1/models": {"get": {"summary": "The served models, and every model of the repository", "tags": ["v1"],
                               "security": v1_security, "responses": {
            "200": _json({"type": "object", "properties": {
                "models": {"type": "array", "items": ref(pb.ModelInfo.DESCRIPTOR)},
                "repository": {"type": "array", "items": ref(pb.ModelStatus.DESCRIPTOR)},
                "default_model": {"type": "string"}}}),
            **_errors(401, 503)}}},
        "/v1/models/{name}": {"get": {
            "summary": "One model (its serving version, or ?version=)", "tags": ["v1"], "security": v1_security,
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "version", "in": "query", "required": False, "schema": {"type": "string"}}],
            "responses": {"200": _json(ref(pb.ModelInfo.DESCRIPTOR)), **_errors(401, 404, 503)}}},
    }  # fmt: skip
    return {
        "openapi": "3.0.3",
        "info": {"title": "nmtserve HTTP API", "version": server_version()},
        "paths": paths,
        "components": _components(),
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[DOCUMENT])


async def docs_page(request: web.Request) -> web.Response:
    spec = request.app[DOCUMENT]
    rows = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            codes = ", ".join(operation["responses"])
            schemes = [name for alternative in operation.get("security", []) for name in alternative]
            optional = {} in operation.get("security", [])
            keys = " or ".join(schemes) + (" (optional: no keys configured)" if optional else "") if schemes else "none"
            rows.append(
                f"<tr><td><code>{method.upper()} {html.escape(path)}</code></td>"
                f"<td>{html.escape(operation['summary'])}</td><td>{codes}</td><td>{html.escape(keys)}</td></tr>"
            )
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>nmtserve HTTP API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:.3em 1em;border-bottom:1px solid #ddd}</style>"
        "</head><body><h1>nmtserve HTTP API</h1><p>The machine-readable description: "
        '<a href=/openapi.json>/openapi.json</a> (OpenAPI 3). Errors are JSON <code>{"error": "..."}</code>.</p>'
        "<table><tr><th>endpoint</th><th>what</th><th>statuses</th><th>key</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
    return web.Response(text=body, content_type="text/html")


DOCUMENT = web.AppKey("openapi", dict)


def add_routes(app: web.Application, keys_required: bool) -> None:
    app[DOCUMENT] = document(keys_required)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/spec", openapi_json)  # where LibreTranslate serves its API description (Swagger 2 there)
    app.router.add_get("/docs", docs_page)
