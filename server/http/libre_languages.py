"""The languages a LibreTranslate client sees, and the model codes its requests are mapped to.

Every ready model contributes each language it takes as a source with each target it produces: a many-to-many
model (M2M-100, NLLB-200, mBART-50) every code its tokenizer has on both sides, an mBART-cc25 fine-tune its codes
into its one target, a multilingual OPUS-MT model its manifest's source into each of its ``>>xx<<`` codes, a
single-pair model its manifest's pair. Each side is checked with ``language_prefixes``, the check the model's
requests get, so that nothing is listed that the model would refuse.

Codes are listed as LibreTranslate (1.9) lists them: ISO 639-1 (``deu_Latn``, ``de_DE`` and ``deu`` are ``de``;
``arb_Arab`` is ``ar``), with its three script and region variants ``zh-Hans``, ``zh-Hant`` and ``pt-BR``
(``zho_Hans``/``zh_CN``/M2M-100's ``zh``, ``zho_Hant``/``zh_TW``, ``pt_BR``). A model code keeps its own spelling
where there is no clean two-letter code: no ISO 639-1 code (``ace_Arab``, ``yue_Hant``), a regional variety of a
macrolanguage (``arz_Arab`` Egyptian Arabic is not ``ar``), or several of the model's codes for one (``kas_Arab``
and ``kas_Deva``). A request may name a language by its listed code, by the model's own code (both without regard
to case) or by LibreTranslate's older ``zh``/``zt``/``pb``; it reaches the service as the model's code, so that
routing in a repository and the model's own check see the codes they know.

Names come from Debian's iso-codes (``/usr/share/iso-codes/json``: ISO 639-3 languages, ISO 15924 scripts, ISO
3166-1 countries), read once. Without it (the container image installs no Debian packages) the languages the HTTP
API named before it was read keep their names (``FALLBACK_NAMES``) and any other is named by its code.
"""

from __future__ import annotations

import gzip
import json
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from nmtserve.server.documents.languages import ISO_639_1
from nmtserve.server.validation import RequestError, language_prefixes

ISO_CODES = Path("/usr/share/iso-codes/json")
# LibreTranslate's codes before 1.7.2 (its language.py ``aliases``), still accepted by LibreTranslate
OLD_CODES = {"zh": "zh-Hans", "zt": "zh-Hant", "pb": "pt-BR"}
_SUBTAGS = re.compile(r"[-_]")
_TWO_LETTER = frozenset(ISO_639_1.values())
_TRADITIONAL_REGIONS = frozenset({"TW", "HK", "MO"})
FALLBACK_NAMES = {
    "ar": "Arabic", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English", "es": "Spanish",
    "fi": "Finnish", "fr": "French", "hu": "Hungarian", "it": "Italian", "ja": "Japanese", "ko": "Korean",
    "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian",
    "sv": "Swedish", "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese",
}  # fmt: skip
_SCRIPT_NAMES = {"Hans": "Simplified", "Hant": "Traditional"}  # LibreTranslate's "Chinese (traditional)"


def _split(code: str) -> tuple[str, str, str]:
    """(language, script, region) subtags of a model code: ``zho_Hans`` -> (zho, Hans, ''), ``pt_BR`` -> (pt, '',
    BR); mBART's ``_XX`` is no region."""
    language, *rest = _SUBTAGS.split(code.strip())
    script = next((part.title() for part in rest if len(part) == 4 and part.isalpha()), "")
    region = next((part.upper() for part in rest if len(part) == 2 and part.isalpha()), "")
    return language.lower(), script, "" if region == "XX" else region


def libre_code(code: str) -> str | None:
    """The LibreTranslate code of model code ``code``, or None where ISO 639-1 has none for its language."""
    language, script, region = _split(code)
    iso = ISO_639_1.get(language) or (language if language in _TWO_LETTER else None)
    if iso == "zh":
        return "zh-Hant" if script == "Hant" or region in _TRADITIONAL_REGIONS else "zh-Hans"
    if iso == "pt" and region == "BR":
        return "pt-BR"
    return iso


def _clean(name: str) -> str:
    return re.sub(r"\s*\((macrolanguage|individual language|\d+-)\)$", "", name)


@cache
def _iso_names() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(language code -> name, script -> name, country -> name) from iso-codes; empty where it is missing."""

    def entries(name: str, key: str) -> list[dict[str, Any]]:
        try:
            data = json.loads((ISO_CODES / f"iso_{name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return list(data.get(key, []))

    languages: dict[str, str] = {}
    for entry in entries("639-3", "639-3"):
        name = _clean(entry.get("common_name") or entry["name"])
        languages[entry["alpha_3"]] = name
        if "alpha_2" in entry:
            languages[entry["alpha_2"]] = name
    scripts = {e["alpha_4"]: re.sub(r"\s*\(.*\)$", "", e["name"]) for e in entries("15924", "15924")}
    countries = {e["alpha_2"]: e.get("common_name") or e["name"] for e in entries("3166-1", "3166-1")}
    return languages, scripts, countries


def language_name(listed: str) -> str:
    """English name of a listed code: ``de`` German, ``zh-Hant`` Chinese (Traditional), ``pt-BR`` Portuguese
    (Brazil), a model's own ``kas_Deva`` Kashmiri (Devanagari); the code itself where iso-codes does not name it."""
    languages, scripts, countries = _iso_names()
    language, script, region = _split(listed)
    name = languages.get(language) or FALLBACK_NAMES.get(language)
    if name is None:
        return listed
    if libre_code(listed) == listed:  # one of LibreTranslate's codes
        script = script if listed.startswith("zh-") else ""
    qualifiers = [_SCRIPT_NAMES.get(script) or scripts.get(script, script), countries.get(region, region)]
    qualifiers = [q for q in qualifiers if q]
    return f"{name} ({', '.join(qualifiers)})" if qualifiers else name


def _accepts(tokenizer: Any, pair: dict[str, str], source: str, target: str) -> bool:
    try:
        language_prefixes(source, target, tokenizer, pair)
    except RequestError:
        return False
    return True


def directions(tokenizer: Any, pair: dict[str, str]) -> tuple[list[str], list[str]]:
    """(sources, targets) a model serves in every combination: its codes, as its requests name them."""
    own_source, own_target = pair.get("source", ""), pair.get("target", "")
    codes: list[str] = list(getattr(tokenizer, "languages", []))
    template = getattr(tokenizer, "template", None)
    if not codes or template == "bart":
        return ([own_source], [own_target]) if own_source and own_target else ([], [])
    if template == "mbart":  # mBART-cc25 fine-tunes: any of its codes into its one target
        sources, targets = codes, [getattr(tokenizer, "default_target_language", "") or own_target]
    elif getattr(tokenizer, "forces_target_language", False) or template == "mbart50":
        sources, targets = codes, codes
    else:  # multilingual OPUS-MT: the >>xx<< codes are targets; the source is the manifest's
        sources, targets = [own_source], codes
    sources = [s for s in sources if s and _accepts(tokenizer, pair, s, targets[0] if targets else "")]
    targets = [t for t in targets if t and sources and _accepts(tokenizer, pair, sources[0], t)]
    return (sources, targets) if sources and targets else ([], [])


@dataclass
class ModelLanguages:
    """One model's directions and spellings."""

    name: str
    sources: frozenset[str]
    targets: frozenset[str]
    multilingual: bool
    listed: dict[str, str] = field(default_factory=dict)  # model code -> listed code
    lookup: dict[str, str] = field(default_factory=dict)  # a request's code, case-folded -> model code

    @classmethod
    def of(cls, name: str, tokenizer: Any, pair: dict[str, str]) -> ModelLanguages:
        sources, targets = directions(tokenizer, pair)
        codes = list(dict.fromkeys([*sources, *targets]))
        mapped = {code: libre_code(code) for code in codes}
        taken: dict[str | None, int] = {}
        for iso in mapped.values():
            taken[iso] = taken.get(iso, 0) + 1
        listed = {code: iso if iso is not None and taken[iso] == 1 else code for code, iso in mapped.items()}
        lookup = {listed_code.casefold(): code for code, listed_code in listed.items()}
        by_listed = {listed_code: code for code, listed_code in listed.items()}
        for old, new in OLD_CODES.items():
            if new in by_listed:
                lookup.setdefault(old, by_listed[new])
        lookup.update({code.casefold(): code for code in codes})  # the model's own spelling first
        multilingual = bool(getattr(tokenizer, "languages", [])) and getattr(tokenizer, "template", None) != "bart"
        return cls(name, frozenset(sources), frozenset(targets), multilingual, listed, lookup)


class PairError(Exception):
    """A LibreTranslate 400: the code the client sent, as LibreTranslate names it."""


@dataclass
class Catalogue:
    """The languages of the ready models (the default one first) and what ``GET /languages`` answers."""

    models: list[ModelLanguages]
    default_source: str = ""
    _body: bytes | None = None
    _gzipped: bytes | None = None

    def body(self) -> bytes:
        """``/languages``' JSON: each listed source with its listed targets (not itself), every target too."""
        if self._body is None:
            targets: dict[str, set[str]] = {}
            for model in self.models:
                for source in model.sources:
                    listed = model.listed[source]
                    targets.setdefault(listed, set()).update(
                        model.listed[t] for t in model.targets if model.listed[t] != listed
                    )
                for target in model.targets:
                    targets.setdefault(model.listed[target], set())
            order = sorted(targets, key=lambda code: (code != self.default_source, code))
            listing = [{"code": code, "name": language_name(code), "targets": sorted(targets[code])} for code in order]
            self._body = json.dumps(listing, ensure_ascii=False, separators=(",", ":")).encode()
        return self._body

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body(), mtime=0)
        return self._gzipped

    def sources(self) -> list[str]:
        return sorted({model.listed[s] for model in self.models for s in model.sources})

    def resolve(self, source: str, target: str) -> tuple[ModelLanguages, str, str]:
        """(model, source, target) in the model's codes for a request's codes: the default model where it serves
        the pair, else the first by name; PairError naming the unknown side otherwise."""
        wanted_source, wanted_target = source.casefold(), target.casefold()
        known_source = False
        for model in self.models:
            own_source = model.lookup.get(wanted_source)
            if own_source is None or own_source not in model.sources:
                continue
            known_source = True
            own_target = model.lookup.get(wanted_target)
            if own_target is not None and own_target in model.targets:
                return model, own_source, own_target
        raise PairError(f"{target.lower() if known_source else source.lower()} is not supported")


class CatalogueCache:
    """The catalogue of the current repository state: rebuilt when a ready model's serving backend changes."""

    def __init__(self) -> None:
        self._refs: Sequence[tuple[str, weakref.ref[Any]]] = ()
        self._catalogue: Catalogue | None = None

    def get(self, backends: list[tuple[str, Any]]) -> Catalogue:
        same = len(backends) == len(self._refs) and all(
            name == held[0] and held[1]() is backend for (name, backend), held in zip(backends, self._refs, strict=True)
        )
        if not same or self._catalogue is None:
            models = []
            for name, backend in backends:
                engine = backend.engine
                models.append(ModelLanguages.of(name, engine.tokenizer, engine.info.manifest.get("languages", {})))
            default_pair = backends[0][1].engine.info.manifest.get("languages", {}) if backends else {}
            first = models[0] if models else None
            default_source = first.listed.get(default_pair.get("source", ""), "") if first else ""
            self._catalogue = Catalogue(models, default_source)
            self._refs = [(name, weakref.ref(backend)) for name, backend in backends]
        return self._catalogue
