"""Markdown documents: the source is kept byte for byte except the prose, which is translated in place.

markdown-it-py (CommonMark, with tables) parses the document; only the text of its inline tokens is translated.
Code spans and blocks, raw HTML, link and image targets, autolinks, reference labels and emphasis markers are
left as written, and a YAML front matter block (``---`` ... ``---`` on the first lines) is not parsed at all.
Inline tokens carry line numbers but no columns, so each piece of text is found in its source line, left to
right; a piece that cannot be found as written (one with backslash escapes or entities) is left untranslated
rather than guessed at.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markdown_it.token import Token

from nmtserve.server.documents.plan import Plan, plan_text
from nmtserve.server.documents.segment import Span, reassemble

FRONT_MATTER_ENDS = ("---", "...")


def _front_matter_lines(lines: list[str]) -> int:
    """How many lines a leading YAML front matter block takes (0 when there is none)."""
    if not lines or lines[0].rstrip("\r\n") != "---":
        return 0
    for number, line in enumerate(lines[1:], start=1):
        if line.rstrip("\r\n") in FRONT_MATTER_ENDS:
            return number + 1
    return 0


def _closing_paren(line: str, start: int) -> int:
    """Offset after the ``)`` that closes the ``(`` at ``start`` (nesting counted), or the line's end."""
    depth = 0
    for offset in range(start, len(line)):
        if line[offset] == "(":
            depth += 1
        elif line[offset] == ")":
            depth -= 1
            if depth == 0:
                return offset + 1
    return len(line)


def _after_link_text(line: str, cursor: int) -> int:
    """Skip a link's ``](target)``, ``][label]`` or ``]`` starting at ``cursor``."""
    if line.startswith("](", cursor):
        return _closing_paren(line, cursor + 1)
    if line.startswith("][", cursor):
        end = line.find("]", cursor + 2)
        return len(line) if end < 0 else end + 1
    return cursor + 1 if line.startswith("]", cursor) else cursor


def _is_label(line: str, cursor: int) -> bool:
    """Whether the link whose text ends at ``cursor`` is a collapsed (``[text][]``) or shortcut (``[text]``)
    reference: then its text names the link definition and translating it would break the link."""
    return (line.startswith("]", cursor) and not line.startswith(("](", "]["), cursor)) or line.startswith(
        "][]", cursor
    )


def _line_gaps(line: str, start: int, children: list[Token]) -> tuple[list[Span], int]:
    """Spans (offsets in ``line``) of the translatable text of ``children``, found from ``start``; and the end."""
    gaps: list[Span] = []
    cursor, in_autolink, link_gaps = start, False, 0
    for child in children:
        kind = child.type
        if kind == "text":
            position = line.find(child.content, cursor) if child.content else -1
            if position >= 0:
                if not in_autolink:
                    gaps.append(Span(position, position + len(child.content)))
                cursor = position + len(child.content)
        elif kind == "link_open":
            in_autolink = child.markup == "autolink"
            link_gaps = len(gaps)
            position = line.find("<" if in_autolink else "[", cursor)
            cursor = cursor if position < 0 else position + 1
        elif kind == "link_close":
            if in_autolink:
                position = line.find(">", cursor)
                cursor = cursor if position < 0 else position + 1
            else:
                if _is_label(line, cursor):  # [text][] and [text]: the text is the reference label, kept
                    del gaps[link_gaps:]
                cursor = _after_link_text(line, cursor)
            in_autolink = False
        elif kind == "image":
            position = line.find("![", cursor)
            if position < 0:
                continue
            alt = line.find(child.content, position + 2) if child.content else -1
            if alt == position + 2:
                gaps.append(Span(alt, alt + len(child.content)))
            cursor = _after_link_text(line, line.find("]", position + 2 + len(child.content)))
        elif kind == "code_inline":
            position = line.find(child.markup, cursor)
            if position >= 0:
                inner = line.find(child.content, position + len(child.markup))
                close = line.find(child.markup, max(inner + len(child.content), position + len(child.markup)))
                cursor = len(line) if close < 0 else close + len(child.markup)
        elif kind == "html_inline":
            position = line.find(child.content, cursor)
            cursor = cursor if position < 0 else position + len(child.content)
        elif child.markup:  # emphasis and strong markers, strikethrough
            position = line.find(child.markup, cursor)
            cursor = cursor if position < 0 else position + len(child.markup)
    return gaps, cursor


def _by_line(children: list[Token]) -> list[list[Token]]:
    lines: list[list[Token]] = [[]]
    for child in children:
        if child.type in ("softbreak", "hardbreak"):
            lines.append([])
        else:
            lines[-1].append(child)
    return lines


def markdown_spans(text: str) -> list[Span]:
    """Offsets in ``text`` of its translatable prose, in order."""
    lines = text.splitlines(keepends=True)
    skip = _front_matter_lines(lines)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    parser = MarkdownIt("commonmark").enable("table")
    cursors: dict[int, int] = {}  # per source line: where the next inline token's text may start (table cells)
    spans: list[Span] = []
    for token in parser.parse("".join(lines[skip:])):
        if token.type != "inline" or token.map is None or not token.children:
            continue
        number, last = token.map[0] + skip, token.map[1] + skip
        for content_line, children in zip(token.content.split("\n"), _by_line(token.children), strict=False):
            needle = content_line.strip()
            while number < last and needle and lines[number].find(needle, cursors.get(number, 0)) < 0:
                number += 1
            if number >= last:
                break
            line = lines[number]
            start = line.find(needle, cursors.get(number, 0)) if needle else cursors.get(number, 0)
            gaps, cursors[number] = _line_gaps(line, start, children)
            spans.extend(Span(offsets[number] + g.start, offsets[number] + g.end) for g in gaps)
            number += 1
    return [s for s in spans if text[s.start : s.end].strip()]


def plan_markdown(text: str, language: str) -> Plan:
    spans = markdown_spans(text)
    plans = [plan_text(text[s.start : s.end], language) for s in spans]

    def rebuild(translations: list[str]) -> str:
        pieces, position = [], 0
        for plan in plans:
            count = len(plan.sentences)
            pieces.append(plan.rebuild(translations[position : position + count]))
            position += count
        return reassemble(text, spans, pieces)

    return Plan([sentence for plan in plans for sentence in plan.sentences], rebuild)
