"""Hugging Face Marian (OPUS-MT) models: convert, export, decode and serve, with transformers as the referee.

The model is a tiny random ``MarianMTModel`` built by transformers from a config, its tokenizers trained here
(``nmtserve.export.hf_testing``); nothing is downloaded. The beam rules of ``generate`` and of the engine agree
under ``early_stopping=True`` (see docs/models.md), so the outputs must be identical
token for token, and the engine's sequence log-probabilities equal transformers' beam scores.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import grpc
import pytest
import torch

transformers = pytest.importorskip("transformers")

from hf_reference import PLAIN_SETTINGS, best_hypotheses  # noqa: E402

from nmtserve.engine import DecodingOptions, Engine  # noqa: E402
from nmtserve.engine.marian_tokenizer import MarianTokenizer  # noqa: E402
from nmtserve.export.exporter import export_model  # noqa: E402
from nmtserve.export.hf_convert import convert_hf  # noqa: E402
from nmtserve.export.hf_testing import corpus_lines, tiny_marian  # noqa: E402
from nmtserve.model.beam_search import beam_search  # noqa: E402
from nmtserve.model.checkpoint import load_checkpoint  # noqa: E402
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb  # noqa: E402
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc  # noqa: E402
from nmtserve.server.background import BackgroundServer  # noqa: E402
from nmtserve.server.config import ServerConfig  # noqa: E402

MAX_NEW_TOKENS = 40
SENTENCES = 200


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_marian(tmp_path_factory.mktemp("hf") / "marian")


@pytest.fixture(scope="module")
def hf(hf_dir: Path):
    model = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
    return model, transformers.MarianTokenizer.from_pretrained(hf_dir)


@pytest.fixture(scope="module")
def checkpoint(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_hf(hf_dir, tmp_path_factory.mktemp("ckpt") / "marian")


@pytest.fixture(scope="module")
def model_dir(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(checkpoint, tmp_path_factory.mktemp("onnx") / "marian", "fp32", progress=False)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Engine:
    return Engine.load(model_dir, threads=1)


def varied_strings(n: int, seed: int = 3) -> list[str]:
    """Corpus lines, cut, re-cased, with punctuation, digits, accents, unknown scripts and stray spaces."""
    rng = random.Random(seed)
    lines = corpus_lines()
    extras = ["é", "ß", "日本語", "  ", "\t", "42", "3.14", "—", "ü", "(", ")", "<", ">>de<<", "&", "’"]
    out = []
    for i in range(n):
        line = lines[i % len(lines)]
        choice = i % 5
        if choice == 1:
            line = line.upper()
        elif choice == 2:
            line = line[: rng.randint(0, len(line))]
        elif choice == 3:
            line = " ".join(rng.choice(extras) + w for w in line.split())
        elif choice == 4:
            line = rng.choice(extras) + line + rng.choice(extras)
        out.append(line)
    return out


def hf_generate(model, tokenizer, texts: list[str], beam: int) -> tuple[list[list[int]], list[float]]:
    """Best hypothesis of each text (without start token and EOS) and its score (log-prob / length)."""
    return best_hypotheses(model, tokenizer, texts, beam, MAX_NEW_TOKENS, **PLAIN_SETTINGS)


OPTIONS = DecodingOptions(
    beam_size=4, length_penalty=1.0, max_length=MAX_NEW_TOKENS, max_length_ratio=1000.0, min_length=1
)


def test_tokenizer_ids_equal_transformers(hf_dir: Path, hf) -> None:
    _, reference = hf
    ours = MarianTokenizer(hf_dir)
    texts = varied_strings(3000)
    want = [reference(text)["input_ids"] for text in texts]
    got = [[*ours.encode(text), ours.eos_id] for text in texts]
    assert sum(len(ids) for ids in got) > 20000
    mismatches = [(t, g, w) for t, g, w in zip(texts, got, want, strict=True) if g != w]
    assert not mismatches, mismatches[:3]
    assert ours.vocab_size == reference.vocab_size


def test_special_pieces_written_in_a_text_are_single_tokens_as_in_transformers(hf_dir: Path, hf) -> None:
    """``</s>``, ``<unk>`` and ``<pad>`` typed into a text are one token each for transformers' added-token
    splitting, wherever they stand and whatever spaces surround them; cutting them into pieces gave other ids."""
    _, reference = hf
    ours = MarianTokenizer(hf_dir)
    rng = random.Random(7)
    written = ["</s>", "<unk>", "<pad>", " </s> ", "  <pad>", "<unk><unk>", "<s>"]
    texts = ["a</s>b", "a </s>b", "\t</s>\n", "</s>", "</s>>>de<<a", "a</s>>>fr<<b", ">>de</s><<", "<unk>>>x<< y"]
    for line in varied_strings(600):
        words = line.split(" ")
        words.insert(rng.randint(0, len(words)), rng.choice(written))
        texts.append(" ".join(words))
    mismatches = [(t, w) for t in texts if [*ours.encode(t), ours.eos_id] != (w := reference(t)["input_ids"])]
    assert not mismatches, mismatches[:3]
    assert sum(ours.eos_id in ours.encode(text) for text in texts) > 100


def test_decode_equals_transformers_skipping_special_tokens(hf_dir: Path, hf) -> None:
    """Any ids a model may emit decode as ``decode(skip_special_tokens=True)`` does: ``<unk>`` is dropped too
    (it used to come back as SentencePiece's "⁇" in the served text)."""
    _, reference = hf
    ours = MarianTokenizer(hf_dir)
    rng = random.Random(11)
    sequences = [[rng.randrange(ours.vocab_size) for _ in range(rng.randint(1, 30))] for _ in range(1500)]
    sequences += [[*ours.encode(text), ours.eos_id] for text in varied_strings(500)]
    mismatches = [
        (ids, w) for ids in sequences if ours.decode(ids) != (w := reference.decode(ids, skip_special_tokens=True))
    ]
    assert not mismatches, mismatches[:3]
    assert sum(ours.unk_id in ids for ids in sequences) > 100


def test_converted_model_log_probs_equal_transformers(checkpoint: Path, hf) -> None:
    reference, tokenizer = hf
    model, _, _ = load_checkpoint(checkpoint)
    texts = corpus_lines()[:64]
    batch = tokenizer(texts, text_target=texts[::-1], return_tensors="pt", padding=True)
    start = torch.full((len(texts), 1), reference.config.decoder_start_token_id)
    target_in = torch.cat([start, batch["labels"][:, :-1]], dim=1)
    with torch.inference_mode():
        want = reference(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=target_in
        ).logits.log_softmax(-1)
        got = model(batch["input_ids"], target_in).log_softmax(-1)
    real = batch["labels"] != tokenizer.pad_token_id
    assert (got - want).abs()[real].max() < 1e-4


def test_engine_beam4_equals_transformers_generate(engine: Engine, hf) -> None:
    model, tokenizer = hf
    texts = corpus_lines()[:SENTENCES]
    want, want_scores = hf_generate(model, tokenizer, texts, beam=4)
    nbests = engine.translate(texts, OPTIONS, max_batch_size=32)
    got = [nbest[0].token_ids for nbest in nbests]
    assert len({len(t) for t in want}) > 3, "the model must end hypotheses at varied lengths"
    assert got == want
    got_scores = [nbest[0].score for nbest in nbests]
    assert max(abs(g - w) for g, w in zip(got_scores, want_scores, strict=True)) < 1e-4


def test_engine_greedy_equals_transformers(engine: Engine, hf) -> None:
    model, tokenizer = hf
    texts = corpus_lines()[200:260]
    want, _ = hf_generate(model, tokenizer, texts, beam=1)
    got = [n[0].token_ids for n in engine.translate(texts, DecodingOptions(**{**OPTIONS.__dict__, "beam_size": 1}))]
    assert got == want


def test_pytorch_reference_equals_transformers(checkpoint: Path, hf, engine: Engine) -> None:
    model, tokenizer = hf
    texts = corpus_lines()[:40]
    want, _ = hf_generate(model, tokenizer, texts, beam=4)
    converted, _, _ = load_checkpoint(checkpoint)
    got = [nbest[0].token_ids for nbest in beam_search(converted, engine.encode_texts(texts), OPTIONS)]
    assert got == want


def test_served_over_grpc_equals_engine(model_dir: Path, engine: Engine, hf) -> None:
    """Served through the real server: the same translations as the engine (whose ids equal transformers')."""
    model, _ = hf
    texts = corpus_lines()[:24]
    want = engine.translate(texts, DecodingOptions(beam_size=4, length_penalty=0.0, max_length=MAX_NEW_TOKENS))
    config = ServerConfig(model=model_dir, port=0, metrics_port=0, threads=1, warmup=False, max_queue_delay_ms=5.0)
    options = pb.DecodingOptions(beam_size=4, length_penalty=0.0, max_length=MAX_NEW_TOKENS)
    with BackgroundServer(config) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        response = stub.Translate(pb.TranslateRequest(texts=texts, options=options))
        info = stub.GetModelInfo(pb.GetModelInfoRequest())
    assert [t.hypotheses[0].text for t in response.translations] == [nbest[0].text for nbest in want]
    assert any(nbest[0].text for nbest in want)
    assert info.vocab_size == model.config.vocab_size


def test_manifest_records_the_family(model_dir: Path) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["model"]["architecture"] == "MarianMTModel"
    assert manifest["tokenizer"] == {"kind": "marian", "clean_up_tokenization_spaces": False}
    assert manifest["family"]["positions"] == "sinusoidal-halves"
    assert manifest["family"]["activation"] == "swish"


def test_engine_equals_ctranslate2_converter(hf_dir: Path, engine: Engine, tmp_path: Path) -> None:
    """A second, independent referee: CTranslate2's own transformers converter on the same directory."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(hf_dir)).convert(str(tmp_path / "ct2"), force=True)
    translator = ctranslate2.Translator(str(tmp_path / "ct2"), intra_threads=1)
    ours = MarianTokenizer(hf_dir)
    ids = json.loads((hf_dir / "vocab.json").read_text())
    texts = corpus_lines()[:SENTENCES]
    results = translator.translate_batch(
        [[*ours.pieces(text), "</s>"] for text in texts],
        beam_size=4,
        length_penalty=1.0,
        max_decoding_length=MAX_NEW_TOKENS,
        min_decoding_length=1,
    )
    want = [[ids[piece] for piece in result.hypotheses[0]] for result in results]
    got = [nbest[0].token_ids for nbest in engine.translate(texts, OPTIONS, max_batch_size=32)]
    assert got == want


def test_cli_convert_then_export(hf_dir: Path, tmp_path: Path, capsys) -> None:
    """The user's commands: ``nmtserve convert hf`` then ``nmtserve export``; the result loads and translates."""
    from nmtserve.cli.main import main

    assert main(["convert", "hf", str(hf_dir), "--out", str(tmp_path / "ckpt")]) == 0
    out = tmp_path / "model"
    flags = ["--source-language", "fr", "--target-language", "en"]
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(out), *flags]) == 0
    capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["languages"] == {"source": "fr", "target": "en"}
    engine = Engine.load(out, threads=1)
    assert engine.translate(corpus_lines()[:2], OPTIONS)[0][0].token_ids


def test_shortlist_table_counts_target_pieces_as_transformers_tokenizes_targets(
    hf_dir: Path, hf, model_dir: Path, engine: Engine, tmp_path: Path
) -> None:
    """Marian has two SentencePiece models: the shortlist's table must read the target side with the target one
    (transformers' ``text_target``), and a whole-vocabulary shortlist of the converted model decodes as it does."""
    from nmtserve.export.shortlist import ShortlistParameters, build_shortlist_export

    _, reference = hf
    ours = MarianTokenizer(hf_dir)
    texts = [t for t in varied_strings(300, seed=5) if not t.startswith(">>")]  # a language code is source-side
    want = [reference(text_target=text)["input_ids"] for text in texts]
    assert [[*ids, ours.eos_id] for ids in ours.encode_target_batch(texts)] == want
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.en").write_text("\n".join(varied_strings(200, seed=6)) + "\n")
    (corpus / "train.de").write_text("\n".join(varied_strings(200, seed=7)) + "\n")
    everything = ShortlistParameters(per_source=0, frequent=engine.info.vocab_size)
    whole = Engine.load(build_shortlist_export(model_dir, tmp_path / "sl", corpus, everything, bleu_split=None))
    sources = engine.encode_texts(texts[:12])
    options = DecodingOptions(beam_size=4)
    got, expected = whole.translate_ids(sources, options), engine.translate_ids(sources, options)
    assert [n[0].token_ids for n in got] == [n[0].token_ids for n in expected]
