"""A converted model decodes as transformers' ``decode(skip_special_tokens=True)`` when its tokenizer_config.json
asks for ``clean_up_tokenization_spaces`` (as tokenizers saved by transformers 4 usually do).

transformers 5 then removes the space before punctuation and English contractions for SentencePiece tokenizers
(Marian, M2M-100, mBART's Unigram) and skips it for BPE ones (BART, NLLB). The tokenizer under test is the one
the converted checkpoint loads, so the setting must survive conversion (Marian's tokenizer_config.json is not
copied: the checkpoint records it).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from nmtserve.export.hf_convert import convert_hf  # noqa: E402
from nmtserve.export.hf_testing import tiny_m2m100, tiny_marian  # noqa: E402
from nmtserve.export.hf_testing_bart import tiny_bart, tiny_mbart  # noqa: E402
from nmtserve.model.checkpoint import load_checkpoint  # noqa: E402

BUILDERS: dict[str, Callable[[Path], Path]] = {
    "marian": tiny_marian,
    "m2m100": tiny_m2m100,
    "nllb": lambda directory: tiny_m2m100(directory, tokenizer="nllb"),
    "bart": tiny_bart,
    "mbart50": tiny_mbart,
}
TEXTS = ["I do n't know , he said . ok !", "it 's here ; is it ?", "we 're done ' twice ' .", "no change here"]


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp(request.param)
    hf_dir = BUILDERS[request.param](root / "hf")
    config = hf_dir / "tokenizer_config.json"
    settings = json.loads(config.read_text()) if config.is_file() else {}
    config.write_text(json.dumps({**settings, "clean_up_tokenization_spaces": True}))
    _, tokenizer, _ = load_checkpoint(convert_hf(hf_dir, root / "checkpoint"))
    return request.param, transformers.AutoTokenizer.from_pretrained(hf_dir), tokenizer


def test_decode_cleans_up_as_transformers(converted) -> None:
    family, reference, ours = converted
    assert reference.clean_up_tokenization_spaces
    rng = random.Random(3)
    choices = list(range(ours.vocab_size))
    if family in ("m2m100", "nllb"):  # language codes and fairseq's made-up words decode differently (documented)
        pattern = re.compile(r"__\w+__|[a-z]{3}_[A-Z][a-z]{3}|madeupword\d+")
        tokens = {i: reference.convert_ids_to_tokens(i) or "" for i in choices}
        choices = [i for i in choices if not pattern.fullmatch(tokens[i])]
        choices = [i for i in choices if tokens[i] != reference.unk_token or i == reference.unk_token_id]
    sequences = [reference(text)["input_ids"][1:] for text in TEXTS] if family in ("m2m100", "nllb") else []
    sequences += [reference(text)["input_ids"] for text in TEXTS] if not sequences else []
    sequences += [[rng.choice(choices) for _ in range(rng.randint(1, 25))] for _ in range(300)]
    want = [reference.decode(ids, skip_special_tokens=True) for ids in sequences]
    got = [ours.decode(ids) for ids in sequences]
    mismatches = [(ids, g, w) for ids, g, w in zip(sequences, got, want, strict=True) if g != w]
    assert not mismatches, mismatches[:3]
    cleaned = family in ("marian", "m2m100", "mbart50")
    assert (got[0] == "I don't know, he said. ok!") == cleaned, got[0]
