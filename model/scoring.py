"""Corpus scores (sacreBLEU, chrF) and the BLEU of an exported model decoded by the serving engine.

Torch-free on purpose: ``nmtserve evaluate`` with the ONNX backend runs in a serving install with the ``eval``
extra, and the export's BLEU gate uses the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import sacrebleu

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.model.batching import read_lines


@dataclass(frozen=True)
class Scores:
    bleu: float
    chrf: float
    sentences: int
    signature: str

    def __str__(self) -> str:
        return f"BLEU {self.bleu:.2f}  chrF {self.chrf:.2f}  ({self.sentences} sentences; {self.signature})"


def score(hypotheses: Sequence[str], references: Sequence[str]) -> Scores:
    metric = sacrebleu.BLEU()  # its signature is only known once it has scored something
    bleu = metric.corpus_score(list(hypotheses), [list(references)])
    chrf = sacrebleu.corpus_chrf(list(hypotheses), [list(references)])
    return Scores(bleu.score, chrf.score, len(hypotheses), str(metric.get_signature()))


def bleu_of(
    model_dir: Path,
    corpus: Path,
    split: str = "dev",
    limit: int | None = None,
    options: DecodingOptions | None = None,
    **load,
) -> Scores:
    """sacreBLEU/chrF of an exported model on a corpus split, decoded by the serving engine."""
    engine = Engine.load(model_dir, **load)
    sources = read_lines(Path(corpus) / f"{split}.en")[:limit]
    references = read_lines(Path(corpus) / f"{split}.de")[:limit]
    hypotheses = [
        nbest[0].text or "" for nbest in engine.translate(sources, options or DecodingOptions(), progress=True)
    ]
    return score(hypotheses, references)


def check_bleu_against_fp32(
    fp32_dir: Path, other_dir: Path, corpus: Path, split: str = "dev", tolerance: float = 0.5, **load
) -> tuple[Scores, Scores, bool]:
    """BLEU of a reduced-precision export and of the fp32 one; passes when it is at most ``tolerance`` lower."""
    base, other = bleu_of(fp32_dir, corpus, split, **load), bleu_of(other_dir, corpus, split, **load)
    return base, other, other.bleu >= base.bleu - tolerance
