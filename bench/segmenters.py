"""pysbd vs sentencex on the multi-sentence paragraphs of the HTML manuals Debian ships (/usr/share/doc).

There is no gold segmentation of these paragraphs, so the figures are proxies that a reader can check by eye
(``--show``): splits followed by a lower-case word (almost always a false split, e.g. after "e.g." or "etc."),
and ". X" inside a sentence where X is upper case (a likely missed split), plus whether the pieces rebuild the
paragraph and the time taken. Run: ``python -m nmtserve.bench.segmenters``.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import html5lib
import pysbd
import sentencex

MISSED = re.compile(r"[a-z]{3,}[.!?] [A-Z][a-z]")  # over plain prose, not markup


def paragraphs(limit_files: int = 40) -> list[str]:
    files = sorted(p for p in Path("/usr/share/doc").glob("*/*.html") if p.is_file())[:limit_files]
    files += sorted(p for p in Path("/usr/share/doc").glob("*/html/*.html") if p.is_file())[:limit_files]
    out, seen = [], set()
    for path in files:
        tree = html5lib.parse(path.read_bytes(), treebuilder="etree", namespaceHTMLElements=False)
        for element in tree.iter("p"):
            text = " ".join("".join(element.itertext()).split())
            if text not in seen and text.count(". ") >= 1 and len(text) > 60:
                seen.add(text)
                out.append(text)
    return out


def measure(name: str, segment, texts: list[str]) -> dict:
    started = time.perf_counter()
    results = [segment(text) for text in texts]
    seconds = time.perf_counter() - started
    pieces = [[p for p in r if p.strip()] for r in results]
    lower = sum(1 for r in pieces for a in r[1:] if a.strip()[:1].islower())
    missed = sum(len(MISSED.findall(p)) for r in pieces for p in r)
    exact = sum("".join(r) == t for r, t in zip(results, texts, strict=True))
    return {
        "segmenter": name,
        "paragraphs": len(texts),
        "sentences": sum(len(r) for r in pieces),
        "lower-case starts": lower,
        "likely missed": missed,
        "rebuild exact": f"{exact}/{len(texts)}",
        "ms/paragraph": round(1000 * seconds / max(1, len(texts)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--show", type=int, default=0, help="print N paragraphs where the two disagree")
    args = parser.parse_args()
    texts = paragraphs()
    sbd = pysbd.Segmenter(language="en", clean=False)
    candidates = {"pysbd 0.3.4": sbd.segment, "sentencex": lambda text: list(sentencex.segment("en", text))}
    for name, segment in candidates.items():
        print(measure(name, segment, texts))
    shown = 0
    for text in texts:
        a, b = [p.strip() for p in sbd.segment(text)], [p.strip() for p in sentencex.segment("en", text) if p.strip()]
        if a != b and shown < args.show:
            shown += 1
            print("\npysbd:    ", a, "\nsentencex:", b)


if __name__ == "__main__":
    main()
