"""Document mode vs the whole paragraph as one model input: BLEU (sacreBLEU) on multi-sentence paragraphs.

Two text sets with German references, neither in the training data:

- ``debian-reference``: the dev split's multi-sentence paragraphs. The corpus builder splits long paragraph pairs
  into sentence pairs (``clean.split_long``), so ``dev.en`` has no paragraph boundaries; the paragraphs are rebuilt
  from the Debian Reference HTML the builder read (its cache, ``model/data/debian_reference.iter_pairs``), and
  a paragraph counts as dev when every sentence pair the builder made of it is a line of ``dev.en``. Multi-
  sentence means two or more sentences by the server's segmenter (sentencex).
- ``messages``: another domain, program messages: the multi-sentence one-line ``msgid``/``msgstr`` pairs of the
  German gettext catalogs installed under /usr/share/locale/de (apt, coreutils, dpkg, git, glib, ...), minus
  any whose English is a line of the training data.

Document mode is the server's own path (``encode_documents``: segmentation, splitting to fit, reassembly); the
whole-paragraph mode sends each paragraph as one input, as a server without document mode does. Same engine,
same beam. Run: ``python -m nmtserve.bench.document_quality --set debian-reference``.
"""

from __future__ import annotations

import argparse
import gettext
import hashlib
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.model_dir import demo_export
from nmtserve.server.config import ServerConfig
from nmtserve.server.documents.requests import encode_documents
from nmtserve.server.documents.segment import sentence_spans

CORPUS = Path("/work/data/corpus")
CACHE = Path("/work/data/cache")
REFERENCE_DIR = "usr/share/debian-reference"
LOCALE = Path("/usr/share/locale/de/LC_MESSAGES")


def multi_sentence(text: str) -> bool:
    return len(sentence_spans(text, "en")) >= 2


def debian_reference_paragraphs(corpus: Path, cache: Path) -> list[tuple[str, str]]:
    from nmtserve.model.data import debian_reference
    from nmtserve.model.data.clean import CleanConfig, normalize, split_long

    extract = cache / "extract"
    dev = set((corpus / "dev.en").read_text(encoding="utf-8").splitlines())
    cfg = CleanConfig()
    out = []
    for en, de in debian_reference.iter_pairs(
        extract / "debian-reference-en" / REFERENCE_DIR, extract / "debian-reference-de" / REFERENCE_DIR
    ):
        en, de = normalize(en), normalize(de)
        if multi_sentence(en) and all(piece in dev for piece, _ in split_long(en, de, cfg)):
            out.append((en, de))
    return out


def message_paragraphs(corpus: Path, locale: Path, limit: int) -> list[tuple[str, str]]:
    training = set((corpus / "train.en").read_text(encoding="utf-8").splitlines())
    pairs = {}
    for catalog in sorted(locale.glob("*.mo")):
        try:
            with catalog.open("rb") as stream:
                messages = gettext.GNUTranslations(stream)._catalog  # type: ignore[attr-defined]
        except (OSError, UnicodeDecodeError, ValueError):  # a catalog in a legacy charset: left out
            continue
        for en, de in messages.items():
            if not isinstance(en, str) or not isinstance(de, str) or not en or not de or "\n" in en + de:
                continue
            if len(en.split()) >= 6 and en not in training and multi_sentence(en):
                pairs[en] = de
    chosen = sorted(pairs.items(), key=lambda pair: hashlib.sha256(pair[0].encode()).digest())  # a fixed sample
    return chosen[:limit]


def document_mode(engine: Engine, texts: list[str], options: DecodingOptions, config: ServerConfig) -> list[str]:
    document = encode_documents(texts, "text", engine.tokenizer, config, "en")
    nbests = engine.translate_ids([e.source_ids for e in document.encoded], options, progress=True)
    pieces = {e.index: engine.tokenizer.decode(n[0].token_ids) for e, n in zip(document.encoded, nbests, strict=True)}
    return document.assemble(pieces)


def whole_mode(engine: Engine, texts: list[str], options: DecodingOptions) -> list[str]:
    return [nbest[0].text or "" for nbest in engine.translate(texts, options, progress=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", choices=["debian-reference", "messages"], default="debian-reference")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--limit", type=int, default=1000, help="paragraphs at most")
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.set == "debian-reference":
        pairs = debian_reference_paragraphs(args.corpus, args.cache)[: args.limit]
    else:
        pairs = message_paragraphs(args.corpus, LOCALE, args.limit)
    engine = Engine.load(demo_export(), threads=args.threads)
    config = ServerConfig(max_request_bytes=64 * 1024 * 1024, max_texts_per_request=10**6,
                          max_sentences_per_request=10**7, max_input_bytes=10**6)  # fmt: skip
    limit = min(config.max_input_tokens, engine.info.max_positions - 1)  # what one whole input may hold
    fits = [(en, de) for en, de in pairs if len(engine.tokenizer.encode(en)) < limit]
    sources, references = [en for en, _ in fits], [de for _, de in fits]
    sentences = sum(len(sentence_spans(text, "en")) for text in sources)
    print(f"{args.set}: {len(sources)} paragraphs ({len(pairs) - len(fits)} over {limit} tokens left out), "
          f"{sentences} sentences; demo model, beam {args.beam_size}", flush=True)  # fmt: skip
    options = DecodingOptions(beam_size=args.beam_size, max_length=args.max_length)
    bleu_metric, chrf_metric = BLEU(), CHRF()
    for name, translated in (
        ("document mode (sentence by sentence)", document_mode(engine, sources, options, config)),
        ("whole paragraph as one input", whole_mode(engine, sources, options)),
    ):
        bleu = bleu_metric.corpus_score(translated, [references])
        chrf = chrf_metric.corpus_score(translated, [references])
        print(f"{name:38s} BLEU {bleu.score:5.2f}  chrF {chrf.score:5.2f}  ({bleu.format()})")
    print(f"signatures: {bleu_metric.get_signature()} | {chrf_metric.get_signature()}")


if __name__ == "__main__":
    main()
