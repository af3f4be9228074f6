"""Markdown documents: the source is kept byte for byte except the prose, which is translated in place.

markdown-it-py (CommonMark, with tables) parses the document; only the text of its inline tokens is translated.
Code spans and blocks, raw HTML, link and image targets, autolinks, reference labels and emphasis markers are
left as written, and a YAML front matter block (``---`` ... ``---`` on the first lines) is not parsed at all.

Inline tokens carry line numbers but no columns, so each inline token's children are walked over the token's
own content (its raw source, line breaks included, without the block's prefixes): with markdown-it's
``text_join`` rule off, every text token is written in the source exactly as it is in the token, and escapes
and entities are ``text_special`` tokens that know how they were written; link targets are skipped with
markdown-it's own destination and title parsers. Each content line is then found in its source line. Text that
cannot be placed exactly is left untranslated rather than guessed at: searching for it further on once found a
link's text inside the link's URL and translated the URL.
"""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.helpers import parseLinkDestination, parseLinkTitle
from markdown_it.token import Token

from nmtserve.server.documents.plan import Plan, plan_text, rebuild_each, sentences_of
from nmtserve.server.documents.segment import Span, reassemble

FRONT_MATTER_ENDS = ("---", "...")
# CommonMark's line endings, the only ones markdown-it counts in token.map (str.splitlines also breaks at form
# feeds, U+2028 and others, which would shift every later line number)
_LINE_END = re.compile(r"\r\n|\r|\n")


def _lines(text: str) -> list[str]:
    """``text`` cut after each CommonMark line ending, endings kept."""
    lines, start = [], 0
    for end in _LINE_END.finditer(text):
        lines.append(text[start : end.end()])
        start = end.end()
    if start < len(text):
        lines.append(text[start:])
    return lines


def _front_matter_lines(lines: list[str]) -> int:
    """How many lines a leading YAML front matter block takes (0 when there is none)."""
    if not lines or lines[0].rstrip("\r\n") != "---":
        return 0
    for number, line in enumerate(lines[1:], start=1):
        if line.rstrip("\r\n") in FRONT_MATTER_ENDS:
            return number + 1
    return 0


def _skip_spaces(content: str, cursor: int) -> int:
    while cursor < len(content) and content[cursor] in " \t\n":
        cursor += 1
    return cursor


def _after_target(content: str, cursor: int) -> int:
    """Offset after a link's ``(destination "title")`` or ``[label]`` starting at ``cursor`` (as markdown-it's
    link rule reads them), or ``cursor`` when neither follows (a shortcut reference)."""
    if content.startswith("[", cursor):
        end = content.find("]", cursor + 1)
        return cursor if end < 0 else end + 1
    if not content.startswith("(", cursor):
        return cursor
    position = _skip_spaces(content, cursor + 1)
    destination = parseLinkDestination(content, position, len(content))
    if destination.ok:
        after = _skip_spaces(content, destination.pos)
        title = parseLinkTitle(content, after, len(content))
        if after > destination.pos and title.ok:
            after = title.pos
        position = _skip_spaces(content, after)
    return position + 1 if content.startswith(")", position) else cursor


def _is_label(content: str, cursor: int) -> bool:
    """Whether the link whose text ends at ``cursor`` is a collapsed (``[text][]``) or shortcut (``[text]``)
    reference: then its text names the link definition and translating it would break the link."""
    return content.startswith("][]", cursor) or (
        content.startswith("]", cursor) and not content.startswith(("](", "]["), cursor)
    )


def _at(content: str, needle: str, cursor: int) -> int:
    """Where ``needle`` starts if only spaces and line breaks come before it from ``cursor``; else -1."""
    if not needle:
        return -1
    if content.startswith(needle, cursor):
        return cursor
    position = _skip_spaces(content, cursor)
    return position if content.startswith(needle, position) else -1


def _code_end(content: str, start: int, fence: str) -> int:
    """Offset after the backtick run of exactly ``fence`` that closes the code span opened at ``start``."""
    position = start + len(fence)
    while (found := content.find(fence, position)) >= 0:
        end = found + len(fence)
        if content[found - 1] != "`" and not content.startswith("`", end):
            return end
        position = end
        while content.startswith("`", position):
            position += 1
    return -1


def content_gaps(content: str, children: list[Token]) -> list[Span]:
    """Spans (offsets in ``content``, the inline token's raw source) of the translatable text of ``children``.

    A run of text children (text, escapes, entities) is one span, as written: ``x86\\_64`` reaches the model
    with its backslash. The walk stops, keeping what it found, where a child is not where the source has it."""
    gaps: list[Span] = []
    cursor, in_autolink, link_gaps, in_run = 0, False, 0, False
    for child in children:
        kind = child.type
        was_run, in_run = in_run, False
        if kind in ("text", "text_special"):
            raw = child.markup if kind == "text_special" else child.content
            in_run = was_run
            if in_autolink or not raw:  # an autolink's text is its URL, kept (and may be spelled otherwise there)
                continue
            position = _at(content, raw, cursor)
            if position < 0:
                break
            if was_run and gaps and gaps[-1].end == position:
                gaps[-1] = Span(gaps[-1].start, position + len(raw))
            else:
                gaps.append(Span(position, position + len(raw)))
            cursor, in_run = position + len(raw), True
        elif kind in ("softbreak", "hardbreak"):
            position = content.find("\n", cursor)
            if position < 0 or content[cursor:position].strip(" \t\\"):
                break
            cursor = position + 1
        elif kind == "link_open":
            in_autolink = child.markup == "autolink"
            position = _at(content, "<" if in_autolink else "[", cursor)
            if position < 0:
                break
            link_gaps, cursor = len(gaps), position + 1
        elif kind == "link_close":
            position = content.find(">", cursor) if in_autolink else _at(content, "]", cursor)
            if position < 0:
                break
            if not in_autolink and _is_label(content, position):  # [text][] and [text]: the definition's name
                del gaps[link_gaps:]
            cursor = position + 1 if in_autolink else _after_target(content, position + 1)
            in_autolink = False
        elif kind == "image":
            position = _at(content, "![" + child.content + "]", cursor)  # an image's content is its raw alt text
            if position < 0:
                break
            close = position + 2 + len(child.content)
            if not _is_label(content, close):  # ![alt] and ![alt][] name their definition by the alt text
                gaps.append(Span(position + 2, close))
            cursor = _after_target(content, close + 1)
        elif kind == "code_inline":
            position = _at(content, child.markup, cursor)
            end = -1 if position < 0 else _code_end(content, position, child.markup)
            if end < 0:
                break
            cursor = end
        elif kind == "html_inline" or child.markup:  # raw HTML; emphasis and strong markers
            raw = child.content if kind == "html_inline" else child.markup
            position = _at(content, raw, cursor)
            if position < 0:
                break
            cursor = position + len(raw)
    return gaps


def markdown_spans(text: str) -> list[Span]:
    """Offsets in ``text`` of its translatable prose, in order."""
    lines = _lines(text)
    skip = _front_matter_lines(lines)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    parser = MarkdownIt("commonmark").enable("table").disable("text_join")
    cursors: dict[int, int] = {}  # per source line: where the next inline token's text may start (table cells)
    spans: list[Span] = []
    for token in parser.parse("".join(lines[skip:])):
        if token.type != "inline" or token.map is None or not token.children:
            continue
        gaps = content_gaps(token.content, token.children)
        number, last = token.map[0] + skip, token.map[1] + skip
        line_start, next_gap = 0, 0  # offset in the content of the current content line; the first gap after it
        for content_line in token.content.split("\n"):
            line_end = line_start + len(content_line)
            needle = content_line.strip()
            lead = line_start + len(content_line) - len(content_line.lstrip())
            while number < last and needle and lines[number].find(needle, cursors.get(number, 0)) < 0:
                number += 1
            if number >= last:
                break
            found = lines[number].find(needle, cursors.get(number, 0))
            cursors[number] = found + len(needle)
            while next_gap < len(gaps) and gaps[next_gap].start <= line_end:  # gaps are in order, within a line
                gap = gaps[next_gap]
                next_gap += 1
                start = offsets[number] + found + gap.start - lead
                span = Span(start, start + gap.end - gap.start)
                if gap.start >= line_start and text[span.start : span.end] == token.content[gap.start : gap.end]:
                    spans.append(span)
            number += 1
            line_start = line_end + 1
    return [s for s in spans if text[s.start : s.end].strip()]


def plan_markdown(text: str, language: str) -> Plan:
    spans = markdown_spans(text)
    plans = [plan_text(text[s.start : s.end], language) for s in spans]
    return Plan(sentences_of(plans), lambda translations: reassemble(text, spans, rebuild_each(plans, translations)))
