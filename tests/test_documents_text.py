"""Document mode for plain text: segmentation that keeps every byte between sentences, splitting of sentences
too long for the model, and the gRPC path (each sentence its own work item, reassembled in order), against a live
server on the demo model. The offline engine translating the same sentences is the referee; nothing is mocked.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig
from nmtserve.server.documents import plan_document
from nmtserve.server.documents.plan import rewrap
from nmtserve.server.documents.segment import sentence_spans
from nmtserve.server.documents.split import split_to_fit

PARAGRAPH = (
    "  The package contains the documentation.  Open the file menu!\n\n"
    "This program prints the version number, e.g. 1.2.3, of the installed kernel. \tHello.\n"
)


def test_sentences_and_the_text_between_them_come_back_exactly():
    plan = plan_document(PARAGRAPH, "text")
    assert plan.sentences == [
        "The package contains the documentation.",
        "Open the file menu!",
        "This program prints the version number, e.g. 1.2.3, of the installed kernel.",
        "Hello.",
    ]
    marked = plan.rebuild([f"<{i}>" for i in range(len(plan.sentences))])
    assert marked == "  <0>  <1>\n\n<2> \t<3>\n"
    assert plan.rebuild(plan.sentences) == PARAGRAPH


def test_a_blank_line_always_ends_a_sentence():
    assert [s.end - s.start for s in sentence_spans("no full stop here\n\nnor here")] == [17, 8]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab .?!\n\t,;:'\"1é")), max_size=80))
def test_any_text_rebuilds_from_its_sentences(text: str):
    plan = plan_document(text, "text")
    assert plan.rebuild(plan.sentences) == text
    assert all(s == s.strip() and s for s in plan.sentences)


def words(text: str) -> int:
    return len(text.split())


def test_long_sentences_are_cut_at_clauses_then_words_then_characters():
    text = "one two three, four five six; seven eight nine ten eleven twelve thirteen, " + "x" * 40
    count = lambda piece: words(piece) if " " in piece.strip() else -(-len(piece) // 10)  # noqa: E731
    pieces = [text[s.start : s.end] for s in split_to_fit(text, count, 3)]
    assert pieces[:2] == ["one two three,", "four five six;"]  # clause boundaries first
    assert pieces[2:5] == ["seven eight nine", "ten eleven twelve", "thirteen,"]  # then words
    assert "".join(pieces[5:]) == "x" * 40 and all(count(p) <= 3 for p in pieces)  # then characters
    assert "".join(text.split()) == "".join(pieces).replace(" ", "")


LIMITS = dict(max_texts_per_request=4, max_input_tokens=24, max_request_bytes=2000, max_sentences_per_request=12)


@pytest.fixture(scope="module")
def server(demo_model_dir: Path):
    config = ServerConfig(
        model=demo_model_dir, port=0, metrics_port=0, threads=1, warmup=False, max_length=40, **LIMITS
    )
    with BackgroundServer(config) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: BackgroundServer):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.TranslatorStub(channel)


def offline(engine: Engine, texts: list[str]) -> list[str]:
    return [nbest[0].text for nbest in engine.translate(texts, DecodingOptions(max_length=40))]


def test_a_document_is_translated_sentence_by_sentence_and_reassembled(stub, demo_engine):
    plan = plan_document(PARAGRAPH, "text")
    expected = plan.rebuild(offline(demo_engine, plan.sentences))
    response = stub.Translate(pb.TranslateRequest(texts=[PARAGRAPH, "   ", "Hello."], format="text"))
    assert [t.hypotheses[0].text for t in response.translations] == [
        expected,
        "   ",
        offline(demo_engine, ["Hello."])[0],
    ]
    assert len(response.translations[0].hypotheses) == 1 and response.translations[0].hypotheses[0].score < 0


def test_a_text_longer_than_the_model_positions_is_split_not_refused(stub, demo_engine):
    long = ", ".join(["open the file menu"] * 12) + "."  # far over max_input_tokens=24 in one sentence
    with pytest.raises(grpc.RpcError) as refused:  # v1 (no format): still refused, as before
        stub.Translate(pb.TranslateRequest(texts=[long]))
    assert "max_input_tokens" in refused.value.details()
    translated = stub.Translate(pb.TranslateRequest(texts=[long], format="text")).translations[0].hypotheses[0].text
    tokenizer = demo_engine.tokenizer
    pieces = [long[s.start : s.end] for s in split_to_fit(long, lambda p: len(tokenizer.encode(p)), 24)]
    assert len(pieces) > 1 and all(len(tokenizer.encode(p)) <= 24 for p in pieces)
    assert translated == " ".join(offline(demo_engine, pieces))


@pytest.mark.parametrize(
    ("request_", "fragments"),
    [
        (pb.TranslateRequest(texts=["Hello."], format="docx"), ["format 'docx'", "text"]),
        (
            pb.TranslateRequest(texts=["Hello. " * 300], format="text"),
            ["2100 bytes", "limit is 2000", "max_request_bytes"],
        ),
        (
            pb.TranslateRequest(texts=["Hello. " * 13], format="text"),
            ["13 sentences", "limit is 12", "max_sentences_per"],
        ),
        (pb.TranslateRequest(texts=["a\x00b"], format="text"), ["texts[0]", "U+0000"]),
        (pb.TranslateRequest(texts=[], format="text"), ["texts is empty"]),
    ],
    ids=["unknown format", "bytes", "sentences", "control", "empty"],
)
def test_document_limits_are_named(stub, request_, fragments):
    with pytest.raises(grpc.RpcError) as error:
        stub.Translate(request_)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert all(fragment in error.value.details() for fragment in fragments), error.value.details()
    assert stub.Translate(pb.TranslateRequest(texts=["Hello."], format="text")).translations  # still serving


def test_the_stream_sends_each_finished_sentence_prefix(stub, demo_engine):
    request = pb.TranslateRequest(texts=[PARAGRAPH], format="text", stream_partial=True, request_id="doc")
    responses = list(stub.TranslateStream(iter([request])))
    partials = [r.partials[0].text for r in responses if r.partials]
    final = responses[-1].translations[0].hypotheses[0].text
    assert partials and all(final.startswith(p) for p in partials)
    assert all(b.startswith(a) and len(b) > len(a) for a, b in itertools.pairwise(partials))


def test_model_info_names_the_document_limits(stub):
    limits = stub.GetModelInfo(pb.GetModelInfoRequest()).limits
    assert (limits.max_request_bytes, limits.max_sentences_per_request) == (2000, 12)


def test_each_sentence_is_its_own_work_item_batched_with_the_others(server, stub, metrics_of):
    text = " ".join(["Open the file menu.", "Hello.", "The package contains the documentation."] * 4)
    key_sum = ("nmtserve_admitted_batch_size_sum", ())
    key_count = ("nmtserve_admitted_batch_size_count", ())
    before = metrics_of(server.metrics_url)
    stub.Translate(pb.TranslateRequest(texts=[text], format="text"))
    after = metrics_of(server.metrics_url)
    admitted = after[key_sum] - before[key_sum]
    batches = after[key_count] - before[key_count]
    assert admitted == 12  # twelve sentences entered the engine, not one text
    assert batches < admitted  # and they were encoded together, several to a batch


def test_pieces_without_words_are_kept_not_sent_to_the_model(stub, demo_engine):
    """A separator line, a lone bracket or number has nothing to translate, and the model invents words for it
    (the demo model answers "(" with "(Sprachen)" and "* * *" with "* * * * * *"): such pieces stay as written."""
    text = "The package is installed.\n\n* * *\n\n----------\n\n42\n\nThe server is running.\n"
    plan = plan_document(text, "text")
    assert plan.sentences == ["The package is installed.", "The server is running."]
    out = stub.Translate(pb.TranslateRequest(texts=[text], format="text")).translations[0].hypotheses[0].text
    assert out == plan.rebuild(offline(demo_engine, plan.sentences))
    assert out.split("\n")[2:7] == ["* * *", "", "----------", "", "42"]
    html = "<p>See the <a href='m'>manual</a> (<code>ls</code>).</p>"
    assert plan_document(html, "html").sentences == ["See the", "manual"]
    out = stub.Translate(pb.TranslateRequest(texts=[html], format="html")).translations[0].hypotheses[0].text
    assert out.endswith("</a> (<code>ls</code>).</p>")


@pytest.mark.parametrize("blank", ["\n   \n", "\n\t\n", "\r\r", "\r\n \r\n"])
def test_a_line_of_spaces_is_a_blank_line(blank: str):
    """Editors keep indentation on "empty" lines; CommonMark calls a line of spaces or tabs blank. Only "\\n\\n"
    ended a sentence, so the two paragraphs were one model input and the blank line was lost."""
    text = f"The package is installed{blank}The server is running"
    plan = plan_document(text, "text")
    assert plan.sentences == ["The package is installed", "The server is running"]
    assert plan.rebuild(["<0>", "<1>"]) == f"<0>{blank}<1>"


def test_an_underline_or_separator_line_ends_a_sentence():
    """A plain-text heading's underline joined the heading's sentence ("Results\\n=======" went to the model as
    one input, answered "Ergebnis -- ----------"); a line without a letter now ends a sentence and is kept."""
    text = "Results\n=======\nThe package is installed\n* * *\nThe server is running.\n"
    plan = plan_document(text, "text")
    assert plan.sentences == ["Results", "The package is installed", "The server is running."]
    assert plan.rebuild(["<0>", "<1>", "<2>"]) == "<0>\n=======\n<1>\n* * *\n<2>\n"


def test_line_breaks_inside_a_sentence_come_back(stub, demo_engine):
    """A sentence over two lines is translated whole; the model answers on one line, and the line break (with
    the next line's indentation) was lost: now it is put back at the space nearest the same fraction."""
    text = "This program prints the version number of the\n    installed kernel and exits.\nName:    nmtserve\n"
    plan = plan_document(text, "text")
    assert plan.sentences == [
        "This program prints the version number of the\n    installed kernel and exits.",
        "Name:    nmtserve",
    ]
    out = stub.Translate(pb.TranslateRequest(texts=[text], format="text")).translations[0].hypotheses[0].text
    lines = out.split("\n")
    assert len(lines) == len(text.split("\n")) and lines[1].startswith("    ") and lines[1].strip()
    words = [w for line in offline(demo_engine, plan.sentences[:1]) for w in line.split()]
    assert " ".join(lines[0:2]).split() == words  # the model's words, in order, only the line break put back


def test_putting_back_many_line_breaks_takes_linear_time():
    """A 1 MiB text of unpunctuated lines is one sentence of 100,000 lines; its line breaks are put back one pass
    over the translation's spaces (a search of every space per line break would take hours)."""
    source = "\n".join(["the file"] * 100_000)
    started = time.monotonic()
    out = rewrap(source, " ".join(["die Datei"] * 100_000))
    assert out.split("\n") == ["die Datei"] * 100_000 and time.monotonic() - started < 10


def test_lines_of_a_list_or_under_a_heading_are_sentences_and_wrapped_prose_is_not():
    """Lines without final punctuation (a list, a heading, Key: value lines) went to the model as one input; a
    line now ends a sentence where the next is a list item, or starts with a capital after a line that was not
    filled to its paragraph's width (lines.py). Hard-wrapped prose keeps its sentences whole."""
    listing = "Install the package\nStart the server\nOpen the browser"
    assert plan_document(listing, "text").sentences == listing.split("\n")
    items = "Features:\n- fast start\n- Small footprint\n  and low memory\n\n"
    items += "License\nThe library is released under the MIT"
    assert plan_document(items, "text").sentences == [
        "Features:", "- fast start", "- Small footprint\n  and low memory", "License",
        "The library is released under the MIT",
    ]  # fmt: skip
    licence = Path("/usr/share/common-licenses/GPL-3").read_text()
    wrapped = [s for s in plan_document(licence, "text").sentences if "\n" in s]
    assert "The licenses for most software and other practical works are designed\nto take away your freedom" in (
        "\n".join(wrapped)
    )
    assert "GNU General Public License" in "".join(wrapped)  # capitalised words starting a filled line stay joined
    # German capitalises nouns: only list items end a sentence there; HTML and Markdown read a line break as a space
    german = "Installieren Sie das Paket\nServer starten\n- Browser"
    assert plan_document(german, "text", "de").sentences == ["Installieren Sie das Paket\nServer starten", "- Browser"]
    assert len(plan_document("<p>Install the package\nStart the server</p>", "html").sentences) == 1


def test_each_line_of_a_list_is_translated_alone(stub, demo_engine):
    text = "Settings\nSave the file\nOpen the documentation\n"
    out = stub.Translate(pb.TranslateRequest(texts=[text], format="text")).translations[0].hypotheses[0].text
    assert out == "\n".join(offline(demo_engine, text.split("\n")[:3])) + "\n"
