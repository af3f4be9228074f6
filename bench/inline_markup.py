"""Would placeholders carry inline markup through the demo model? Sentences of Debian's HTML manuals that contain
inline elements are translated with their tags written as placeholders, and the tags in the output counted.

Two spellings are tried: the tag itself (``Run <code>make</code> now.``) and numbered neutral placeholders
(``Run <x1>make</x1> now.``). A sentence "survives" when its output has exactly the source's tag sequence.
Run: ``python -m nmtserve.bench.inline_markup --sentences 60``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from xml.etree import ElementTree

import html5lib
import sentencex

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.model_dir import demo_export

INLINE = ("b", "i", "em", "strong", "code", "a", "span", "tt", "var")


def _placeholder_text(element: ElementTree.Element, numbered: bool) -> tuple[str, list[str]] | None:
    """The element's content with inline children written as tags; None when it has other children."""
    parts, tags = [element.text or ""], []
    for number, child in enumerate(element, start=1):
        if child.tag not in INLINE or len(child):
            return None
        name = f"x{number}" if numbered else child.tag
        parts.append(f"<{name}>{child.text or ''}</{name}>{child.tail or ''}")
        tags += [f"<{name}>", f"</{name}>"]
    return " ".join("".join(parts).split()), tags


def sentences(limit: int, numbered: bool) -> list[tuple[str, list[str]]]:
    out = []
    for path in sorted(Path("/usr/share/doc").glob("*/*.html")):
        if not path.is_file():
            continue
        tree = html5lib.parse(path.read_bytes(), treebuilder="etree", namespaceHTMLElements=False)
        for paragraph in tree.iter("p"):
            found = _placeholder_text(paragraph, numbered)
            if not found or not found[1]:
                continue
            for sentence in sentencex.segment("en", found[0]):
                tags = [t for t in found[1] if t in sentence]
                if tags and 20 < len(sentence) < 300:
                    out.append((sentence.strip(), tags))
                if len(out) >= limit:
                    return out
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sentences", type=int, default=60)
    parser.add_argument("--beam-size", type=int, default=2)
    args = parser.parse_args()
    engine = Engine.load(demo_export("fp32"), threads=1)
    for numbered in (False, True):
        items = sentences(args.sentences, numbered)
        outputs = engine.translate([s for s, _ in items], DecodingOptions(beam_size=args.beam_size, max_length=128))
        exact = kept = total = 0
        for (_, tags), nbest in zip(items, outputs, strict=True):
            text = nbest[0].text
            found = [t for t in tags if t in text]
            kept, total = kept + len(found), total + len(tags)
            exact += all(text.count(t) == 1 for t in tags) and [text.find(t) for t in tags] == sorted(
                text.find(t) for t in tags
            )
        spelling = "numbered <xN>" if numbered else "the tags themselves"
        intact = f"tag sequence intact in {exact} ({100 * exact / len(items):.0f} %)"
        present = f"{kept}/{total} tags present ({100 * kept / max(1, total):.0f} %)"
        print(f"{spelling:20s} {len(items)} sentences: {intact}; {present}")
        for (source, _), nbest in list(zip(items, outputs, strict=True))[:3]:
            print("   ", source, "\n ->", nbest[0].text)


if __name__ == "__main__":
    main()
