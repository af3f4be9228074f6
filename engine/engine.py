"""``Engine``: a verified model directory + onnxruntime sessions + tokenizer, translating batches of text or ids.

``translate_ids`` is built on the step-level ``DecodingBatch``: sources, sorted by length, decode in cohorts whose
finished sentences leave the batch at once (the batch shrinks) rather than being computed until the longest ends.
A cohort is bounded by a sentence count and optionally by padded source tokens (``cohorts``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

from tqdm import tqdm

from nmtserve.engine.batch import DecodingBatch
from nmtserve.engine.decoding import DecodingOptions, Hypothesis
from nmtserve.engine.model_dir import ModelInfo, load_model_info
from nmtserve.engine.runtime import Runtime, RuntimeConfig
from nmtserve.engine.tokenizer import Tokenizer, load_tokenizer


def cohorts(lengths: Sequence[int], max_sentences: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices of ``lengths`` (source lengths in tokens), sorted by length and cut into consecutive cohorts of at
    most ``max_sentences`` and, when ``max_tokens`` is given, at most that many padded tokens (sentences x the
    longest source, the server's ``max_batch_tokens``); a source longer than ``max_tokens`` goes alone.

    Why a token bound: a cohort of long sentences holds a large decoder cache (rows x history) and every row
    attends over the cohort's widest source. On the 2-core VNNI machine, int8 at beam 4, cohorts of at most 1024
    padded tokens decoded GPL-3's long sentences 1.2-1.4x faster than cohorts of 32 sentences in runs of this
    engine alone (1.05x inside ``bench engine``, taking turns with CTranslate2), dev's short ones about as fast,
    and fp32 gained little (docs/benchmarks.md, issue 17, session 19).
    """
    if max_sentences < 1 or (max_tokens is not None and max_tokens < 1):
        raise ValueError(f"max_sentences ({max_sentences}) and max_tokens ({max_tokens}) must be at least 1")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    result: list[list[int]] = []
    for i in order:  # ascending, so the newest source is the cohort's longest
        current = result[-1] if result else []
        room = len(current) < max_sentences and (max_tokens is None or (len(current) + 1) * lengths[i] <= max_tokens)
        if result and room:
            current.append(i)
        else:
            result.append([i])
    return result


class Engine:
    def __init__(self, info: ModelInfo, runtime: Runtime, tokenizer: Tokenizer) -> None:
        self.info, self.runtime, self.tokenizer = info, runtime, tokenizer

    @classmethod
    def load(
        cls,
        model_dir: Path | str,
        device: str = "cpu",
        threads: int | None = None,
        *,
        device_id: int = 0,
        spin: bool = True,
        int8_kernels: str = "auto",
    ) -> Engine:
        """Check every file against the manifest's sha256, then create the sessions (raises ModelDirError,
        EngineError)."""
        info = load_model_info(Path(model_dir))
        runtime = Runtime(info, RuntimeConfig(device, device_id, threads, spin=spin, int8_kernels=int8_kernels))
        tokenizer = load_tokenizer(info.directory, info.manifest.get("tokenizer"))
        # A model may have embedding rows no text maps to (NLLB-200 has 2), never the other way round.
        if tokenizer.vocab_size > info.vocab_size or tokenizer.eos_id != info.eos_id:
            raise ValueError(f"{model_dir}: tokenizer does not match the model (vocabulary or EOS id)")
        return cls(info, runtime, tokenizer)

    @property
    def decodable_vocabulary(self) -> int:
        """Tokens every step can choose from: the vocabulary, or for a shortlist export the tokens in every
        sentence's list (what a beam of 2 x beam_size candidates must fit in)."""
        shortlist = self.runtime.shortlist
        return self.info.vocab_size if shortlist is None else min(self.info.vocab_size, len(shortlist.base))

    def new_batch(self, in_place: bool | None = None) -> DecodingBatch:
        """An empty running batch for step-level (continuous-batching) use (``in_place``: see ``DecodingBatch``)."""
        return DecodingBatch(self.runtime, in_place)

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids ending with EOS, truncated as the reference's ``translate_texts`` does."""
        limit = self.info.max_positions - 1
        return [[*ids[:limit], self.tokenizer.eos_id] for ids in self.tokenizer.encode_batch(list(texts))]

    def translate_ids(
        self,
        sources: Sequence[Sequence[int]],
        options: DecodingOptions | None = None,
        max_batch_size: int = 64,
        progress: bool = False,
        target_prefixes: Sequence[Sequence[int]] | None = None,
        max_batch_tokens: int | None = None,
    ) -> list[list[Hypothesis]]:
        """n-best lists for tokenized sources (each ending with EOS), in the order of ``sources``.

        ``target_prefixes``: per source, target tokens forced first (``DecodingBatch.add``); they are part of the
        hypotheses, as in transformers' ``generate()``.

        Sources are sorted by length and decode in cohorts of at most ``max_batch_size`` sentences and
        ``max_batch_tokens`` padded source tokens (``cohorts``; None: no token bound); the next cohort starts
        when the last sentence of the running one has finished. Topping the batch up as it empties (what the server
        does, because its requests arrive over time) costs more here: rows joining a running batch are left-padded
        to its longest history, and on 500 dev sentences (batch 32) cohorts were 13-19 % faster than topping up at
        half empty. Sorted, a cohort's sentences finish at similar steps.
        """
        options = options or DecodingOptions()
        options.validate(self.decodable_vocabulary)
        if target_prefixes is not None and len(target_prefixes) != len(sources):
            raise ValueError("one target prefix per source (empty for none), or None for all")
        waiting = cohorts([len(s) for s in sources], max_batch_size, max_batch_tokens)[::-1]  # popped from the end
        results: list[list[Hypothesis] | None] = [None] * len(sources)
        batch = self.new_batch()
        with tqdm(total=len(sources), disable=not progress, desc="translate", unit="sent") as bar:
            while waiting or len(batch):
                if waiting and not len(batch):
                    take = waiting.pop()
                    forced = None if target_prefixes is None else [target_prefixes[i] for i in take]
                    batch.add([sources[i] for i in take], options, keys=take, target_prefixes=forced)
                for done in batch.step():
                    results[cast(int, done.key)] = done.hypotheses  # the keys given to add()
                    bar.update()
        return results  # type: ignore[return-value]

    def translate(
        self,
        texts: Sequence[str],
        options: DecodingOptions | None = None,
        max_batch_size: int = 64,
        progress: bool = False,
        max_batch_tokens: int | None = None,
    ) -> list[list[Hypothesis]]:
        """n-best translations of ``texts`` with ``text`` filled in, in order.

        A tokenizer with its own language rules (BART / mBART: ``request_languages``) adds what its defaults call
        for, as the server does for a request that names no languages.
        """
        sources, prefixes = self.encode_texts(texts), None
        rules = getattr(self.tokenizer, "request_languages", None)
        if rules is not None:
            before, after, forced = rules("", "")
            room = self.info.max_positions - len(before) - len(after)  # the codes count against the position table
            sources = [[*before, *ids[:-1][: room - 1], ids[-1], *after] for ids in sources]
            prefixes = [forced] * len(sources)
        nbests = self.translate_ids(
            sources, options, max_batch_size, progress, target_prefixes=prefixes, max_batch_tokens=max_batch_tokens
        )
        return [
            [Hypothesis(h.token_ids, h.score, h.log_prob, self.tokenizer.decode(h.token_ids)) for h in nbest]
            for nbest in nbests
        ]
