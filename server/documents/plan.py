"""A document as sentences to translate plus the recipe that puts their translations back in place."""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass

from nmtserve.server.documents.lines import TextLines, split_at_line_sentences
from nmtserve.server.documents.segment import DEFAULT_LANGUAGE, reassemble, sentence_spans


class DocumentError(ValueError):
    """The document cannot be translated in this format (the message says why, without quoting it)."""


@dataclass
class Plan:
    """``sentences`` in document order; ``rebuild(translations)`` gives the translated document."""

    sentences: list[str]
    rebuild: Callable[[list[str]], str]
    # the document up to the translated sentences given (the first n): for streaming; None where meaningless
    prefix: Callable[[list[str]], str] | None = None


def has_words(sentence: str) -> bool:
    """Whether ``sentence`` has a letter in it, i.e. anything to translate.

    Pieces of punctuation, numbers and symbols (``----``, ``* * *``, ``(``, ``[``, ``42``, ``...``) are kept as
    written: the model cannot translate them and invents words instead (the demo model answers ``(`` with
    ``(Sprachen)``, ``"`` with ``"Alle"`` and ``* * *`` with ``* * * * * *``)."""
    return any(char.isalpha() for char in sentence)


# a line break inside a sentence, with the spaces and indentation around it
_LINE_BREAK = re.compile(r"[ \t]*(?:\r\n|\r|\n)[ \t]*")


def rewrap(source: str, translation: str) -> str:
    """``translation`` with ``source``'s line breaks put back, each at the space nearest the same fraction of the
    text.

    A sentence may run over lines (a subtitle's two lines, a hard-wrapped paragraph); it is translated whole, and
    the model, which reads a line break as a space, answers on one line. Its line breaks (with the indentation
    after them) are put back so that a cue keeps its lines and a file its line count. A translation with line
    breaks of its own, or without spaces enough, keeps what it has."""
    breaks = list(_LINE_BREAK.finditer(source))
    if not breaks or "\n" in translation or "\r" in translation:
        return translation
    length = max(len(source) - sum(len(found.group()) for found in breaks), 1)
    spaces = [position for position, char in enumerate(translation) if char == " "]
    out, position, taken, removed = [], 0, 0, 0  # removed: the source's break characters before this break
    for number, found in enumerate(breaks):
        target = (found.start() - removed) * len(translation) / length
        removed += len(found.group())
        stop = len(spaces) - (len(breaks) - number - 1)  # spaces kept for the breaks after this one
        if taken >= stop:
            break
        nearest = min(max(bisect.bisect_left(spaces, target, taken, stop), taken), stop - 1)
        if nearest > taken and target - spaces[nearest - 1] <= spaces[nearest] - target:
            nearest -= 1
        out.extend([translation[position : spaces[nearest]], found.group()])
        position, taken = spaces[nearest] + 1, nearest + 1
    out.append(translation[position:])
    return "".join(out)


def plan_text(text: str, language: str = DEFAULT_LANGUAGE, line_sentences: bool = False) -> Plan:
    """Plain text: sentences, with everything between them (spaces, line breaks, blank lines) kept exactly, line
    breaks inside a sentence put back in its translation (``rewrap``), and pieces without words (``has_words``)
    kept as they are. ``line_sentences``: a line may end a sentence without punctuation (``lines.py``: list
    items, headings), for the ``text`` format, where line breaks are the client's layout."""
    spans = sentence_spans(text, language)
    if line_sentences:
        lines = TextLines(text)
        spans = [part for span in spans for part in split_at_line_sentences(lines, span, language)]
    spans = [span for span in spans if has_words(text[span.start : span.end])]

    def wrapped(done: list[str]) -> list[str]:
        return [rewrap(text[span.start : span.end], t) for span, t in zip(spans, done, strict=False)]

    def prefix(done: list[str]) -> str:
        end = spans[len(done) - 1].end if done else 0
        return reassemble(text[:end], spans[: len(done)], wrapped(done))

    return Plan(
        [text[s.start : s.end] for s in spans],
        lambda translations: reassemble(text, spans, wrapped(translations)),
        prefix,
    )


def sentences_of(plans: list[Plan]) -> list[str]:
    """The sentences of several plans (a document's text slots) as one list, in order."""
    return [sentence for plan in plans for sentence in plan.sentences]


def rebuild_each(plans: list[Plan], translations: list[str]) -> list[str]:
    """Each plan's rebuilt text from ``translations`` of ``sentences_of(plans)``: a format planner puts each back
    in its slot (an HTML text node, a Markdown inline run, a cue's text between tags)."""
    rebuilt, position = [], 0
    for plan in plans:
        count = len(plan.sentences)
        rebuilt.append(plan.rebuild(translations[position : position + count]))
        position += count
    return rebuilt


def _planners() -> dict[str, Callable[[str, str], Plan]]:
    from nmtserve.server.documents.html import plan_html  # the format modules import this one
    from nmtserve.server.documents.markdown import plan_markdown
    from nmtserve.server.documents.subrip import plan_srt

    def plan_plain_text(text: str, language: str) -> Plan:
        return plan_text(text, language, line_sentences=True)

    return {"text": plan_plain_text, "html": plan_html, "markdown": plan_markdown, "srt": plan_srt}


FORMATS = ("text", "html", "markdown", "srt")


def plan_document(text: str, format: str, language: str = DEFAULT_LANGUAGE) -> Plan:
    """The plan for ``text`` in ``format`` (one of ``FORMATS``); raises DocumentError for an unknown format."""
    planners = _planners()
    if format not in planners:
        raise DocumentError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    return planners[format](text, language)
