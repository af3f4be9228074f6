"""Cutting a sentence that is longer than the model's positions into pieces that fit, instead of refusing it.

Cuts are tried coarsest first: after clause punctuation (``, ; : ) —`` followed by a space), then between
words, then, for one "word" longer than the limit (a URL, a hash), between characters. Pieces are packed
greedily so that as few cuts as possible are made, and the text between pieces is kept exactly, so that the
translation of the sentence is its pieces' translations joined by the original separators.
"""

from __future__ import annotations

from collections.abc import Callable

from nmtserve.server.documents.segment import Span

CLAUSE_ENDS = frozenset(",;:)—–")
TokenCounter = Callable[[str], int]


def _cut_points(text: str, clause: bool) -> list[int]:
    """Offsets where a piece may end (the separator after it is whitespace starting there)."""
    points = []
    for i in range(1, len(text)):
        if text[i].isspace() and not text[i - 1].isspace() and (not clause or text[i - 1] in CLAUSE_ENDS):
            points.append(i)
    return points


def _pack(text: str, span: Span, cuts: list[int], count: TokenCounter, limit: int) -> list[Span]:
    """Greedy packing of ``span`` into pieces ending at ``cuts``; a piece between two cuts may still be too long."""
    pieces: list[Span] = []
    start, fits = span.start, False
    last = span.start
    for cut in [c for c in cuts if span.start < c < span.end] + [span.end]:
        if count(text[start:cut]) <= limit:
            fits, last = True, cut
            continue
        if fits:  # close the piece at the last cut that fitted, then look at this cut again
            pieces.append(Span(start, last))
            start, fits = _skip_space(text, last), False
            if count(text[start:cut]) <= limit:
                fits, last = True, cut
                continue
        pieces.append(Span(start, cut))  # too long even alone: the next, finer pass cuts it
        start, fits = _skip_space(text, cut), False
    if start < span.end:
        pieces.append(Span(start, span.end))
    return pieces


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _by_characters(text: str, span: Span, count: TokenCounter, limit: int) -> list[Span]:
    """Halve until each piece fits: for a run without spaces."""
    if span.end - span.start <= 1 or count(text[span.start : span.end]) <= limit:
        return [span]
    middle = (span.start + span.end) // 2
    return _by_characters(text, Span(span.start, middle), count, limit) + _by_characters(
        text, Span(middle, span.end), count, limit
    )


def split_to_fit(text: str, count: TokenCounter, limit: int) -> list[Span]:
    """Spans of ``text`` (itself trimmed) that each have at most ``limit`` tokens, in order, covering all its words."""
    lead = len(text) - len(text.lstrip())
    whole = Span(lead, lead + len(text.strip()))
    if whole.end <= whole.start:
        return []
    if count(text[whole.start : whole.end]) <= limit:
        return [whole]
    out: list[Span] = []
    for clause in _pack(text, whole, _cut_points(text, clause=True), count, limit):
        if count(text[clause.start : clause.end]) <= limit:
            out.append(clause)
            continue
        for words in _pack(text, clause, _cut_points(text, clause=False), count, limit):
            if count(text[words.start : words.end]) <= limit:
                out.append(words)
            else:
                out.extend(_by_characters(text, words, count, limit))
    return out
