"""File translation over HTTP: LibreTranslate's ``POST /translate_file`` (+ ``GET /download_file/{token}``) and
the native ``POST /v1/translate_file``.

Both take ``multipart/form-data`` with a ``file`` part (.txt, .html, .md, .srt: the format comes from the file
name) and translate it through the document layer, so markup, Markdown structure and subtitle timings are kept
and the file's sentences are batched like any other request's. The upload is read part by part and the file
part chunk by chunk: ``max_request_bytes`` is enforced while the stream is read, before anything is decoded or
parsed, so a 50 MB upload costs at most that many bytes of memory before its 413.

LibreTranslate answers ``{"translatedFileUrl": ...}`` and serves the file at that URL; its web page and clients
download it from there, so nmtserve does the same. The translated files wait in memory in a ``DownloadStore``
bounded in bytes and files (the oldest go first) and in time (``DOWNLOAD_TTL_S``); the URL's random token is
the only credential, as in LibreTranslate. The native route answers the translated file itself (one round trip,
nothing kept).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from google.protobuf import json_format

from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.server.documents import DocumentError
from nmtserve.server.documents.files import FORMAT_OF_SUFFIX, MEDIA_TYPE, format_of, text_of
from nmtserve.server.http.common import (
    HttpContext,
    HttpError,
    bearer_of,
    body_within_timeout,
    check_key,
    context_of,
    libre_key,
    translate_through_service,
)
from nmtserve.server.http.libre import PART_HEADERS, check_language_pair

MAX_FIELD_BYTES = 4096  # a form field other than the file (source, target, api_key, options)
MAX_PARTS = 16  # parts of one upload: a flood of tiny parts must not cost unbounded work
CHUNK = 64 * 1024
DOWNLOAD_TTL_S = 600.0  # how long a translated file can be downloaded
DOWNLOAD_FILES = 256  # translated files kept at most
DOWNLOAD_BYTES_FACTOR = 8  # the store holds at most this many max_request_bytes of translated files
FILE_FORMATS = sorted(FORMAT_OF_SUFFIX)


@dataclass
class Upload:
    """A multipart upload: the file (name, bytes) and the other fields as text."""

    filename: str
    data: bytes
    fields: dict[str, str]


@dataclass
class StoredFile:
    data: bytes
    filename: str
    media_type: str
    expires: float


class DownloadStore:
    """Translated files waiting to be downloaded, bounded in count, bytes and age (oldest evicted first)."""

    def __init__(self, max_bytes: int, max_files: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_bytes, self.max_files, self.ttl_s = max_bytes, max_files, ttl_s
        self._clock = clock
        self._files: OrderedDict[str, StoredFile] = OrderedDict()  # insertion order = age
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._files)

    @property
    def size(self) -> int:
        """Bytes of the files kept."""
        return self._bytes

    def _expire(self) -> None:
        now = self._clock()
        while self._files and next(iter(self._files.values())).expires <= now:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, stored = self._files.popitem(last=False)
        self._bytes -= len(stored.data)

    def put(self, data: bytes, filename: str, media_type: str) -> str | None:
        """Keep a file; its download token, or None if it alone is larger than the store."""
        if len(data) > self.max_bytes:
            return None
        self._expire()
        while self._files and (len(self._files) >= self.max_files or self._bytes + len(data) > self.max_bytes):
            self._evict_oldest()
        token = secrets.token_urlsafe(24)
        self._files[token] = StoredFile(data, filename, media_type, self._clock() + self.ttl_s)
        self._bytes += len(data)
        return token

    def get(self, token: str) -> StoredFile | None:
        self._expire()
        return self._files.get(token)


STORE = web.AppKey("nmtserve-downloads", DownloadStore)


async def _read_part(part: BodyPartReader, limit: int, what: str, setting: str) -> bytes:
    """The part's bytes, read in chunks; 413 naming ``setting`` as soon as they pass ``limit``."""
    chunks, size = [], 0
    while chunk := await part.read_chunk(CHUNK):
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"{what} is larger than {limit} bytes ({setting})")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: web.Request, limit: int) -> Upload:
    """The ``file`` part and the text fields of a multipart/form-data body, each bounded while it is read."""
    if request.content_type == "application/x-www-form-urlencoded":  # a form without a file in it
        raise HttpError(400, "Invalid request: missing file parameter")
    if request.content_type != "multipart/form-data":
        raise HttpError(400, "Invalid request: send multipart/form-data with the document in a 'file' field")
    try:
        reader = await request.multipart()
        filename, data, fields, parts = None, None, {}, 0
        while (part := await reader.next()) is not None:
            parts += 1
            if parts > MAX_PARTS:
                raise HttpError(400, f"Invalid request: more than {MAX_PARTS} form fields")
            if not isinstance(part, BodyPartReader):
                raise HttpError(400, "Invalid request: nested multipart bodies are not supported")
            if part.name == "file" and part.filename is not None:
                if data is not None:
                    raise HttpError(400, "Invalid request: send one file per request")
                filename = PurePath(part.filename.replace("\\", "/")).name  # the name only, never a path
                data = await _read_part(part, limit, "the file", "max_request_bytes")
            elif part.name:
                raw = await _read_part(part, MAX_FIELD_BYTES, f"the form field {part.name!r}", "4096 bytes a field")
                fields[part.name] = raw.decode("utf-8", "replace")
            else:
                await _read_part(part, MAX_FIELD_BYTES, "an unnamed form field", "4096 bytes a field")
    except ValueError as error:  # aiohttp's answer to a malformed multipart body (boundary, headers)
        raise HttpError(400, f"Invalid request: malformed multipart body: {error}") from None
    except HttpProcessingError:  # a part's header line over aiohttp's 8190 bytes, and the like
        raise HttpError(400, f"Invalid request: malformed multipart body: {PART_HEADERS}") from None
    if data is None or filename is None:
        raise HttpError(400, "Invalid request: missing file parameter")
    return Upload(filename, data, fields)


def _document(upload: Upload) -> tuple[str, str]:
    """(format, text) of the uploaded file, or 400 naming what is wrong with it."""
    try:
        return format_of(upload.filename), text_of(upload.data)
    except DocumentError as error:
        raise HttpError(400, f"Invalid request: {upload.filename}: {error}") from None


def translated_name(filename: str, target: str) -> str:
    """``manual.html`` translated to German is ``manual.de.html``."""
    path = PurePath(filename)
    return f"{path.stem}.{target}{path.suffix}" if target else filename


async def _translate_document(
    ctx: HttpContext,
    request: web.Request,
    text: str,
    format: str,
    options: pb.DecodingOptions,
    route: str,
    languages: tuple[str, str] | None = None,
) -> bytes:
    """The translated document; ``languages`` (source, target) pick the model of a repository."""
    message = pb.TranslateRequest(texts=[text], format=format, options=options)
    if languages is not None:
        message.source_language, message.target_language = languages
    del text
    response = await translate_through_service(ctx, request, message, route)
    return response.translations[0].hypotheses[0].text.encode("utf-8")


async def translate_file(request: web.Request) -> web.Response:
    """LibreTranslate's ``POST /translate_file``: ``{"translatedFileUrl": ...}``, downloadable for a while."""
    ctx = context_of(request)
    upload = await body_within_timeout(request, read_upload(request, ctx.config.max_request_bytes))
    key = libre_key(request, upload.fields.get("api_key"))
    check_key(request, key, "POST /translate_file", 403)
    pair = check_language_pair(request, upload.fields)
    languages = (pair.source, pair.target) if pair.named else None  # a repository: the pair picks the model
    format, text = _document(upload)
    del upload.data
    options = pb.DecodingOptions()
    data = await _translate_document(ctx, request, text, format, options, "HTTP /translate_file", languages)
    name = translated_name(upload.filename, pair.listed_target)
    token = request.app[STORE].put(data, name, MEDIA_TYPE[format])
    if token is None:
        raise HttpError(413, f"the translated file is {len(data)} bytes: larger than the download store")
    url = request.url.with_path(f"/download_file/{token}").with_query(None)
    return web.json_response({"translatedFileUrl": str(url)})


async def download_file(request: web.Request) -> web.Response:
    stored = request.app[STORE].get(request.match_info["token"])
    if stored is None:
        raise HttpError(404, f"no such file (downloads are kept {DOWNLOAD_TTL_S:.0f} s): {request.path}")
    return _file_response(stored.data, stored.filename, stored.media_type)


def _file_response(data: bytes, filename: str, media_type: str) -> web.Response:
    disposition = f"attachment; filename*=UTF-8''{quote(filename, safe='')}"
    return web.Response(
        body=data,
        content_type=media_type,
        charset="utf-8",
        headers={"Content-Disposition": disposition, "X-Content-Type-Options": "nosniff"},
    )


def _options(fields: dict[str, Any]) -> pb.DecodingOptions:
    """The native route's optional ``options`` field: a DecodingOptions in protobuf's JSON mapping."""
    raw = fields.get("options")
    if not raw:
        return pb.DecodingOptions()
    try:
        return json_format.Parse(raw, pb.DecodingOptions())
    except json_format.ParseError as error:
        raise HttpError(400, f"the options field is not a valid nmtserve.v1.DecodingOptions: {error}") from None


async def translate_file_native(request: web.Request) -> web.Response:
    """``POST /v1/translate_file``: the translated file in the answer (bearer token, optional ``options``)."""
    ctx = context_of(request)
    check_key(request, bearer_of(request), "POST /v1/translate_file", 401)
    upload = await body_within_timeout(request, read_upload(request, ctx.config.max_request_bytes))
    format, text = _document(upload)
    del upload.data
    options = _options(upload.fields)
    data = await _translate_document(ctx, request, text, format, options, "HTTP /v1/translate_file")
    target = _model_target(ctx)
    return _file_response(data, translated_name(upload.filename, target), MEDIA_TYPE[format])


def _model_target(ctx: HttpContext) -> str:
    backend = ctx.service.backend
    return backend.engine.info.manifest.get("languages", {}).get("target", "") if backend is not None else ""


def add_routes(app: web.Application, config_max_request_bytes: int) -> None:
    app[STORE] = DownloadStore(DOWNLOAD_BYTES_FACTOR * config_max_request_bytes, DOWNLOAD_FILES, DOWNLOAD_TTL_S)
    app.router.add_post("/translate_file", translate_file)
    app.router.add_get("/download_file/{token}", download_file)
    app.router.add_post("/v1/translate_file", translate_file_native)
