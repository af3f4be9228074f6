"""LibreOffice help (en-US vs de HTML): paragraphs aligned by file path and their par_id/hd_id ids.

The help is generated from the same XHP sources per language, so every translatable paragraph carries the
same id in both trees; ids may repeat inside one file (embedded snippets), so occurrences are numbered.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from nmtserve.model.data.htmltext import extract_blocks

_ID = re.compile(r"^(par|hd)_?id", re.I)


def _is_block(tag: str, attrs: dict[str, str | None]) -> bool:
    return bool(attrs.get("id") and _ID.match(attrs["id"] or ""))


def _is_skipped(tag: str, attrs: dict[str, str | None]) -> bool:
    # switchinline variants: all are hidden; JS reveals one. Keep the default variant, drop the per-OS ones.
    if "hidden" in attrs and not (attrs.get("id") or "").startswith("default"):
        return True
    return tag in {"script", "style", "pre"} or (attrs.get("class") or "") in {"code", "bascode", "pycode"}


def file_paragraphs(path: Path) -> dict[str, str]:
    """Map 'id#occurrence' -> plain text for one help page."""
    seen: dict[str, int] = {}
    out: dict[str, str] = {}
    for b in extract_blocks(path.read_text(encoding="utf-8", errors="replace"), _is_block, _is_skipped):
        key = b.id or ""
        n = seen.get(key, 0)
        seen[key] = n + 1
        out[f"{key}#{n}"] = b.text
    return out


def iter_pairs(en_root: Path, de_root: Path) -> Iterator[tuple[str, str]]:
    """(en, de) for every paragraph id present in the same relative .html file under both roots."""
    for en_file in sorted(en_root.rglob("*.html")):
        de_file = de_root / en_file.relative_to(en_root)
        if not de_file.is_file():
            continue
        en, de = file_paragraphs(en_file), file_paragraphs(de_file)
        for key in sorted(en.keys() & de.keys()):
            yield en[key], de[key]
