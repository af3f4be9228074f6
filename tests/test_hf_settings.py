"""Converted models whose files leave settings out, or set them in two places that disagree, decode as
transformers does: the real ``generate()`` is the referee, token for token, at beam 1 and 4.

``save_pretrained`` writes every key, but configs written by hand, trimmed by a tool, or saved by an older
transformers do not. transformers fills a missing config.json key with its config class's default (Marian's
``scale_embedding`` is False, its ``activation_function`` gelu), and once a model has a ``generation_config.json``
it takes no generation setting from config.json. A model whose position table is shorter than the exporter's
check sentences used to fail its export.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hf_reference import best_hypotheses  # noqa: E402

from nmtserve.engine import DecodingOptions, Engine  # noqa: E402
from nmtserve.export.exporter import export_model  # noqa: E402
from nmtserve.export.hf_convert import convert_hf  # noqa: E402
from nmtserve.export.hf_testing import tiny_marian  # noqa: E402
from nmtserve.export.hf_testing_bart import tiny_bart, varied_strings  # noqa: E402
from nmtserve.model.checkpoint import load_checkpoint  # noqa: E402

MAX_NEW_TOKENS = 40


def _edit(path: Path, change: Callable[[dict], None]) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _drop(*keys: str) -> Callable[[dict], None]:
    return lambda document: [document.pop(key) for key in keys]


def _set(**values) -> Callable[[dict], None]:
    return lambda document: document.update(values)


def _marian_without_family_keys(directory: Path) -> None:
    """OPUS-MT's values (scale_embedding true, swish) left out: MarianConfig's defaults (false, gelu) apply."""
    tiny_marian(directory, scale_embedding=True)
    _edit(directory / "config.json", _drop("scale_embedding", "activation_function", "max_position_embeddings"))


def _marian_short_position_table(directory: Path) -> None:
    tiny_marian(directory, max_position_embeddings=48)


def _marian_generation_start_differs(directory: Path) -> None:
    """generation_config.json starts the decoder from another token than config.json (<pad>): generate() takes it."""
    tiny_marian(directory)
    _edit(directory / "generation_config.json", _set(decoder_start_token_id=5))


def _bart_generation_config_leaves_out(directory: Path) -> None:
    """config.json still forces <s> (as an older transformers saved it); generation_config.json forces nothing and
    names no decoder start, so generate() forces nothing and starts from bos."""
    tiny_bart(directory, forced_bos=False)
    _edit(directory / "config.json", _set(forced_bos_token_id=0))
    _edit(directory / "generation_config.json", _drop("decoder_start_token_id"))


CASES = {
    "marian_without_family_keys": _marian_without_family_keys,
    "marian_short_position_table": _marian_short_position_table,
    "marian_generation_start_differs": _marian_generation_start_differs,
    "bart_generation_config_leaves_out": _bart_generation_config_leaves_out,
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Engine]:
    root = tmp_path_factory.mktemp(request.param)
    CASES[request.param](root / "hf")
    checkpoint = convert_hf(root / "hf", root / "checkpoint")
    model_dir = export_model(checkpoint, root / "onnx", "fp32", progress=False)
    return request.param, root, Engine.load(model_dir, threads=1)


def _texts(directory: Path, positions: int) -> list[str]:
    """Varied texts whose tokens fit the position table (longer ones are cut by the engine, as documented)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    texts = [text for text in varied_strings(48, seed=5) if text.strip()]
    return [text for text in texts if len(tokenizer(text)["input_ids"]) <= positions - 4][:16]


def _generate(directory: Path, texts: list[str], beam: int) -> list[list[int]]:
    """The model's own generation settings apply (that is what these cases test), bar length penalty and stopping."""
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(directory, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    tokens, _ = best_hypotheses(model, tokenizer, texts, beam, MAX_NEW_TOKENS, length_penalty=1.0, early_stopping=True)
    return tokens


@pytest.mark.parametrize("beam", [1, 4])
def test_engine_decodes_as_transformers_generate(case: tuple[str, Path, Engine], beam: int) -> None:
    _, root, engine = case
    texts = _texts(root / "hf", engine.info.max_positions)
    assert len(texts) >= 8
    options = DecodingOptions(
        beam_size=beam, length_penalty=1.0, max_length=MAX_NEW_TOKENS, max_length_ratio=1000.0, min_length=1
    )
    want = _generate(root / "hf", texts, beam)
    got = [nbest[0].token_ids for nbest in engine.translate(texts, options)]
    mismatches = [(t, g, w) for t, g, w in zip(texts, got, want, strict=True) if g != w]
    assert not mismatches, mismatches[:2]


def test_checkpoint_takes_what_transformers_loads(case: tuple[str, Path, Engine]) -> None:
    """The settings each case changes, read back from the checkpoint, against the loaded transformers model."""
    name, root, engine = case
    reference = transformers.AutoModelForSeq2SeqLM.from_pretrained(root / "hf")
    model, _, _ = load_checkpoint(root / "checkpoint")
    config = model.config
    start = reference.generation_config.decoder_start_token_id
    assert config.start_id == (reference.generation_config.bos_token_id if start is None else start)
    assert config.scale_embedding == reference.config.scale_embedding
    assert config.max_positions == reference.config.max_position_embeddings
    if name == "marian_without_family_keys":
        assert (config.scale_embedding, config.activation, config.max_positions) == (False, "gelu", 1024)
    if name == "bart_generation_config_leaves_out":
        assert reference.generation_config.forced_bos_token_id is None
        assert engine.tokenizer.forced_bos_id is None  # type: ignore[attr-defined]
