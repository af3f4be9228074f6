"""A document as sentences to translate plus the recipe that puts their translations back in place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nmtserve.server.documents.segment import DEFAULT_LANGUAGE, is_blank, reassemble, sentence_spans


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


def plan_text(text: str, language: str = DEFAULT_LANGUAGE) -> Plan:
    """Plain text: sentences, with everything between them (spaces, line breaks, blank lines) kept exactly, and
    pieces without words (``has_words``) kept as they are."""
    spans = [span for span in sentence_spans(text, language) if has_words(text[span.start : span.end])]

    def prefix(done: list[str]) -> str:
        end = spans[len(done) - 1].end if done else 0
        return reassemble(text[:end], spans[: len(done)], done)

    return Plan(
        [text[s.start : s.end] for s in spans], lambda translations: reassemble(text, spans, translations), prefix
    )


def _planners() -> dict[str, Callable[[str, str], Plan]]:
    from nmtserve.server.documents.html import plan_html  # the format modules import this one
    from nmtserve.server.documents.markdown import plan_markdown
    from nmtserve.server.documents.subrip import plan_srt

    return {"text": plan_text, "html": plan_html, "markdown": plan_markdown, "srt": plan_srt}


FORMATS = ("text", "html", "markdown", "srt")


def plan_document(text: str, format: str, language: str = DEFAULT_LANGUAGE) -> Plan:
    """The plan for ``text`` in ``format`` (one of ``FORMATS``); raises DocumentError for an unknown format."""
    planners = _planners()
    if format not in planners:
        raise DocumentError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    return without_blank_sentences(planners[format](text, language))


def without_blank_sentences(plan: Plan) -> Plan:
    """``plan`` with its blank sentences (``is_blank``: e.g. an HTML element holding only a zero-width space) kept
    as they are instead of translated; the format planners see such text as content, the model must not."""
    wanted = [i for i, sentence in enumerate(plan.sentences) if not is_blank(sentence)]
    if len(wanted) == len(plan.sentences):
        return plan

    def merged(translations: list[str]) -> list[str]:
        """Every sentence of ``plan``: the wanted ones translated (as far as ``translations`` go), the rest as sent."""
        sentences = list(plan.sentences)
        for i, translation in zip(wanted, translations, strict=False):
            sentences[i] = translation
        return sentences

    def prefix(done: list[str]) -> str:
        assert plan.prefix is not None
        end = wanted[len(done) - 1] + 1 if done else 0
        return plan.prefix(merged(done)[:end])

    return Plan(
        [plan.sentences[i] for i in wanted],
        lambda translations: plan.rebuild(merged(translations)),
        None if plan.prefix is None else prefix,
    )
