"""SubRip (.srt) subtitles: numbering and timings kept, each cue's text translated (its line breaks kept).

The ``srt`` library parses and writes the file, so a cue's number and timings come back as sent (written in the
canonical ``HH:MM:SS,mmm`` form, with the file's own line ending) and a file it cannot parse is refused with the
reason rather than guessed at. A cue's tags, SubRip's few (``<i>``, ``<b>``, ``<u>``, ``<s>``, ``<font ...>``)
and the ASS override blocks many files carry (``{\\an8}``, ``{\\i1}``), are kept byte for byte, and the text
between them is translated piece by piece, as HTML text nodes are. A cue is not HTML: ``&`` and a ``<`` that
opens no tag are shown as they are by players, so nothing is escaped (the HTML serializer used to write them as
``&amp;`` and ``&lt;``, which players show literally), and the model never sees ``{\\an8}`` glued to a word.
Each cue is translated on its own: a sentence that runs over two cues stays in two cues, so timings stay true.
"""

from __future__ import annotations

import re

from nmtserve.server.documents.plan import DocumentError, Plan, plan_text, rebuild_each, sentences_of
from nmtserve.server.documents.segment import Span, reassemble

# SubRip's tags (as players read them: case-insensitive, attributes on font) and ASS override blocks; neither
# runs over another "<" or "{", so that a cue full of unclosed "<b" costs linear time
CUE_TAG = re.compile(r"</?\s*(?:i|b|u|s|font)\b[^<>]*>|\{\\[^{}]*\}", re.IGNORECASE)


def cue_spans(content: str) -> list[Span]:
    """The stretches of ``content`` between its tags."""
    spans, position = [], 0
    for tag in CUE_TAG.finditer(content):
        if tag.start() > position:
            spans.append(Span(position, tag.start()))
        position = tag.end()
    if position < len(content):
        spans.append(Span(position, len(content)))
    return spans


def _plan_cue(content: str, language: str) -> Plan:
    spans = cue_spans(content)
    plans = [plan_text(content[s.start : s.end], language) for s in spans]
    return Plan(sentences_of(plans), lambda translations: reassemble(content, spans, rebuild_each(plans, translations)))


def plan_srt(text: str, language: str) -> Plan:
    try:
        import srt  # the subtitles extra: it ships no wheel, so the (wheels-only) image goes without it
    except ModuleNotFoundError:
        raise DocumentError("format srt needs the srt library, which this server lacks: nmtserve[subtitles]") from None
    try:
        cues = list(srt.parse(text))
    except (srt.SRTParseError, ValueError) as error:
        raise DocumentError(f"not a valid SubRip file ({type(error).__name__})") from None
    plans = [_plan_cue(cue.content, language) for cue in cues]
    eol = "\r\n" if "\r\n" in text else "\n"

    def rebuild(translations: list[str]) -> str:
        position, out = 0, []
        for cue, plan in zip(cues, plans, strict=True):
            count = len(plan.sentences)
            content = plan.rebuild(translations[position : position + count])
            position += count
            out.append(srt.Subtitle(cue.index, cue.start, cue.end, content, cue.proprietary))
        return srt.compose(out, reindex=False, strict=False, eol=eol)

    return Plan([sentence for plan in plans for sentence in plan.sentences], rebuild)
