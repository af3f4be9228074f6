"""File translation over HTTP end to end: LibreTranslate's ``POST /translate_file`` (+ its download URL) and the
native ``POST /v1/translate_file``, against a real server on 127.0.0.1 with real clients (requests, aiohttp).
The offline engine translating the same document (``translate_document``) is the referee; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import io
import resource
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from test_http_server import config

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.export.testing import tiny_export
from nmtserve.server.background import BackgroundServer
from nmtserve.server.documents.requests import translate_document
from nmtserve.server.http.files import DownloadStore

LIMIT = 20_000  # max_request_bytes of the servers here
KEY = "file-key-123"
DOCUMENTS = {
    "notes.txt": "open the file and save it.  select a printer from the list.\n\nthe cat sat on the mat.\n",
    "page.html": (
        "<!DOCTYPE html><html><head><title>the cat</title></head><body>\n"
        '<p class="x">open the file and <b>save</b> it. select a printer.</p>\n'
        '<pre>keep  this</pre><p translate="no">the mat</p>\n</body></html>'
    ),
    "readme.md": "# the cat\n\nopen the file and save it. select a printer.\n\n```\ncode stays\n```\n",
    "talk.srt": "1\n00:00:01,000 --> 00:00:02,500\nthe cat sat on the mat.\n\n2\n00:00:03,000 --> 00:00:04,000\n"
    "open the file.\n",
}
FORMATS = {".txt": "text", ".html": "html", ".md": "markdown", ".srt": "srt"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "tiny-model-files", "fp32")


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Engine:
    return Engine.load(model_dir, threads=1)


@pytest.fixture(scope="module")
def server(model_dir: Path):
    with BackgroundServer(config(model_dir, max_request_bytes=LIMIT)) as running:
        yield running


@pytest.fixture(scope="module")
def keyed(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    keys = tmp_path_factory.mktemp("file-keys") / "keys"
    keys.write_text(KEY + "\n")
    with BackgroundServer(config(model_dir, max_request_bytes=LIMIT, auth_token_file=keys)) as running:
        yield running


def base(server: BackgroundServer) -> str:
    return f"http://127.0.0.1:{server.server.http_port}"


def offline(engine: Engine, server: BackgroundServer, name: str, text: str) -> str:
    served = server.server.config
    options = DecodingOptions(beam_size=served.beam_size, max_length=served.max_length)
    return translate_document(engine, text, FORMATS[Path(name).suffix], options, served)


def upload(server: BackgroundServer, name: str, data: bytes, **fields: str) -> requests.Response:
    fields = {"source": "en", "target": "de"} | fields
    return requests.post(f"{base(server)}/translate_file", data=fields, files={"file": (name, data)}, timeout=60)


def assert_serving(server: BackgroundServer) -> None:
    answer = requests.post(f"{base(server)}/translate", json={"q": "the cat", "source": "en", "target": "de"})
    assert answer.status_code == 200 and answer.json()["translatedText"]


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_translate_file_answers_a_download_url_of_the_translated_document(server, engine, name: str) -> None:
    answer = upload(server, name, DOCUMENTS[name].encode())
    assert answer.status_code == 200, answer.text
    url = answer.json()["translatedFileUrl"]
    assert url.startswith(base(server) + "/download_file/")
    download = requests.get(url, timeout=30)
    assert download.status_code == 200
    stem, suffix = name.rsplit(".", 1)
    assert f"{stem}.de.{suffix}" in download.headers["Content-Disposition"]
    assert download.content.decode("utf-8") == offline(engine, server, name, DOCUMENTS[name])
    assert download.content != DOCUMENTS[name].encode()  # something was translated
    assert requests.get(url, timeout=30).content == download.content  # downloadable again until it expires
    assert requests.get(url + "x", timeout=30).status_code == 404


def test_the_native_route_answers_the_file_itself(server, engine) -> None:
    async def send() -> tuple[int, str, bytes]:
        form = aiohttp.FormData()
        form.add_field("file", DOCUMENTS["page.html"].encode(), filename="page.html", content_type="text/html")
        form.add_field("options", '{"beam_size": 2}')
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{base(server)}/v1/translate_file", data=form) as answer,
        ):
            return answer.status, answer.headers["Content-Type"], await answer.read()

    status, kind, body = asyncio.run(send())
    served = server.server.config
    options = DecodingOptions(beam_size=2, max_length=served.max_length)
    assert status == 200 and kind.startswith("text/html")
    assert body.decode() == translate_document(engine, DOCUMENTS["page.html"], "html", options, served)


@pytest.mark.parametrize(
    ("name", "data", "status", "fragments"),
    [
        ("page.html", b"<p>" + b"a" * LIMIT + b"</p>", 413, ["larger than 20000 bytes", "max_request_bytes"]),
        ("notes.txt", "Grüße aus Köln.".encode("latin-1"), 400, ["not UTF-8", "0xFC", "offset 2"]),
        ("notes.txt", "hello".encode("utf-16"), 400, ["UTF-16"]),
        ("notes.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 400, ["looks binary", "0x1A", "offset 6"]),
        ("scan.pdf", b"%PDF-1.4", 400, ["'.pdf'", ".html", ".srt", ".txt"]),
        ("noext", b"hello", 400, ["no suffix"]),
        ("page.html", b"<p>a\x7fb</p>", 400, ["U+007F"]),
    ],
    ids=["too large", "latin-1", "utf-16", "binary", "pdf", "no suffix", "control character"],
)
def test_bad_files_get_a_named_error_and_the_server_keeps_serving(server, name, data, status, fragments) -> None:
    answer = upload(server, name, data)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert all(fragment in error for fragment in fragments), error
    assert_serving(server)


def test_a_huge_upload_is_cut_off_at_the_limit_while_it_is_read(server) -> None:
    """50 MB, streamed: the answer is the named 413 (the server stops reading at 20 kB, never holds 50 MB)."""

    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'
        for _ in range(50 * 16):
            yield b"word " * (64 * 1024 // 5)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; the server runs in this process
    try:
        answer = requests.post(
            f"{base(server)}/translate_file",
            data=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
            timeout=60,
        )
    except requests.ConnectionError:  # the server answered and closed while we were still sending: allowed
        pass
    else:
        assert answer.status_code == 413 and "max_request_bytes" in answer.json()["error"]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 16 * 1024  # far from 50 MB held
    assert_serving(server)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"data": {"source": "en", "target": "de"}}, "missing file parameter"),
        ({"files": {"file": ("a.txt", b"hi")}, "data": {"target": "de"}}, "missing source parameter"),
        ({"files": {"file": ("a.txt", b"hi")}, "data": {"source": "en", "target": "fr"}}, "fr is not supported"),
        ({"json": {"q": "x", "source": "en", "target": "de"}}, "multipart/form-data"),
        (
            {
                "data": b"--b\r\nnot a header line\r\n\r\n",
                "headers": {"Content-Type": "multipart/form-data; boundary=x"},
            },
            "Invalid request",
        ),
        (
            {
                "data": b"--b\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\nx\r\n--b--\r\n",
                "headers": {"Content-Type": "multipart/form-data; boundary=b"},
            },
            "malformed multipart body",
        ),
    ],
    ids=["no file", "no source", "unsupported target", "json body", "malformed multipart", "huge part header"],
)
def test_bad_requests_are_400_with_libretranslate_messages(server, kwargs: dict[str, Any], fragment: str) -> None:
    answer = requests.post(f"{base(server)}/translate_file", timeout=30, **kwargs)
    assert answer.status_code == 400, answer.text
    assert fragment in answer.json()["error"]
    assert_serving(server)


def test_keys_are_required_when_configured(keyed) -> None:
    assert upload(keyed, "a.txt", b"the cat.").status_code == 403
    assert upload(keyed, "a.txt", b"the cat.", api_key="wrong").json() == {"error": "Invalid API key"}
    assert upload(keyed, "a.txt", b"the cat.", api_key=KEY).status_code == 200
    native = f"{base(keyed)}/v1/translate_file"
    files = {"file": ("a.txt", io.BytesIO(b"the cat."))}
    assert requests.post(native, files=files, timeout=30).status_code == 401
    files = {"file": ("a.txt", io.BytesIO(b"the cat."))}
    good = requests.post(native, files=files, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert good.status_code == 200 and good.content


def test_frontend_settings_announce_file_translation(server) -> None:
    settings = requests.get(f"{base(server)}/frontend/settings", timeout=30).json()
    assert settings["filesTranslation"] is True and {".txt", ".html", ".md", ".srt"} <= set(
        settings["supportedFilesFormat"]
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_download_store_is_bounded_in_files_bytes_and_time() -> None:
    clock = Clock()
    store = DownloadStore(max_bytes=10, max_files=2, ttl_s=5.0, clock=clock)
    first = store.put(b"aaaa", "a.txt", "text/plain")
    second = store.put(b"bbbb", "b.txt", "text/plain")
    assert first and second and store.get(first) is not None
    third = store.put(b"cc", "c.txt", "text/plain")  # 3 files > 2: the oldest goes
    assert third and store.get(first) is None and len(store) == 2
    fourth = store.put(b"d" * 9, "d.txt", "text/plain")  # 4 + 2 + 9 > 10 bytes, and 2 + 9 too: both go
    assert fourth and store.get(second) is None and store.get(third) is None and store.size == 9
    assert store.put(b"x" * 11, "e.txt", "text/plain") is None  # larger than the whole store
    clock.now = 5.0
    assert store.get(fourth) is None and store.size == 0 and len(store) == 0  # expired


DEBIAN_PAGES = [
    path
    for path in sorted(Path("/usr/share/doc/libffi8/html").glob("*.html"))
    if path.is_file() and path.stat().st_size < LIMIT
][:1]


@pytest.mark.skipif(not DEBIAN_PAGES, reason="libffi8's HTML manual is not installed")
@pytest.mark.parametrize("path", DEBIAN_PAGES, ids=lambda p: p.name)
def test_a_debian_manual_page_round_trips_through_translate_file(server, engine, path: Path) -> None:
    """A real page (libffi's texinfo HTML: &nbsp;, &rsquo;, ...) uploaded as a file: the download is the
    offline referee's translation, with the page's tree, and its references where the characters come back."""
    from nmtserve.server.documents.html import entity_spellings, parse

    source = path.read_text(encoding="utf-8")
    answer = upload(server, path.name, path.read_bytes())
    assert answer.status_code == 200, answer.text
    translated = requests.get(answer.json()["translatedFileUrl"], timeout=30).content.decode()
    assert translated == offline(engine, server, path.name, source)
    tags = [element.tag for element in parse(source)[0].iter()]
    assert [element.tag for element in parse(translated)[0].iter()] == tags
    spellings = entity_spellings(source)  # the tiny model may drop a translated "–"; none comes back bare
    assert not any(char in translated for char in spellings)
    assert any(spelling in translated for spelling in spellings.values())
