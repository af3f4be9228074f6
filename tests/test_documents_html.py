"""HTML document mode: structure, attributes, comments and untranslatable parts survive; every text node and
``alt``/``title`` is translated once; malformed markup is recovered as browsers do; the live server answers bad
HTML with named limits and keeps serving. Real documents: the HTML manuals Debian packages ship (when installed).
"""

from __future__ import annotations

import re
from pathlib import Path
from xml.etree import ElementTree

import grpc
import html5lib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmtserve.engine import DecodingOptions
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig
from nmtserve.server.documents import DocumentError, plan_document
from nmtserve.server.documents.html import MAX_DEPTH, entity_spellings, parse, serialize, translated_attributes

PAGE = """<!DOCTYPE html>
<html lang="en"><head><title>The manual.</title><style>p { color: red }</style>
<script>var s = "Do not translate.";</script></head>
<body><!-- a comment. -->
<h1 id="top">Getting started</h1>
<p class="lead">Open the file menu. Then <b>save</b> the <a href="/x" title="A link.">document</a>!</p>
<p>Run <code>make install</code> as root.</p><pre>Keep this text.</pre>
<p translate="no">Brand Name. <span translate="yes">Except this.</span></p>
<img src="a.png" alt="A picture of the menu."> &copy; 2024 the authors.
</body></html>"""

MARK = re.compile(r"§(\d+)§")


def marked(text: str) -> tuple[list[str], str]:
    plan = plan_document(text, "html")
    return plan.sentences, plan.rebuild([f"§{i}§" for i in range(len(plan.sentences))])


def skeleton(root: ElementTree.Element) -> list:
    """Tags and attributes (but the translated ones) in document order, and the text of untranslated parts."""
    out = []
    for element in root.iter():
        translated = translated_attributes(element)
        attributes = {k: v for k, v in element.attrib.items() if k not in translated}
        if element.tag == "<!DOCTYPE>":  # an empty public or system id is written as none at all
            attributes = {k: v for k, v in attributes.items() if v}
        out.append((str(element.tag), sorted(attributes.items())))
    return out


def test_a_page_keeps_its_structure_and_every_text_is_translated_once():
    sentences, out = marked(PAGE)
    assert sentences == [
        "The manual.",
        "Getting started",
        "Open the file menu.",
        "Then",
        "save",
        "the",
        "A link.",
        "document",  # the "!" after it has no words: kept as written (plan.has_words)
        "Run",
        "as root.",
        "Except this.",
        "A picture of the menu.",
        "© 2024 the authors.",
    ]
    assert sorted(int(m) for m in MARK.findall(out)) == list(range(len(sentences)))  # none lost or duplicated
    assert skeleton(parse(out)[0]) == skeleton(parse(PAGE)[0])
    for kept in (
        'var s = "Do not translate.";',
        "<code>make install</code>",
        "<pre>Keep this text.</pre>",
        "Brand Name. ",
        "<!-- a comment. -->",
        "p { color: red }",
        "<!DOCTYPE html>",
    ):
        assert kept in out
    assert 'alt="§11§"' in out and 'title="§6§"' in out and "<b>§4§</b>" in out


FORM = """<form><label for="q" aria-label="Search the manual.">Search</label>
<input id="q" type="text" placeholder="Type a word." value="keep me">
<input type="submit" value="Find it."><input type="hidden" name="n" value="not shown">
<select><optgroup label="Some colours."><option label="Dark red.">red</option></optgroup></select>
<table><tr><th abbr="Size.">The size of the file</th></tr></table></form>
<meta name="description" content="A short manual."><meta name="viewport" content="width=device-width">
<div class="box notranslate">Product Name. <b>Kept too.</b></div>
<div class="notranslate" translate="yes">Translated anyway.</div><p class="notranslated">Not the class.</p>"""


def test_the_standards_translatable_attributes_and_notranslate_classes():
    """The HTML standard's translatable attributes (and aria-label) are translated where they are people's
    text; values a form submits, other meta contents and class="notranslate" parts are kept."""
    sentences, out = marked(FORM)
    assert sentences == [
        "Search the manual.",
        "Search",
        "Type a word.",
        "Find it.",
        "Some colours.",
        "Dark red.",
        "red",
        "Size.",
        "The size of the file",
        "A short manual.",
        "Translated anyway.",
        "Not the class.",
    ]
    for kept in (
        'value="keep me"',
        'value="not shown"',
        'content="width=device-width"',
        "Product Name. <b>Kept too.</b>",
    ):
        assert kept in out
    assert 'placeholder="§2§"' in out and 'value="§3§"' in out and 'abbr="§7§"' in out and 'content="§9§"' in out
    assert skeleton(parse(out)[0]) == skeleton(parse(FORM)[0])


def test_identity_translation_gives_the_parsed_page_back():
    plan = plan_document(PAGE, "html")
    assert plan.rebuild(plan.sentences) == serialize(parse(PAGE)[0], entity_spellings(PAGE))
    assert "&copy; 2024" in plan.rebuild(plan.sentences)


ENTITIES = (
    "<p>A&nbsp;B &copy; 2024 &#8212; x &#x2014; y &quot;q&quot; &amp; &lt;</p>"
    '<pre>keep&nbsp;&nbsp;this &mdash;</pre><p translate="no">Brand&trade;</p><p title="&eacute;t&eacute;">Been.</p>'
    '<img alt="&auml;&amp;b" src="a?x=1&copy=2">'
)


def test_entities_come_back_as_the_page_spelled_them():
    plan = plan_document(ENTITIES, "html")
    same = plan.rebuild(plan.sentences)
    assert "A&nbsp;B &copy; 2024 &#8212; x &#8212; y" in same  # one spelling a character: the first one seen
    assert "<pre>keep&nbsp;&nbsp;this &#8212;</pre>" in same and "Brand&trade;" in same  # untranslated: as written
    assert '"q" &amp; &lt;' in same  # ASCII references come back as characters; & and < are escaped
    assert 'title="&eacute;t&eacute;"' in same and 'alt="&auml;&amp;b"' in same  # in attribute values too
    assert 'src="a?x=1&amp;copy=2"' in same  # not a reference (unterminated, followed by =): left as it was
    # a translation that keeps the characters gets the page's spellings too
    out = plan.rebuild(["Ein\u00a0Satz — mit © darin." for _ in plan.sentences])
    assert "Ein&nbsp;Satz &#8212; mit &copy; darin." in out and "\u00a0" not in out and "©" not in out


def test_a_character_also_written_literally_stays_literal():
    plan = plan_document("<p>&copy; 2024</p><p>© 2025</p>", "html")
    assert plan.rebuild(plan.sentences) == "<p>© 2024</p><p>© 2025</p>"


def test_malformed_markup_is_recovered_as_a_browser_would():
    sentences, out = marked("<p>One <b>two <i>three</b> four<li>five</table></div>")
    assert sentences == ["One", "two", "three", "four", "five"]
    assert out == "<p>§0§ <b>§1§ <i>§2§</i></b><i> §3§</i></p><li><i>§4§</i></li>"  # html5lib's adoption agency


def test_deep_nesting_is_refused_by_a_named_limit():
    with pytest.raises(ValueError, match="nested more than 512"):
        plan_document("<div>" * (MAX_DEPTH + 5) + "x", "html")
    with pytest.raises(ValueError, match="nested more than 512"):  # refused by the pre-scan, before html5lib
        plan_document("<div><span>" * 100_000, "html")
    # unclosed paragraphs and list items do not nest in a browser, so they do not count
    assert len(plan_document("<ul>" + "<li><p>Item." * 2000 + "</ul>", "html").sentences) == 2000


def debian_manuals(limit: int = 8) -> list[Path]:
    """Distinct HTML files that Debian packages installed (the gcc packages ship one NEWS.html many times)."""
    seen, out = set(), []
    for pattern in ("*/*.html", "*/html/*.html"):
        for path in sorted(Path("/usr/share/doc").glob(pattern)):
            if path.is_file() and path.stat().st_size < 400_000 and (path.name, path.stat().st_size) not in seen:
                seen.add((path.name, path.stat().st_size))
                out.append(path)
    return out[:limit]


DEBIAN = debian_manuals()


@pytest.mark.skipif(not DEBIAN, reason="no HTML manuals under /usr/share/doc")
@pytest.mark.parametrize("path", DEBIAN, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_debian_manuals_round_trip(path: Path):
    source = path.read_text("utf-8", errors="replace")
    sentences, out = marked(source)
    assert sentences, "a manual has text"
    assert sorted(int(m) for m in MARK.findall(out)) == list(range(len(sentences)))
    original, translated = parse(source)[0], parse(out)[0]
    assert skeleton(translated) == skeleton(original)
    for before, after in zip(original.iter(), translated.iter(), strict=True):  # untranslated parts untouched
        if str(before.tag).rsplit("}", 1)[-1] in ("script", "style", "pre", "code") or before.get("translate") == "no":
            assert list(before.itertext()) == list(after.itertext())


def debian_manuals_with_references(limit: int = 6) -> list[Path]:
    """Debian HTML manuals that write non-ASCII characters as references (libffi's texinfo pages, base-passwd)."""
    out, seen = [], set()
    for path in sorted(Path("/usr/share/doc").glob("**/*.html")):
        if not path.is_file() or path.stat().st_size > 400_000 or path.name in seen:
            continue
        if entity_spellings(path.read_text("utf-8", errors="replace")):
            seen.add(path.name)
            out.append(path)
    return out[:limit]


REFERENCING = debian_manuals_with_references()


@pytest.mark.skipif(not REFERENCING, reason="no HTML manuals with character references under /usr/share/doc")
@pytest.mark.parametrize("path", REFERENCING, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_debian_manuals_keep_their_character_references(path: Path):
    source = path.read_text("utf-8", errors="replace")
    plan = plan_document(source, "html")
    same = plan.rebuild(plan.sentences)
    original, rebuilt = parse(source)[0], parse(same)[0]
    assert skeleton(rebuilt) == skeleton(original)  # the same tree, and the same text once parsed
    assert [list(e.itertext()) for e in original.iter()] == [list(e.itertext()) for e in rebuilt.iter()]
    spellings = entity_spellings(source)
    for char, spelling in spellings.items():
        assert char not in same, spelling  # written as the page wrote it, never as the bare character
        assert same.count(spelling) >= source.count(spelling), spelling


@pytest.fixture(scope="module")
def stub(demo_model_dir: Path):
    config = ServerConfig(
        model=demo_model_dir,
        port=0,
        metrics_port=0,
        threads=1,
        warmup=False,
        max_length=40,
        max_request_bytes=64 * 1024,
        max_sentences_per_request=64,
    )
    with BackgroundServer(config) as running, grpc.insecure_channel(running.address) as channel:
        yield pb_grpc.TranslatorStub(channel)


def test_the_server_translates_html_sentences_and_rebuilds_the_page(stub, demo_engine):
    plan = plan_document(PAGE, "html")
    offline = [n[0].text for n in demo_engine.translate(plan.sentences, DecodingOptions(max_length=40))]
    response = stub.Translate(pb.TranslateRequest(texts=[PAGE], format="html"))
    assert response.translations[0].hypotheses[0].text == plan_document(PAGE, "html").rebuild(offline)


def test_elements_holding_only_invisible_characters_are_kept_not_translated(stub, demo_engine):
    page = "<p>Save the file.</p><p>&#8203;</p><p>\ufeff</p><div>\u200d <b>\u2060</b></div><p>Open it.</p>"
    plan = plan_document(page, "html")
    assert plan.sentences == ["Save the file.", "Open it."]
    offline = [n[0].text for n in demo_engine.translate(plan.sentences, DecodingOptions(max_length=40))]
    response = stub.Translate(pb.TranslateRequest(texts=[page], format="html"))
    want = f"<p>{offline[0]}</p><p>&#8203;</p><p>\ufeff</p><div>\u200d <b>\u2060</b></div><p>{offline[1]}</p>"
    assert response.translations[0].hypotheses[0].text == want


def test_a_message_over_max_message_bytes_is_refused_before_it_is_read(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.Translate(pb.TranslateRequest(texts=["<p>" + "x" * (5 * 1024 * 1024) + "</p>"], format="html"))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.Translate(pb.TranslateRequest(texts=["<p>Hello.</p>"], format="html")).translations


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("<div>" * 600 + "x", "nested more than 512"),
        ("<p>Hello.</p>" * 70, "max_sentences_per_request"),
        ("<p>" + "é" * 40000 + "</p>", "max_request_bytes"),
        ("\x89PNG\r\n\x1a\n\x00\x00", "control character"),
    ],
    ids=["deep", "sentences", "bytes", "binary"],
)
def test_bad_html_gets_invalid_argument_and_the_server_keeps_serving(stub, text, fragment):
    with pytest.raises(grpc.RpcError) as error:
        stub.Translate(pb.TranslateRequest(texts=[text], format="html"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in error.value.details()
    assert stub.Translate(pb.TranslateRequest(texts=["<p>Hello.</p>"], format="html")).translations


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/!-=\"'&;# abpdivlscrtx.\n")), max_size=120))
def test_any_markup_soup_is_recovered_and_rebuilds_stably(soup: str):
    try:
        plan = plan_document(soup, "html")
    except DocumentError:  # only the nesting limit may refuse a page
        return
    out = plan.rebuild(plan.sentences)
    again = plan_document(out, "html")
    assert again.sentences == plan.sentences  # no text lost or duplicated by a round trip
    assert again.rebuild(again.sentences) == out  # and the serialized page is a fixed point


def as_a_browser_parses(text: str) -> ElementTree.Element:
    """The page as a browser builds it (html5lib's document parse), whatever our full/fragment decision."""
    builder = html5lib.getTreeBuilder("etree", fullTree=True)
    return html5lib.HTMLParser(tree=builder, namespaceHTMLElements=False).parse(text)


XHTML = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>The manual</title></head>
<body><h1>The manual</h1><p>The package is installed.</p></body></html>"""


@pytest.mark.parametrize(
    "page",
    [XHTML, "<!-- Generated by Doxygen -->\n" + PAGE, "<head><title>The manual</title></head><body><p>Hi.</p></body>"],
    ids=["xml declaration", "comment first", "head first"],
)
def test_a_page_after_an_xml_declaration_or_comment_is_a_whole_document(page: str):
    """XHTML pages (Debian's DocBook manuals) start with <?xml ...?>, generated pages with a comment, and <html> is
    optional: all were parsed as fragments, which drops the doctype, <html>, <head> and <body> tags (the
    <title> ended up as a bare element at the top of the output)."""
    sentences, out = marked(page)
    assert "<head>" in out and "<body>" in out and out.index("<title>") > out.index("<head>")
    assert skeleton(as_a_browser_parses(out)) == skeleton(as_a_browser_parses(page))
    assert sorted(int(m) for m in MARK.findall(out)) == list(range(len(sentences)))


@pytest.mark.parametrize(
    "fragment",
    [
        "<tr><td>The package</td><td>is installed</td></tr>",
        "<td>The server</td><th>is running</th>",
        "<tbody><tr><td>Hi.</td></tr></tbody>",
    ],
)
def test_a_fragment_of_table_rows_keeps_its_rows_and_cells(fragment: str):
    """A fragment was parsed in a <div>, where the parser drops <tr>, <td> and <th> (keeping only their text):
    a CMS's table rows came back as bare text. Now it is parsed in the context its first element needs."""
    sentences, out = marked(fragment)
    assert re.sub(r"§\d+§", "", out) == re.sub(r">[^<]+<", "><", fragment)
    assert len(sentences) == fragment.count("</t") - fragment.count("</tbody") - fragment.count("</tr")


def test_the_server_keeps_the_head_of_an_xhtml_page(stub):
    response = stub.Translate(pb.TranslateRequest(texts=[XHTML], format="html"))
    out = response.translations[0].hypotheses[0].text
    assert skeleton(as_a_browser_parses(out)) == skeleton(as_a_browser_parses(XHTML))
    assert "<head><title>" in out and "The package is installed." not in out
