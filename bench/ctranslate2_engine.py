"""Translate token ids with CTranslate2 under the same decoding rules as the ONNX engine.

CTranslate2 takes and returns token strings; the converted vocabulary is the SentencePiece pieces in id order,
so ids map to pieces and back without the tokenizer. Its decoding options are set from our ``DecodingOptions``:
beam size, length penalty, ``min_length`` and an absolute max length. CTranslate2 has no length cap relative
to the source, so comparisons use options whose relative cap never binds (see ``absolute_cap``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from nmtserve.engine.decoding import DecodingOptions
from nmtserve.engine.shortlist import Shortlist

VMAP = "vmap.txt"  # CTranslate2 reads its vocabulary map from this file of the model directory

# Our precision names -> CTranslate2 compute types, per device: the same arithmetic as our export of that name
# (int8 weights with fp32 activations on CPU; fp16 on CUDA, with int8 weights there computed in fp16).
COMPUTE_TYPES = {
    "cpu": {"fp32": "float32", "int8": "int8_float32"},
    "cuda": {"fp32": "float32", "fp16": "float16", "int8": "int8_float16"},
}


def absolute_cap(options: DecodingOptions) -> DecodingOptions:
    """``options`` with the source-relative max length disabled: only ``max_length`` limits, as in CTranslate2."""
    return replace(options, max_length_ratio=0.0, max_length_offset=options.max_length)


@dataclass(frozen=True)
class Output:
    token_ids: list[int]  # without BOS and EOS
    score: float | None


class CTranslate2Engine:
    """A ``ctranslate2.Translator`` that speaks token ids."""

    def __init__(
        self,
        model_dir: Path | str,
        threads: int = 1,
        precision: str = "fp32",
        device: str = "cpu",
        use_vmap: bool = False,
    ) -> None:
        """``use_vmap``: restrict the output layer to CTranslate2's vocabulary map (``vmap.txt`` in the model
        directory), its counterpart of our shortlist."""
        import ctranslate2

        types = COMPUTE_TYPES.get(device)
        if types is None or precision not in types:
            choices = {d: sorted(t) for d, t in COMPUTE_TYPES.items()}
            raise ValueError(f"no CTranslate2 compute type for {precision!r} on {device!r} (have {choices})")
        self.model_dir, self.precision, self.use_vmap = Path(model_dir), precision, use_vmap
        if use_vmap and not (self.model_dir / VMAP).is_file():
            raise FileNotFoundError(f"{self.model_dir / VMAP}: no vocabulary map to use")
        self.translator = ctranslate2.Translator(
            str(model_dir),
            device=device,
            compute_type=types[precision],
            inter_threads=1,
            intra_threads=threads,
        )
        self.pieces = _read_vocabulary(self.model_dir)
        self.ids = {piece: i for i, piece in enumerate(self.pieces)}

    def translate_ids(
        self,
        sources: Sequence[Sequence[int]],
        options: DecodingOptions,
        max_batch_size: int = 64,
        max_batch_tokens: int | None = None,
    ) -> list[Output]:
        """Best hypothesis of each source (token ids ending with EOS), in order.

        ``options`` must have a relative max length that never binds (``absolute_cap``): CTranslate2 cannot
        express it, and silently decoding under different rules would make the comparison meaningless.

        ``max_batch_tokens``: decode the very cohorts our engine forms (``engine.cohorts``), one
        ``translate_batch`` call each. CTranslate2's own ``batch_type="tokens"`` counts unpadded tokens, so the
        same number would give it other, larger batches, and the comparison would no longer be of the same work.
        """
        if max_batch_tokens is not None:
            from nmtserve.engine.engine import cohorts

            outputs: list[Output | None] = [None] * len(sources)
            for cohort in cohorts([len(s) for s in sources], max_batch_size, max_batch_tokens):
                decoded = self.translate_ids([sources[i] for i in cohort], options, len(cohort))
                for i, output in zip(cohort, decoded, strict=True):
                    outputs[i] = output
            return outputs  # type: ignore[return-value]
        if options.num_hypotheses != 1:
            raise ValueError("only the best hypothesis is compared")
        longest = max((len(s) for s in sources), default=0)
        if options.max_length_for(longest) != options.max_length or options.max_length_for(1) != options.max_length:
            raise ValueError("options cap the length relative to the source; use absolute_cap(options)")
        results = self.translator.translate_batch(
            [[self.pieces[i] for i in source] for source in sources],
            max_batch_size=max_batch_size,
            beam_size=options.beam_size,
            length_penalty=options.length_penalty,
            max_decoding_length=options.max_length,
            min_decoding_length=options.min_length,
            return_scores=True,
            use_vmap=self.use_vmap,
        )
        return [Output([self.ids[p] for p in r.hypotheses[0]], r.scores[0] if r.scores else None) for r in results]

    def score_ids(self, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> list[list[float]]:
        """Per-token log-probabilities of ``targets`` (without BOS; CTranslate2 appends EOS and scores it)."""
        results = self.translator.score_batch(
            [[self.pieces[i] for i in source] for source in sources],
            [[self.pieces[i] for i in target] for target in targets],
        )
        return [list(r.log_probs) for r in results]


def write_vmap(shortlist: Shortlist, model_dir: Path, out_dir: Path) -> Path:
    """A copy of CTranslate2 model ``model_dir`` with our shortlist's table as its ``vmap.txt``: one line per source
    piece with candidates, and the always-kept tokens on the line of the empty n-gram. The model files are linked,
    not copied."""
    pieces = _read_vocabulary(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in model_dir.iterdir():
        target = out_dir / path.name
        if path.is_file() and not target.exists():
            target.symlink_to(path.resolve())
    lines = ["\t" + " ".join(pieces[i] for i in shortlist.base)]
    for source in range(shortlist.vocab_size):
        candidates = shortlist.targets[shortlist.offsets[source] : shortlist.offsets[source + 1]]
        if len(candidates):
            lines.append(pieces[source] + "\t" + " ".join(pieces[i] for i in candidates))
    (out_dir / VMAP).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_dir


def _read_vocabulary(model_dir: Path) -> list[str]:
    """The target vocabulary as saved by ``ModelSpec.save`` (shared_vocabulary.json when source == target)."""
    for name in ("shared_vocabulary.json", "target_vocabulary.json"):
        path = model_dir / name
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    raise FileNotFoundError(f"{model_dir}: no shared_vocabulary.json or target_vocabulary.json")
