"""Cleaning rules for (en, de) pairs. Every threshold lives in CleanConfig so the manifest can record it.

Rules are deliberately simple and explainable: each dropped pair gets one reason, and the counts per reason
go into the manifest so a change in the corpus can be traced to a rule.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

_WS = re.compile(r"\s+")
_PLACEHOLDER = re.compile(
    r"\{[^{}]*\}|%\d*\$?[a-zA-Z@]|%[A-Z_]+%?|\$[A-Za-z_]\w*\$?|&\w+;|<[^<>]*>|https?://\S+|\\[nt]"
)
# Sentence end: . ! ? (optionally closing quote/bracket), whitespace, then an uppercase/digit/quote start.
_SENT_END = re.compile(r"(?<=[.!?])([\"'”“»)]?)\s+(?=[\"'„“«(]?[A-ZÄÖÜ0-9])")
_ABBREV = set(
    [
        "e.g.",
        "i.e.",
        "etc.",
        "vs.",
        "z.b.",
        "b.",
        "bzw.",
        "d.h.",
        "h.",
        "ca.",
        "usw.",
        "u.a.",
        "dr.",
        "nr.",
        "no.",
        "bsp.",
        "ggf.",
        "evtl.",
        "inkl.",
        "vgl.",
        "s.",
        "abs.",
        "fig.",
        "abb.",
        "mr.",
        "ff.",
    ]
)


@dataclass(frozen=True)
class CleanConfig:
    """Thresholds; defaults keep typical documentation sentences and drop whole multi-sentence paragraphs."""

    max_chars: int = 300
    max_words: int = 60
    min_letters: int = 2
    max_len_ratio: float = 2.5
    ratio_min_chars: int = 20
    split_sentences_over_chars: int = 120

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def normalize(s: str) -> str:
    """NFC, all Unicode whitespace (incl. NBSP, tabs, newlines) collapsed to single spaces, stripped."""
    s = unicodedata.normalize("NFC", s).replace("\u00ad", "").replace("\u200b", "")
    return _WS.sub(" ", s).strip()


def split_sentences(text: str) -> list[str]:
    """Split on sentence ends, not after common abbreviations or single letters ("z. B.", "e.g.")."""
    out: list[str] = []
    start = 0
    for m in _SENT_END.finditer(text):
        head = text[start : m.start() + len(m.group(1))].strip()
        last = head.split()[-1].lower() if head.split() else ""
        if last in _ABBREV or re.fullmatch(r"\w\.", last) or re.search(r"\b\w\.\w\.$", last):
            continue
        out.append(head)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def split_long(en: str, de: str, cfg: CleanConfig) -> list[tuple[str, str]]:
    """Split a long paragraph pair into sentence pairs, only when both sides have the same sentence count."""
    if max(len(en), len(de)) <= cfg.split_sentences_over_chars:
        return [(en, de)]
    se, sd = split_sentences(en), split_sentences(de)
    if len(se) > 1 and len(se) == len(sd):
        return list(zip(se, sd, strict=True))
    return [(en, de)]


def letters_outside_placeholders(s: str) -> int:
    """How many letters remain once placeholders, tags, entities and URLs are removed."""
    return sum(c.isalpha() for c in _PLACEHOLDER.sub("", s))


def drop_reason(en: str, de: str, cfg: CleanConfig) -> str | None:
    """The first rule a (normalized) pair violates, or None if it is kept."""
    if not en or not de:
        return "empty"
    if en == de:
        return "identical"
    if letters_outside_placeholders(en) < cfg.min_letters or letters_outside_placeholders(de) < cfg.min_letters:
        return "no_letters"
    if max(len(en), len(de)) > cfg.max_chars or max(len(en.split()), len(de.split())) > cfg.max_words:
        return "too_long"
    longer, shorter = max(len(en), len(de)), min(len(en), len(de))
    if longer >= cfg.ratio_min_chars and longer > cfg.max_len_ratio * shorter:
        return "length_ratio"
    return None


def clean_pairs(pairs: Iterable[tuple[str, str]], cfg: CleanConfig, stats: Counter[str]) -> Iterator[tuple[str, str]]:
    """Normalize, sentence-split long pairs, drop by rule and exact duplicates; count reasons in stats."""
    seen: set[tuple[str, str]] = set()
    for raw_en, raw_de in pairs:
        for en, de in split_long(normalize(raw_en), normalize(raw_de), cfg):
            reason = drop_reason(en, de, cfg)
            if reason is None and (en, de) in seen:
                reason = "duplicate"
            if reason is not None:
                stats[reason] += 1
                continue
            seen.add((en, de))
            stats["kept"] += 1
            yield en, de


def overlap_key(s: str) -> str:
    """Key for train/held-out overlap: case and whitespace-insensitive."""
    return normalize(s).casefold()


def remove_overlap(
    train: Iterable[tuple[str, str]], held_out: Iterable[tuple[str, str]]
) -> tuple[list[tuple[str, str]], int]:
    """Drop train pairs whose EN or DE side occurs (case-insensitively) anywhere in the held-out pairs."""
    en_keys: set[str] = set()
    de_keys: set[str] = set()
    for en, de in held_out:
        en_keys.add(overlap_key(en))
        de_keys.add(overlap_key(de))
    kept: list[tuple[str, str]] = []
    removed = 0
    for en, de in train:
        if overlap_key(en) in en_keys or overlap_key(de) in de_keys:
            removed += 1
        else:
            kept.append((en, de))
    return kept, removed
