"""Markdown and SubRip document mode: prose translated in place, code, link targets, front matter, numbering and
timings kept. Real documents: the Markdown files Debian packages ship under /usr/share/doc (when installed)."""

from __future__ import annotations

import gzip
import re
import time
from pathlib import Path

import grpc
import pytest
import srt
from markdown_it import MarkdownIt

from nmtserve.engine import DecodingOptions
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig
from nmtserve.server.documents import DocumentError, plan_document
from nmtserve.server.documents.markdown import markdown_spans

MARK = re.compile(r"§(\d+)§")

MARKDOWN = """---
title: Keep me. Really.
---
# Getting started #

Open the **file** menu with `Ctrl+O` and read the [manual](https://example.org/a_(b) "The manual").
Then save it. ![A picture.](img.png) See <https://example.org>.

> Quoted text.

- First item
- Second *item*

```sh
echo "Do not translate."
```

| Name | Value |
|------|-------|
| One cell | Two |
"""


def marked(text: str, format: str) -> tuple[list[str], str]:
    plan = plan_document(text, format)
    return plan.sentences, plan.rebuild([f"§{i}§" for i in range(len(plan.sentences))])


def kept_parts(text: str) -> list:
    """What must not change: code, link and image targets, raw HTML, the block structure."""
    out = []
    for token in MarkdownIt("commonmark").enable("table").parse(text):
        if token.type in ("fence", "code_block", "html_block"):
            out.append((token.type, token.content))
        elif token.type != "inline":
            out.append((token.type, token.tag))
        for child in token.children or []:
            if child.type in ("code_inline", "html_inline"):
                out.append((child.type, child.content))
            for name in ("href", "src"):
                if child.attrGet(name):
                    out.append((name, child.attrGet(name)))
    return out


def test_markdown_prose_is_translated_and_the_rest_kept():
    sentences, out = marked(MARKDOWN, "markdown")
    assert "Keep me. Really." not in sentences and "Getting started" in sentences
    assert "A picture." in sentences and "https://example.org" not in sentences
    assert out.startswith("---\ntitle: Keep me. Really.\n---\n# §0§ #\n")
    assert "[§" in out and '](https://example.org/a_(b) "The manual")' in out and "`Ctrl+O`" in out
    assert 'echo "Do not translate."' in out and "| §" in out
    assert sorted(int(m) for m in MARK.findall(out)) == list(range(len(sentences)))
    assert kept_parts(out) == kept_parts(MARKDOWN)
    assert plan_document(MARKDOWN, "markdown").rebuild(sentences) == MARKDOWN


def debian_markdown(limit: int = 8) -> list[tuple[str, str]]:
    out = []
    for path in sorted(Path("/usr/share/doc").glob("*/*.md*")):
        if path.is_file() and path.suffix in (".md", ".gz") and path.stat().st_size < 200_000:
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            out.append((f"{path.parent.name}/{path.name}", data.decode("utf-8", "replace")))
    return out[:limit]


@pytest.mark.skipif(not debian_markdown(), reason="no Markdown files under /usr/share/doc")
@pytest.mark.parametrize(("name", "text"), debian_markdown(), ids=lambda v: v if "/" in v and len(v) < 80 else "")
def test_debian_markdown_round_trips(name: str, text: str):
    sentences, out = marked(text, "markdown")
    assert sentences, name
    assert sorted(int(m) for m in MARK.findall(out)) == list(range(len(sentences)))
    assert kept_parts(out) == kept_parts(text)
    assert plan_document(text, "markdown").rebuild(sentences) == text


SUBTITLES = """1
00:00:01,000 --> 00:00:02,500
Open the file menu. Then save it.
Hello.

2
00:00:03,250 --> 00:01:04,000
<i>The package contains the documentation.</i>

"""


def test_subrip_keeps_numbering_and_timings():
    sentences, out = marked(SUBTITLES, "srt")
    assert sentences == ["Open the file menu.", "Then save it.", "Hello.", "The package contains the documentation."]
    before, after = list(srt.parse(SUBTITLES)), list(srt.parse(out))
    assert [(c.index, c.start, c.end) for c in after] == [(c.index, c.start, c.end) for c in before]
    assert [c.content for c in after] == ["§0§ §1§\n§2§", "<i>§3§</i>"]
    assert plan_document(SUBTITLES, "srt").rebuild(sentences) == SUBTITLES


def test_a_broken_subrip_file_is_refused():
    with pytest.raises(DocumentError, match="not a valid SubRip"):
        plan_document("1\nnot a timing\nHello.\n", "srt")


@pytest.fixture(scope="module")
def stub(demo_model_dir: Path):
    config = ServerConfig(model=demo_model_dir, port=0, metrics_port=0, threads=1, warmup=False, max_length=40)
    with BackgroundServer(config) as running, grpc.insecure_channel(running.address) as channel:
        yield pb_grpc.TranslatorStub(channel)


@pytest.mark.parametrize(("format", "text"), [("markdown", MARKDOWN), ("srt", SUBTITLES)])
def test_the_server_translates_markdown_and_subrip(stub, demo_engine, format, text):
    plan = plan_document(text, format)
    offline = [n[0].text for n in demo_engine.translate(plan.sentences, DecodingOptions(max_length=40))]
    response = stub.Translate(pb.TranslateRequest(texts=[text], format=format))
    assert response.translations[0].hypotheses[0].text == plan_document(text, format).rebuild(offline)


def test_the_server_names_a_broken_subrip_file(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.Translate(pb.TranslateRequest(texts=["garbage\n-->\n"], format="srt"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "texts[0]: not a valid SubRip file" in error.value.details()


def test_reference_labels_of_collapsed_and_shortcut_links_are_kept():
    """``[INSTALL][]`` and ``[INSTALL]`` name their definition by their text (git's README): translating it would
    break the link; ``[text][label]`` names it by the label, so its text is translated."""
    text = "Read [INSTALL][] and [NEWS] first. See [the guide][g].\n\n[INSTALL]: INSTALL\n[NEWS]: N\n[g]: G\n"
    sentences, out = marked(text, "markdown")
    assert "[INSTALL][]" in out and "[NEWS]" in out and "][g]" in out
    assert not any("INSTALL" in s or "NEWS" in s for s in sentences) and "the guide" in sentences
    assert kept_parts(out) == kept_parts(text)


def test_link_text_with_an_escape_is_not_looked_for_in_the_url():
    """Node's docs write ``[src/node\\_wasi.h](https://.../src/node_wasi.h)``: the parser's text (unescaped) is not
    in the source as written, and was found further on, inside the URL, whose path was then translated."""
    text = "* [src/node\\_wasi.h](https://github.com/nodejs/node/blob/main/src/node_wasi.h)\n"
    sentences, out = marked(text, "markdown")
    assert sentences == ["src/node\\_wasi.h"]
    assert out == "* [§0§](https://github.com/nodejs/node/blob/main/src/node_wasi.h)\n"
    assert kept_parts(out) == kept_parts(text)


def test_a_reference_label_over_two_lines_is_kept():
    """``[Build issue\\ntracker][]`` (Node's releases.md): the label was checked line by line, so its first line
    was translated and the link no longer matched its definition."""
    text = "Open an issue on the [Build issue\ntracker][].\n\n[Build issue tracker]: https://example.org\n"
    sentences, out = marked(text, "markdown")
    assert sentences == ["Open an issue on the"]
    assert out == "§0§ [Build issue\ntracker][].\n\n[Build issue tracker]: https://example.org\n"
    assert kept_parts(out) == kept_parts(text)


def test_prose_after_a_code_span_that_wraps_a_line_is_translated():
    """A code span may run over a line break (rustfmt's README: `` `cargo\\ninstall` ``); the lines of the
    paragraph were paired with its text by counting soft breaks, so every line after it was left in English."""
    text = "Type `cargo\ninstall`, then run it on the file.\nThe second line is here.\n\nThe next paragraph.\n"
    sentences, out = marked(text, "markdown")
    assert sentences == ["Type", ", then run it on the file.", "The second line is here.", "The next paragraph."]
    assert out == "§0§ `cargo\ninstall`§1§\n§2§\n\n§3§\n"
    assert kept_parts(out) == kept_parts(text)


@pytest.mark.parametrize("separator", ["\u2028", "\x0c", "\x85"])
def test_line_numbers_count_only_markdown_line_ends(separator: str):
    """markdown-it counts lines at CR and LF only; the source was cut with str.splitlines, which also cuts at form
    feeds, U+2028 and NEL, so every block after one was looked for on the wrong line and left untranslated."""
    text = f"Alpha beta{separator}gamma delta.\n\n```\ncode here\n```\n\n# The title\n\nThe end is near.\n"
    sentences, out = marked(text, "markdown")
    assert sentences[-2:] == ["The title", "The end is near."]
    assert out.endswith("```\ncode here\n```\n\n# §1§\n\n§2§\n")
    assert kept_parts(out) == kept_parts(text)


def test_text_with_escapes_and_entities_is_translated_as_written():
    """Escapes and entities are tokens of their own that know their spelling, so such text is found exactly and
    sent as written (the model copies ``\\_`` and ``&amp;``) instead of being left in English."""
    text = "Support on x86\\_64 &amp; ia32 is tested. \\[ ] Done.\n"
    sentences, out = marked(text, "markdown")
    assert sentences == ["Support on x86\\_64 &amp; ia32 is tested.", "\\[ ] Done."]
    assert out == "§0§ §1§\n"
    assert plan_document(text, "markdown").rebuild(sentences) == text


def test_the_server_keeps_link_targets_and_labels_of_wrapped_markdown(stub):
    """The cases above through the real server and model: every link target, label and code span comes back."""
    text = (
        "See [src/node\\_wasi.h](https://example.org/src/node_wasi.h) and the [Build issue\ntracker][].\n"
        "Type `cargo\ninstall`, then the package is installed.\n\n"
        "The package is installed.\u2028The server is running.\n\n# The program is open\n\n"
        "[Build issue tracker]: https://example.org/issues\n"
    )
    response = stub.Translate(pb.TranslateRequest(texts=[text], format="markdown"))
    out = response.translations[0].hypotheses[0].text
    assert kept_parts(out) == kept_parts(text)
    assert "[Build issue\ntracker][]" in out and "(https://example.org/src/node_wasi.h)" in out
    assert "The program is open" not in out and "the package is installed" not in out


def test_a_cue_keeps_its_lines(stub):
    """A subtitle sentence usually runs over the cue's two lines; the model answers on one, and the cue came back
    as one long line: the line break is put back in the translation (plan.rewrap), with tags kept."""
    text = (
        "1\n00:00:01,000 --> 00:00:03,000\nThe package contains\nthe documentation.\n\n"
        "2\n00:00:03,500 --> 00:00:05,000\n<i>The server is running\nand the file is open.</i>\n"
    )
    response = stub.Translate(pb.TranslateRequest(texts=[text], format="srt"))
    before, after = list(srt.parse(text)), list(srt.parse(response.translations[0].hypotheses[0].text))
    assert [(c.index, c.start, c.end) for c in after] == [(c.index, c.start, c.end) for c in before]
    assert [len(c.content.split("\n")) for c in after] == [2, 2]
    assert all(line.strip() for c in after for line in c.content.split("\n"))
    assert after[1].content.startswith("<i>") and after[1].content.endswith("</i>")


def test_cue_text_is_not_html_escaped_and_ass_tags_are_kept(stub, demo_engine):
    """Cues with a tag went through the HTML serializer, which wrote "&" as "&amp;" and a lone "<" as "&lt;"
    (players show both literally); an ASS override such as {\\an8} was sent glued to the first word. Tags are
    now kept byte for byte and only the text between them is translated; a CRLF file stays CRLF."""
    text = (
        "1\r\n00:00:01,000 --> 00:00:02,500\r\n{\\an8}The package is installed.\r\n\r\n"
        "2\r\n00:00:03,000 --> 00:00:04,000\r\nTom & Jerry <i>open the file</i> if 1 < 2.\r\n"
    )
    plan = plan_document(text, "srt")
    assert plan.sentences == ["The package is installed.", "Tom & Jerry", "open the file", "if 1 < 2."]
    out = stub.Translate(pb.TranslateRequest(texts=[text], format="srt")).translations[0].hypotheses[0].text
    assert out == plan.rebuild(offline_translations(demo_engine, plan.sentences))
    cues = list(srt.parse(out))
    assert cues[0].content.startswith("{\\an8}") and "&amp;" not in out and "&lt;" not in out
    assert "<i>" in cues[1].content and "</i> " in cues[1].content
    assert "\r\n" in out and "\n" not in out.replace("\r\n", "")


def offline_translations(engine, sentences: list[str]) -> list[str]:
    return [n[0].text for n in engine.translate(sentences, DecodingOptions(max_length=40))]


def test_a_long_paragraph_is_planned_in_linear_time():
    """max_request_bytes (1 MiB) of one paragraph: mapping each line's text back to the source must not look at
    every piece of the paragraph for every line (that took 65 s for 930 kB)."""
    text = "word *em* and `code` text here\n" * 16_000  # 500 kB, one paragraph of 16,000 lines
    started = time.monotonic()
    spans = markdown_spans(text)
    assert len(spans) == 4 * 16_000 and time.monotonic() - started < 10


def test_a_cue_full_of_unclosed_tags_is_planned_in_linear_time():
    """A tag pattern that may run to the end of the cue from every "<b" takes quadratic time (100 s for 1 MiB)."""
    text = "1\n00:00:01,000 --> 00:00:02,000\n" + "<b " * 300_000 + "{\\x" * 30_000 + "The end.\n"
    started = time.monotonic()
    assert plan_document(text, "srt").sentences and time.monotonic() - started < 10
