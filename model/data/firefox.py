"""Firefox ESR UI: en-US strings inside omni.ja (zip) vs the German langpack (.xpi zip).

Files are matched by their path with the locale directory removed (`localization/en-US/x.ftl` in the
browser omni.ja == `browser/localization/de/x.ftl` in the langpack), then messages by id (+ attribute).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

_PLACEABLE_TERM = re.compile(r"\{\s*-([\w-]+)\s*\}")
_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")
_FTL_ENTRY = re.compile(r"^(-?[a-zA-Z][\w-]*)\s*=\s?(.*)$")
_FTL_ATTR = re.compile(r"^\s+\.([a-zA-Z][\w-]*)\s*=\s?(.*)$")
_UNICODE_ESC = re.compile(r"\\u([0-9a-fA-F]{4})")


def parse_ftl(text: str) -> dict[str, str]:
    """Minimal Fluent parser: `id = value`, indented continuation lines, `.attr = value` as 'id.attr'.

    Values containing select expressions (`->`) are skipped: picking one variant would misalign languages.
    """
    out: dict[str, str] = {}
    cur_id: str | None = None
    key: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if key is not None:
            value = " ".join(x.strip() for x in lines if x.strip())
            if value and "->" not in value:
                out[key] = value

    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            if not line.strip() and key is not None:
                continue
            flush()
            cur_id, key, lines = None, None, []
            continue
        m = _FTL_ENTRY.match(line)
        if m:
            flush()
            cur_id, key, lines = m.group(1), m.group(1), [m.group(2)]
            continue
        a = _FTL_ATTR.match(line)
        if a and cur_id is not None:
            flush()
            key, lines = f"{cur_id}.{a.group(1)}", [a.group(2)]
            continue
        if line.startswith((" ", "\t")) and key is not None:
            lines.append(line)
    flush()
    return out


def parse_properties(text: str) -> dict[str, str]:
    """Java-style .properties: `key = value`, `#`/`!` comments, backslash continuations, \\uXXXX escapes."""
    out: dict[str, str] = {}
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.lstrip() if buf else raw.strip()
        if not buf and (not line or line[0] in "#!"):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            buf += line[:-1]
            continue
        logical.append(buf + line)
        buf = ""
    for line in logical:
        m = re.match(r"^([^=:\s]+)\s*[=:]\s*(.*)$", line)
        if m:
            value = _UNICODE_ESC.sub(lambda u: chr(int(u.group(1), 16)), m.group(2))
            out[m.group(1)] = value.replace("\\n", " ").replace("\\", "")
    return out


def _norm_path(name: str, locale: str, prefix: str) -> str:
    return prefix + "/".join(p for p in name.split("/") if p != locale)


def _catalogs(zf: zipfile.ZipFile, locale: str, prefix: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name in zf.namelist():
        if locale not in name.split("/"):
            continue
        if name.endswith(".ftl"):
            out[_norm_path(name, locale, prefix)] = parse_ftl(zf.read(name).decode("utf-8", errors="replace"))
        elif name.endswith(".properties"):
            out[_norm_path(name, locale, prefix)] = parse_properties(zf.read(name).decode("utf-8", errors="replace"))
    return out


def _render(value: str, terms: dict[str, str]) -> str:
    """Resolve brand terms like `{ -brand-short-name }`; strip inline markup like `<a data-l10n-name=..>`."""
    value = _PLACEABLE_TERM.sub(lambda m: terms.get(m.group(1), m.group(0)), value)
    return _TAG.sub("", value)


def _terms(catalogs: dict[str, dict[str, str]]) -> dict[str, str]:
    terms: dict[str, str] = {}
    for path, cat in catalogs.items():
        if path.endswith(".ftl"):
            for k, v in cat.items():
                if k.startswith("-") and "." not in k and "{" not in v:
                    terms[k[1:]] = v
    return terms


def _split_plural(en: str, de: str) -> list[tuple[str, str]]:
    """.properties plural strings are `one;other`: pair the forms when both sides have the same count."""
    if ";" in en and en.count(";") == de.count(";"):
        return list(zip(en.split(";"), de.split(";"), strict=True))
    return [(en, de)]


def iter_pairs(omni: list[tuple[Path, str]], langpack: Path) -> Iterator[tuple[str, str]]:
    """(en, de) from en-US omni.ja archives (each with the path prefix its files have in the langpack)."""
    en_cats: dict[str, dict[str, str]] = {}
    for path, prefix in omni:
        with zipfile.ZipFile(path) as zf:
            en_cats.update(_catalogs(zf, "en-US", prefix))
    with zipfile.ZipFile(langpack) as zf:
        de_cats = _catalogs(zf, "de", "")
    en_terms, de_terms = _terms(en_cats), _terms(de_cats)
    for catalog in sorted(en_cats.keys() & de_cats.keys()):
        en, de = en_cats[catalog], de_cats[catalog]
        for key in sorted(en.keys() & de.keys()):
            if key.startswith("-") or key.endswith(".accesskey") or key.endswith(".commandkey"):
                continue
            if "accesskey" in key.lower() or "commandkey" in key.lower() or key.lower().endswith(".key"):
                continue
            e, d = _render(en[key], en_terms), _render(de[key], de_terms)
            yield from _split_plural(e, d)
