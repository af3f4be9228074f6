"""DDTP: Debian package description translations (Translation-en vs -de), paired by Description-md5.

Descriptions are aligned paragraph by paragraph, and only when both sides have the same structure, because
translators occasionally merge or split paragraphs and a mismatched pairing would teach the model garbage.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from nmtserve.model.data.apt import read_list

_BULLET = re.compile(r"^\s*([*+o-]|\d+[.)])\s+")


def parse_stanzas(text: str, lang: str) -> dict[str, str]:
    """Map Description-md5 -> full Description-<lang> value (first line + raw continuation lines)."""
    out: dict[str, str] = {}
    for stanza in re.split(r"\n\s*\n", text):
        md5 = None
        desc_lines: list[str] = []
        in_desc = False
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")):
                if in_desc:
                    desc_lines.append(line)
                continue
            in_desc = False
            key, _, value = line.partition(":")
            if key == "Description-md5":
                md5 = value.strip()
            elif key == f"Description-{lang}":
                in_desc = True
                desc_lines = [value.strip()]
        if md5 and desc_lines:
            out[md5] = "\n".join(desc_lines)
    return out


def description_units(desc: str) -> list[list[str]]:
    """Split a description into [synopsis], then per paragraph the list of units (prose + bullet items).

    A paragraph's lines are joined with single spaces; a bullet line starts a new unit so lists do not
    collapse into one run-on segment.
    """
    lines = desc.split("\n")
    paragraphs: list[list[str]] = [[lines[0].strip()]]
    current: list[list[str]] = []
    for raw in lines[1:]:
        body = raw[1:] if raw.startswith(" ") else raw
        if body.strip() == ".":
            if current:
                paragraphs.append([" ".join(u) for u in current])
            current = []
            continue
        if not current or _BULLET.match(body):
            current.append([_BULLET.sub("", body).strip() if _BULLET.match(body) else body.strip()])
        else:
            current[-1].append(body.strip())
    if current:
        paragraphs.append([" ".join(u) for u in current])
    return paragraphs


def pair_descriptions(en: str, de: str) -> Iterator[tuple[str, str]]:
    """Pair synopsis, then paragraphs unit by unit when paragraph and unit counts agree."""
    pe, pd = description_units(en), description_units(de)
    yield pe[0][0], pd[0][0]
    if len(pe) != len(pd):
        return
    for ue, ud in zip(pe[1:], pd[1:], strict=True):
        if len(ue) == len(ud):
            yield from zip(ue, ud, strict=True)


def iter_pairs(en_file: Path, de_file: Path) -> Iterator[tuple[str, str]]:
    """(en, de) pairs from one suite's Translation-en and Translation-de (compressed or plain)."""
    en = parse_stanzas(read_list(en_file), "en")
    de = parse_stanzas(read_list(de_file), "de")
    for md5 in sorted(de.keys() & en.keys()):
        yield from pair_descriptions(en[md5], de[md5])
