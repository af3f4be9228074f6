"""Debian Reference (en vs de HTML, one file per chapter): the held-out dev/test source.

po4a translates the DocBook source block by block, so both languages have the same block structure. Blocks
are aligned per chapter with difflib on the sequence of block tags (a plain zip would be wrecked by a
single extra or missing block); code-like blocks are dropped because they teach nothing about translation.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

from nmtserve.model.data.htmltext import Block, extract_blocks

BLOCK_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "td", "th", "dt", "dd", "title", "caption"}
MIN_WORDS = 4
MAX_CODE_FRACTION = 0.4
_SHELL = re.compile(r"^\s*([$#]|\w+@\w+[:$#])\s")


def _is_block(tag: str, attrs: dict[str, str | None]) -> bool:
    return tag in BLOCK_TAGS


def _is_skipped(tag: str, attrs: dict[str, str | None]) -> bool:
    cls = attrs.get("class") or ""
    return tag in {"script", "style", "pre"} or cls in {"navheader", "navfooter", "screen", "programlisting"}


def chapter_blocks(path: Path) -> list[Block]:
    """Non-empty text blocks of one chapter file, in order."""
    return [b for b in extract_blocks(path.read_text(encoding="utf-8"), _is_block, _is_skipped) if b.text]


def is_code_like(en: str, de: str, en_code_chars: int = 0) -> bool:
    """True for shell commands, identifiers, package-name cells: identical text, few words, mostly code."""
    if en == de or len(en.split()) < MIN_WORDS:
        return True
    if _SHELL.match(en) or en_code_chars > MAX_CODE_FRACTION * len(en.replace(" ", "")):
        return True
    letters = sum(c.isalpha() for c in en)
    return letters < 0.6 * len(en.replace(" ", ""))


def align_blocks(en: list[Block], de: list[Block]) -> Iterator[tuple[Block, Block]]:
    """Pair blocks inside runs where the tag sequences agree."""
    sm = difflib.SequenceMatcher(None, [b.tag for b in en], [b.tag for b in de], autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            yield from zip(en[i1:i2], de[j1:j2], strict=True)


def iter_pairs(en_dir: Path, de_dir: Path) -> Iterator[tuple[str, str]]:
    """(en, de) from every `<name>.en.html` with a matching `<name>.de.html`, code-like blocks dropped."""
    for en_file in sorted(en_dir.glob("*.en.html")):
        de_file = de_dir / en_file.name.replace(".en.html", ".de.html")
        if not de_file.is_file():
            continue
        for eb, db in align_blocks(chapter_blocks(en_file), chapter_blocks(de_file)):
            if not is_code_like(eb.text, db.text, eb.code_chars):
                yield eb.text, db.text


def split_of(en: str) -> str:
    """'dev' or 'test', from a stable hash of the English text (same sentence always lands in same half)."""
    return "dev" if hashlib.sha256(en.encode("utf-8")).digest()[0] % 2 == 0 else "test"
