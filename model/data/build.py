"""Build the EN→DE corpus (train/dev/test + manifest.json) from human translations Debian ships.

Train comes from DDTP, LibreOffice help/UI and Firefox; dev/test come only from the Debian Reference, and any
train pair sharing a side with dev/test is removed so the held-out scores are not inflated by leakage.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from nmtserve.model.data import apt, ddtp, debian_reference, firefox, libreoffice_help, libreoffice_ui
from nmtserve.model.data.clean import CleanConfig, clean_pairs, remove_overlap

SUITES = ["bookworm", "trixie"]
PACKAGES = [
    "libreoffice-help-en-us",
    "libreoffice-help-de",
    "libreoffice-l10n-de",
    "firefox-esr",
    "firefox-esr-l10n-de",
    "debian-reference-en",
    "debian-reference-de",
]
SHUFFLE_SEED = 20240601
FF_LIB = "usr/lib/firefox-esr"

Pairs = list[tuple[str, str]]


def _train_sources(lists: Path, x: dict[str, Path]) -> dict[str, Callable[[], Iterable[tuple[str, str]]]]:
    """Source name -> thunk yielding raw pairs (lazy, so each source is parsed under its own progress bar)."""

    def ddtp_all() -> Iterable[tuple[str, str]]:
        for suite in SUITES:
            yield from ddtp.iter_pairs(apt.find_list(lists, suite, "en"), apt.find_list(lists, suite, "de"))

    help_root = "usr/share/libreoffice/help"
    langpack = x["firefox-esr-l10n-de"] / FF_LIB / "browser/extensions/langpack-de@firefox-esr.mozilla.org.xpi"
    return {
        "ddtp": ddtp_all,
        "libreoffice_help": lambda: libreoffice_help.iter_pairs(
            x["libreoffice-help-en-us"] / help_root / "en-US", x["libreoffice-help-de"] / help_root / "de"
        ),
        "libreoffice_ui": lambda: libreoffice_ui.iter_pairs(x["libreoffice-l10n-de"]),
        "firefox": lambda: firefox.iter_pairs(
            [
                (x["firefox-esr"] / FF_LIB / "omni.ja", ""),
                (x["firefox-esr"] / FF_LIB / "browser/omni.ja", "browser/"),
            ],
            langpack,
        ),
    }


def _write(path: Path, lines: list[str]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def assemble_splits(
    train_sources: dict[str, Callable[[], Iterable[tuple[str, str]]]],
    held_out_raw: Iterable[tuple[str, str]],
    cfg: CleanConfig,
) -> tuple[dict[str, Pairs], dict]:
    """Clean each source, dedup train across sources, split held-out by hash, remove train/held-out overlap.

    Pure (no I/O) so the whole split/dedup logic is testable on tiny inputs.
    """
    raw: dict[str, int] = {}
    cleaned: dict[str, int] = {}
    reasons: dict[str, dict[str, int]] = {}
    train: Pairs = []
    seen: set[tuple[str, str]] = set()
    cross_source_dups = 0

    def counted(it: Iterable[tuple[str, str]], c: Counter[str]) -> Iterator[tuple[str, str]]:
        for p in it:
            c["raw"] += 1
            yield p

    for name, thunk in train_sources.items():
        stats: Counter[str] = Counter()
        n: Counter[str] = Counter()
        kept = list(clean_pairs(tqdm(counted(thunk(), n), desc=name, unit=" pairs"), cfg, stats))
        raw[name], cleaned[name], reasons[name] = n["raw"], len(kept), dict(stats)
        for p in kept:
            if p in seen:
                cross_source_dups += 1
            else:
                seen.add(p)
                train.append(p)

    held_stats: Counter[str] = Counter()
    n_held: Counter[str] = Counter()
    held = list(clean_pairs(counted(held_out_raw, n_held), cfg, held_stats))
    raw["debian_reference"], cleaned["debian_reference"] = n_held["raw"], len(held)
    reasons["debian_reference"] = dict(held_stats)
    splits: dict[str, Pairs] = {"dev": [], "test": []}
    for en, de in held:
        splits[debian_reference.split_of(en)].append((en, de))

    train, overlap_removed = remove_overlap(train, held)
    random.Random(SHUFFLE_SEED).shuffle(train)
    splits["train"] = train
    return splits, {
        "raw_pairs": raw,
        "clean_pairs_after_sentence_split": cleaned,
        "drop_reasons": reasons,
        "train_cross_source_duplicates": cross_source_dups,
        "train_removed_overlapping_dev_test": overlap_removed,
    }


def build_corpus(out_dir: Path, cache_dir: Path) -> dict:
    """Fetch (or reuse) the Debian sources in cache_dir, build the corpus in out_dir, return the manifest."""
    t0 = time.time()
    cfg = CleanConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)

    lists = apt.fetch_translation_lists(cache_dir, SUITES)
    debs = apt.download_debs(PACKAGES, cache_dir / "debs")
    x = {name: apt.extract_deb(deb, cache_dir / "extract" / name) for name, deb in tqdm(debs.items(), desc="extract")}

    ref_dir = "usr/share/debian-reference"
    ref_raw = list(
        tqdm(
            debian_reference.iter_pairs(x["debian-reference-en"] / ref_dir, x["debian-reference-de"] / ref_dir),
            desc="debian_reference",
            unit=" pairs",
        )
    )
    splits, stats = assemble_splits(_train_sources(lists, x), ref_raw, cfg)

    files: dict[str, str] = {}
    for split, pairs in splits.items():
        for side, lang in ((0, "en"), (1, "de")):
            path = out_dir / f"{split}.{lang}"
            _write(path, [p[side] for p in pairs])
            files[path.name] = apt.sha256_file(path)

    manifest = {
        "description": "EN->DE from Debian-shipped human translations; dev/test = Debian Reference only",
        "mirror": apt.mirror_uri(),
        "ddtp": {
            "suites": SUITES,
            "release_dates": {s: apt.release_date(lists, s) for s in SUITES},
            "lists_sha256": {
                apt.find_list(lists, s, lang).name: apt.sha256_file(apt.find_list(lists, s, lang))
                for s in SUITES
                for lang in ("en", "de")
            },
        },
        "packages": {
            name: {"version": apt.deb_field(deb, "Version"), "file": deb.name, "sha256": apt.sha256_file(deb)}
            for name, deb in debs.items()
        },
        **stats,
        "splits": {k: len(v) for k, v in splits.items()},
        "clean_config": cfg.as_dict(),
        "dev_test_rules": {
            "split": "sha256(en)[0] % 2: even=dev, odd=test",
            "min_words": debian_reference.MIN_WORDS,
            "max_code_fraction": debian_reference.MAX_CODE_FRACTION,
        },
        "shuffle_seed": SHUFFLE_SEED,
        "files_sha256": files,
        "build_seconds": round(time.time() - t0, 1),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest
