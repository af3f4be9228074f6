"""LibreOffice UI strings from the German .mo catalogs in libreoffice-l10n-de (msgid = English source).

LibreOffice ships its UI translations as gettext catalogs whose msgids are the English strings, so a .mo
alone is a parallel corpus. Parsed with struct (no gettext internals), plural forms paired index-wise.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from pathlib import Path

_MNEMONIC_US = re.compile(r"_(?=\w)")


def read_mo(path: Path) -> list[tuple[str | None, str, str]]:
    """(msgctxt, msgid, msgstr) for every entry of a .mo file; plural entries keep their \\x00 separators."""
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">"
    _, n, o_orig, o_trans = struct.unpack(order + "4I", data[4:20])
    out: list[tuple[str | None, str, str]] = []
    for i in range(n):
        ln, off = struct.unpack(order + "2I", data[o_orig + 8 * i : o_orig + 8 * i + 8])
        lt, offt = struct.unpack(order + "2I", data[o_trans + 8 * i : o_trans + 8 * i + 8])
        msgid = data[off : off + ln].decode("utf-8", errors="replace")
        msgstr = data[offt : offt + lt].decode("utf-8", errors="replace")
        if not msgid:
            continue  # header entry
        ctxt, sep, rest = msgid.partition("\x04")
        out.append((ctxt, rest, msgstr) if sep else (None, msgid, msgstr))
    return out


def strip_accelerators(s: str) -> str:
    """Remove `~` mnemonic marks always, and a `_` mnemonic when it is the only underscore before a letter.

    An underscore appearing several times is more likely part of an identifier than a mnemonic.
    """
    s = s.replace("~", "")
    if len(_MNEMONIC_US.findall(s)) == 1 and s.count("_") == 1:
        s = _MNEMONIC_US.sub("", s)
    return s


def entry_pairs(msgid: str, msgstr: str) -> Iterator[tuple[str, str]]:
    """Singular -> msgstr[0]; plural -> msgstr[1] (German has exactly two forms)."""
    ids = msgid.split("\x00")
    strs = msgstr.split("\x00")
    if len(ids) == 1:
        if msgstr:
            yield strip_accelerators(msgid), strip_accelerators(msgstr)
        return
    for src, tgt in zip(ids, strs[:2], strict=False):
        if tgt:
            yield strip_accelerators(src), strip_accelerators(tgt)


def iter_pairs(mo_dir: Path) -> Iterator[tuple[str, str]]:
    """(en, de) from every .mo catalog below mo_dir, in sorted file order."""
    for mo in sorted(mo_dir.rglob("*.mo")):
        for _ctxt, msgid, msgstr in read_mo(mo):
            yield from entry_pairs(msgid, msgstr)
