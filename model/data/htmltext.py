"""Extract plain-text blocks (paragraphs, headings, cells, ...) from HTML, in document order.

Both HTML sources (LibreOffice help, Debian Reference) need the same thing: block elements as plain text,
with nested blocks kept separate, markup stripped, scripts/code listings/hidden variants skipped.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr", "param"}
CODE_TAGS = {"code", "tt", "kbd", "samp", "var"}
_WS = re.compile(r"\s+")


@dataclass
class Block:
    """One block element's text; code_chars counts characters that sat inside inline code markup."""

    tag: str
    id: str | None
    text: str
    code_chars: int


class _Extractor(HTMLParser):
    def __init__(
        self,
        is_block: Callable[[str, dict[str, str | None]], bool],
        is_skipped: Callable[[str, dict[str, str | None]], bool],
    ) -> None:
        super().__init__(convert_charrefs=True)
        self.is_block = is_block
        self.is_skipped = is_skipped
        self.stack: list[tuple[str, bool, bool, bool]] = []  # tag, opens_block, skip, code
        self.buffers: list[tuple[str, str | None, list[str], list[int]]] = []
        self.skip_depth = 0
        self.code_depth = 0
        self.blocks: list[Block] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in VOID:
            if tag == "br" and self.buffers and not self.skip_depth:
                self.buffers[-1][2].append(" ")
            return
        skip = self.is_skipped(tag, a)
        opens = not skip and not self.skip_depth and self.is_block(tag, a)
        code = tag in CODE_TAGS
        self.stack.append((tag, opens, skip, code))
        self.skip_depth += skip
        self.code_depth += code
        if opens:
            if self.buffers:
                self.buffers[-1][2].append(" ")
            self.buffers.append((tag, a.get("id"), [], [0]))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            return  # XHTML self-closed non-void element: nothing inside it
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if not any(t == tag for t, *_ in self.stack):
            return
        while self.stack:
            t, opens, skip, code = self.stack.pop()
            self.skip_depth -= skip
            self.code_depth -= code
            if opens:
                btag, bid, parts, code_chars = self.buffers.pop()
                text = _WS.sub(" ", html.unescape("".join(parts))).strip()
                self.blocks.append(Block(btag, bid, text, code_chars[0]))
                if self.buffers:
                    self.buffers[-1][2].append(" ")
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.skip_depth or not self.buffers:
            return
        self.buffers[-1][2].append(data)
        if self.code_depth:
            self.buffers[-1][3][0] += len(data.strip())


def extract_blocks(
    markup: str,
    is_block: Callable[[str, dict[str, str | None]], bool],
    is_skipped: Callable[[str, dict[str, str | None]], bool] = lambda tag, attrs: tag in {"script", "style"},
) -> list[Block]:
    """Blocks in document order of their *closing* tag; nested blocks are emitted separately."""
    p = _Extractor(is_block, is_skipped)
    p.feed(markup)
    p.close()
    return p.blocks
