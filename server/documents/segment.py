"""Sentence segmentation that gives back the text between sentences exactly as it was sent.

sentencex (Wikimedia's rule-based segmenter, with abbreviation lists for many languages and fallbacks for
others) was chosen over pysbd by measuring both on 1275 multi-sentence paragraphs of Debian's HTML manuals
(``bench/segmenters.py``; figures and the reasoning in docs/benchmarks.md): fewer likely false splits (126 vs
169), as few likely missed ones (10 vs 9), about 200 times faster (0.01 vs 2.1 ms a paragraph), and its pieces
always rebuild the text. Whatever a segmenter returns, the spans are re-anchored on the original text, so the
whitespace and newlines between sentences are never the segmenter's: they are the client's, byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sentencex

from nmtserve.server.documents.languages import segmenter_language

DEFAULT_LANGUAGE = "en"


@dataclass(frozen=True)
class Span:
    """A sentence as offsets into the text it came from: ``text[start:end]`` has no surrounding whitespace."""

    start: int
    end: int


def sentence_spans(text: str, language: str = DEFAULT_LANGUAGE) -> list[Span]:
    """The sentences of ``text``, in order, as spans without leading or trailing whitespace.

    A line without a letter (a blank line, an underline, a separator) always ends a sentence, whatever the
    segmenter says. ``language`` is the source language as the model or the request names it (``de``,
    ``deu_Latn``, ``de_DE``): ``segmenter_language`` turns it into the code whose rules sentencex applies.
    """
    spans: list[Span] = []
    offset = 0
    for piece in sentencex.segment(segmenter_language(language, DEFAULT_LANGUAGE), text) if text.strip() else []:
        if not piece.strip():  # whitespace between sentences: kept from the text itself
            continue
        found = text.find(piece.strip(), offset)
        if found < 0:  # the segmenter changed the text; fall back to what is left as one sentence
            break
        spans.extend(_split_blank_lines(text, found, found + len(piece.strip())))
        offset = found + len(piece.strip())
    rest = text[offset:]
    if rest.strip():  # only when the segmenter's pieces could not be found in the text
        start = offset + len(rest) - len(rest.lstrip())
        spans.extend(_split_blank_lines(text, start, start + len(rest.strip())))
    return spans


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)?")


def _split_blank_lines(text: str, start: int, end: int) -> list[Span]:
    """[start, end) cut at lines without a letter, each part trimmed: a blank line (one of spaces or tabs too, as
    CommonMark defines one, after CR, LF or CRLF alike) and a line such as ``=======`` or ``* * *`` under or
    between paragraphs, which would otherwise join the sentence before it and be "translated" with it."""
    out: list[Span] = []
    first = last = -1  # the current run of lines with words
    for line in _LINE.finditer(text, start, end):
        if not line.group():
            break
        if any(char.isalpha() for char in line.group()):
            first = line.start() if first < 0 else first
            last = line.end()
        elif first >= 0:
            out.append(_trimmed(text, first, last))
            first = -1
    if first >= 0:
        out.append(_trimmed(text, first, last))
    return [span for span in out if span.end > span.start]


def _trimmed(text: str, start: int, end: int) -> Span:
    part = text[start:end]
    lead = len(part) - len(part.lstrip())
    return Span(start + lead, start + lead + len(part.strip()))


def reassemble(text: str, spans: list[Span], translations: list[str]) -> str:
    """``text`` with each span replaced by its translation; everything between spans is kept as is."""
    out, position = [], 0
    for span, translated in zip(spans, translations, strict=True):
        out.append(text[position : span.start])
        out.append(translated)
        position = span.end
    out.append(text[position:])
    return "".join(out)
