"""Line breaks that end a sentence of plain text although no punctuation says so.

sentencex ends sentences at punctuation and reads a line break as a space. Plain text often holds one sentence
per line without a final stop: lists, headings over their paragraph, ``Key: value`` lines, UI strings. Those
went to the model as one input, which merged them, and their line breaks were then put back at guessed places.
Hard-wrapped prose (licences, READMEs, e-mail) must stay joined, or its sentences are translated in fragments.

A line break starts a new sentence when the next line is a list item (``- ``, ``* ``, ``• ``, ``1. ``, ``a) ``),
or when the next line starts with a capital letter and the line before was not filled: its paragraph had room
for the next line's first word on it, the test that reflowing tools use (a filled line ends where the next word
did not fit; ``FILL_SLACK`` allows for hand-wrapped text, and a paragraph narrower than ``MIN_FILL_WIDTH`` was
not wrapped at all). German capitalises every noun, so there only list
items count; scripts without case never meet the capital rule. On 352 READMEs and 5 licences of Debian's
``/usr/share/doc`` this added 229 sentence ends, nearly all at list items, headings and ``Key: value`` lines,
and 2 in the licences' hard-wrapped prose. Only the ``text`` format uses it: in HTML and Markdown a line break
inside a paragraph is a space, and a subtitle cue's lines are one sentence broken for the screen.
"""

from __future__ import annotations

import bisect
import re

from nmtserve.server.documents.languages import segmenter_language
from nmtserve.server.documents.segment import Span

LIST_ITEM = re.compile(r"(?:[-*+•‣◦–—]|\d{1,3}[.)]|\(\d{1,3}\)|\(?[a-zA-Z]\)|\(?[ivxIVX]{1,4}\))\s")
FILL_SLACK = 10  # characters short of the paragraph's widest line that still count as a filled line
MIN_FILL_WIDTH = 40  # a paragraph whose widest line is shorter was not wrapped to a width: none of its lines is filled
CONTINUES = frozenset(",;-–—([/&+")  # a line ending so goes on on the next line, capital or not
NOUNS_CAPITALISED = frozenset({"de", "lb"})
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)?")


class TextLines:
    """The lines of one text and the width of each line's paragraph (its run of non-blank lines), computed
    once, so that each sentence's line breaks are judged without rescanning its paragraph."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts: list[int] = []
        self.ends: list[int] = []  # without the line break
        for line in _LINE.finditer(text):
            if not line.group():
                break
            self.starts.append(line.start())
            self.ends.append(line.start() + len(line.group().rstrip("\r\n")))
        self.widths = [0] * len(self.starts)
        first = 0
        for number in range(len(self.starts) + 1):
            if number == len(self.starts) or not text[self.starts[number] : self.ends[number]].strip():
                width = max((self._length(k) for k in range(first, number)), default=0)
                self.widths[first:number] = [width] * (number - first)
                first = number + 1

    def _length(self, number: int) -> int:
        return len(self.text[self.starts[number] : self.ends[number]].rstrip())

    def starts_sentence(self, number: int, capitals: bool) -> bool:
        """Whether line ``number`` (not the first of its sentence) begins a new sentence."""
        line = self.text[self.starts[number] : self.ends[number]].lstrip(" \t")
        if LIST_ITEM.match(line):
            return True
        before = self.text[self.starts[number - 1] : self.ends[number - 1]].rstrip()
        if not capitals or not line[:1].isupper() or not before or before[-1] in CONTINUES:
            return False
        if before.count("(") > before.count(")"):
            return False
        width, word = self.widths[number - 1], line.split(maxsplit=1)[0]
        return width < MIN_FILL_WIDTH or len(before) + 1 + len(word) <= width - FILL_SLACK


def split_at_line_sentences(lines: TextLines, span: Span, language: str) -> list[Span]:
    """``span`` (one segmenter sentence of ``lines.text``) cut where a line begins a new sentence, parts trimmed."""
    capitals = segmenter_language(language) not in NOUNS_CAPITALISED
    first = bisect.bisect_right(lines.starts, span.start)  # the first line starting inside the span
    last = bisect.bisect_left(lines.starts, span.end)
    cuts = [lines.starts[n] for n in range(first, last) if lines.starts_sentence(n, capitals)]
    if not cuts:
        return [span]
    text, parts = lines.text, []
    for start, end in zip([span.start, *cuts], [*cuts, span.end], strict=True):
        part = text[start:end]
        lead = len(part) - len(part.lstrip())
        parts.append(Span(start + lead, start + lead + len(part.strip())))
    return [part for part in parts if part.end > part.start]
