"""Cutting a sentence that is longer than the model's positions into pieces that fit, instead of refusing it.

Cuts are tried coarsest first: after clause punctuation, then between words, then, for a run without spaces that
is longer than the limit (a URL, a hash, a clause of Chinese or Japanese), between characters. Clause punctuation
is ASCII/Latin (``, ; : ) — –``) followed by a space, or full-width/CJK (``，、；：）」』】》。！？`` and the like)
with or without a space, since Chinese and Japanese put none after it: without those, a Chinese sentence was cut
by halving in the middle of a word. Pieces are packed greedily so that as few cuts as possible are made. A cut
between characters is made only between grapheme clusters (the ``regex`` module's ``\\X``, Unicode's extended
grapheme clusters), so a base letter keeps its combining marks (Thai ``ที่``, Devanagari ``कि``) and an emoji
sequence stays whole.

The translations of the pieces are joined by ``piece_join``: the text's own whitespace between them where the
target language writes spaces, a space where the text had none because its language writes none (a Chinese
sentence cut after ``，`` is two English phrases, not ``...goodand...``), nothing inside one word cut in two, and
nothing between pieces in a target language that writes no spaces (line breaks are kept).
"""

from __future__ import annotations

from collections.abc import Callable

import regex

from nmtserve.server.documents.languages import writes_spaces
from nmtserve.server.documents.segment import Span

CLAUSE_ENDS = frozenset(",;:)—–")  # a cut after one needs whitespace after it
# Full-width and CJK clause and sentence punctuation (closing brackets and quotes included): a cut may follow one
# directly. A run of them (``。」``) is cut after its last mark.
FULL_WIDTH_CLAUSE_ENDS = frozenset("，、；：）」』】〕〗〙〛〉》。！？｡､＞］｝")
TokenCounter = Callable[[str], int]
GRAPHEME = regex.compile(r"\X")


def _cut_points(text: str, clause: bool) -> list[int]:
    """Offsets where a piece may end: whitespace starts there (the separator after the piece), or, for clause
    cuts, a full-width clause mark ends there and something other than whitespace or another such mark follows."""
    points = []
    for i in range(1, len(text)):
        before, here = text[i - 1], text[i]
        if here.isspace():
            if not before.isspace() and (not clause or before in CLAUSE_ENDS or before in FULL_WIDTH_CLAUSE_ENDS):
                points.append(i)
        elif clause and before in FULL_WIDTH_CLAUSE_ENDS and here not in FULL_WIDTH_CLAUSE_ENDS:
            points.append(i)
    return points


def _pack(text: str, span: Span, cuts: list[int], count: TokenCounter, limit: int) -> list[Span]:
    """Greedy packing of ``span`` into pieces ending at ``cuts``; a piece between two cuts may still be too long.
    The next piece starts after the whitespace at the cut (at the cut itself after a full-width mark)."""
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
    """Halve until each piece fits, only ever between grapheme clusters: for a run without spaces."""
    starts = [match.start() for match in GRAPHEME.finditer(text, span.start, span.end)]
    return _halve(text, [*starts, span.end], count, limit)


def _halve(text: str, bounds: list[int], count: TokenCounter, limit: int) -> list[Span]:
    """``bounds``: the grapheme boundaries of one span, its start and end included."""
    start, end = bounds[0], bounds[-1]
    if len(bounds) <= 2 or count(text[start:end]) <= limit:
        return [Span(start, end)]  # fits, or one grapheme cluster: ``encode_documents`` truncates what is left
    middle = min(range(1, len(bounds) - 1), key=lambda k: abs(2 * bounds[k] - start - end))
    return _halve(text, bounds[: middle + 1], count, limit) + _halve(text, bounds[middle:], count, limit)


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


def piece_join(gap: str, source: str, target: str) -> str:
    """What goes between the translations of two pieces of one sentence, given ``gap``, the text between the
    pieces in the source, and the source and target languages (any spelling of their codes).

    - A gap with a line break is the client's layout: kept as it is.
    - A target language that writes spaces (English, German, Korean): the gap; where there is none, a space if
      the source writes no spaces (a Chinese clause cut after ``，`` or between two characters: two phrases of
      the translation) and nothing if it does (one word, a URL or a hash, cut in two).
    - A target language that writes no spaces (Chinese, Japanese, Thai): nothing, so that an English sentence cut
      after ``, `` does not leave a space between two Chinese clauses.
    """
    if "\n" in gap:
        return gap
    if not writes_spaces(target):
        return ""
    if gap or writes_spaces(source):
        return gap
    return " "


def join_pieces(text: str, pieces: list[Span], translations: list[str], source: str, target: str) -> str:
    """The translation of ``text`` from its pieces' (``split_to_fit``'s spans) translations, in order: the text
    before the first piece and after the last kept, the pieces joined by ``piece_join``."""
    if not pieces:
        return text
    out = [text[: pieces[0].start]]
    for k, (piece, translated) in enumerate(zip(pieces, translations, strict=True)):
        if k:
            out.append(piece_join(text[pieces[k - 1].end : piece.start], source, target))
        out.append(translated)
    out.append(text[pieces[-1].end :])
    return "".join(out)
