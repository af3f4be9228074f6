"""SubRip (.srt) subtitles: numbering and timings kept, each cue's text translated (its line breaks kept).

The ``srt`` library parses and writes the file, so a cue's number and timings come back as sent (written in the
canonical ``HH:MM:SS,mmm`` form) and a file it cannot parse is refused with the reason rather than guessed at.
Cues with SubRip's tags (``<i>``, ``<b>``, ``<font>``) are planned as HTML fragments, so the tags are kept.
Each cue is translated on its own: a sentence that runs over two cues stays in two cues, so timings stay true.
"""

from __future__ import annotations

from nmtserve.server.documents.html import plan_html
from nmtserve.server.documents.plan import DocumentError, Plan, plan_text


def plan_srt(text: str, language: str) -> Plan:
    try:
        import srt  # the subtitles extra: it ships no wheel, so the (wheels-only) image goes without it
    except ModuleNotFoundError:
        raise DocumentError("format srt needs the srt library, which this server lacks: nmtserve[subtitles]") from None
    try:
        cues = list(srt.parse(text))
    except (srt.SRTParseError, ValueError) as error:
        raise DocumentError(f"not a valid SubRip file ({type(error).__name__})") from None
    # cues may carry SubRip's few tags (<i>, <b>, <u>, <font>): those go through the HTML planner, others stay text
    plans = [(plan_html if "<" in cue.content else plan_text)(cue.content, language) for cue in cues]

    def rebuild(translations: list[str]) -> str:
        position, out = 0, []
        for cue, plan in zip(cues, plans, strict=True):
            count = len(plan.sentences)
            content = plan.rebuild(translations[position : position + count])
            position += count
            out.append(srt.Subtitle(cue.index, cue.start, cue.end, content, cue.proprietary))
        return srt.compose(out, reindex=False, strict=False)

    return Plan([sentence for plan in plans for sentence in plan.sentences], rebuild)
