"""Hugging Face M2M-100 and NLLB-200 models: convert, export, decode and serve, with transformers as the referee.

Each family is a tiny random ``M2M100ForConditionalGeneration`` built by transformers from a config, with its own
tokenizer (M2M-100: SentencePiece + ``vocab.json`` + ``__xx__`` codes; NLLB: the ``tokenizers`` model with FLORES
codes) trained here on corpus lines; nothing is downloaded. The target language is forced as the first generated
token, per sentence: every batch here mixes two target languages, while ``generate()`` takes one
``forced_bos_token_id`` per call. Under ``early_stopping=True`` the beam rules agree (docs/models.md), so the
outputs must be identical token for token and the scores within 1e-4.
"""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch

transformers = pytest.importorskip("transformers")

from hf_reference import PLAIN_SETTINGS, best_hypotheses_by_group  # noqa: E402

from nmtserve.engine import DecodingOptions, Engine  # noqa: E402
from nmtserve.engine.m2m100_tokenizer import M2M100Tokenizer  # noqa: E402
from nmtserve.engine.nllb_tokenizer import NllbTokenizer  # noqa: E402
from nmtserve.export.exporter import export_model  # noqa: E402
from nmtserve.export.hf_convert import convert_hf  # noqa: E402
from nmtserve.export.hf_testing import corpus_lines, tiny_m2m100  # noqa: E402
from nmtserve.model.beam_search import beam_search  # noqa: E402
from nmtserve.model.checkpoint import load_checkpoint  # noqa: E402
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb  # noqa: E402
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc  # noqa: E402
from nmtserve.server.background import BackgroundServer  # noqa: E402
from nmtserve.server.config import ServerConfig  # noqa: E402

MAX_NEW_TOKENS = 40
SENTENCES = 200
# Per family: the tokenizer class, a source code, two target codes, embedding rows beyond the tokenizer's, and the
# seed of the random model (one whose outputs end at varied lengths: the test checks that it does).
FAMILIES = {
    "m2m100": (M2M100Tokenizer, "en", ("de", "fr"), 0, 0),
    "nllb": (NllbTokenizer, "eng_Latn", ("deu_Latn", "fra_Latn"), 2, 2),  # NLLB-200's embedding has 2 spare rows
}
OPTIONS = DecodingOptions(
    beam_size=4, length_penalty=1.0, max_length=MAX_NEW_TOKENS, max_length_ratio=1000.0, min_length=1
)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def hf_dir(family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    extra_ids, seed = FAMILIES[family][3:]
    return tiny_m2m100(tmp_path_factory.mktemp("hf") / family, tokenizer=family, extra_ids=extra_ids, seed=seed)


@pytest.fixture(scope="module")
def hf(hf_dir: Path):
    model = transformers.M2M100ForConditionalGeneration.from_pretrained(hf_dir).eval()
    return model, transformers.AutoTokenizer.from_pretrained(hf_dir)


@pytest.fixture(scope="module")
def checkpoint(hf_dir: Path, family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_hf(hf_dir, tmp_path_factory.mktemp("ckpt") / family)


@pytest.fixture(scope="module")
def model_dir(checkpoint: Path, family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(checkpoint, tmp_path_factory.mktemp("onnx") / family, "fp32", progress=False)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Engine:
    return Engine.load(model_dir, threads=1)


def varied_strings(n: int, seed: int = 3) -> list[str]:
    """Corpus lines, cut, re-cased, with punctuation, digits, accents, other scripts, special tokens and spaces."""
    rng = random.Random(seed)
    lines = corpus_lines()
    extras = ["é", "ß", "日本語", "  ", "\t", "42", "3.14", "—", "ü", "(", ")", "<", "</s>", "__de__", "deu_Latn", "’"]
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


def targets_for(family: str, count: int) -> list[str]:
    """Alternating target codes: every batch mixes both."""
    pair = FAMILIES[family][2]
    return [pair[i % 2] for i in range(count)]


def our_sources(engine: Engine, family: str, texts: list[str]) -> list[list[int]]:
    tokenizer = engine.tokenizer
    code = tokenizer.language_id(FAMILIES[family][1])
    return [[code, *ids] for ids in engine.encode_texts(texts)]


def our_prefixes(engine: Engine, targets: list[str]) -> list[list[int]]:
    return [[engine.tokenizer.language_id(code)] for code in targets]


def hf_generate(model, tokenizer, family: str, texts: list[str], targets: list[str], beam: int):
    """Best hypothesis of each text (without the start token and EOS, with the forced code) and its score; one
    ``generate()`` call per target language, as ``forced_bos_token_id`` is one id per call."""
    tokenizer.src_lang = FAMILIES[family][1]

    def settings_of(code) -> dict:
        return {**PLAIN_SETTINGS, "forced_bos_token_id": tokenizer.convert_tokens_to_ids(_code_token(family, code))}

    return best_hypotheses_by_group(model, tokenizer, texts, list(targets), beam, MAX_NEW_TOKENS, settings_of)


def _code_token(family: str, code: str) -> str:
    return f"__{code}__" if family == "m2m100" else code


def test_tokenizer_ids_equal_transformers(hf_dir: Path, hf, family: str) -> None:
    _, reference = hf
    ours = FAMILIES[family][0](hf_dir)
    texts = varied_strings(3000)
    for source in (FAMILIES[family][1], FAMILIES[family][2][0]):
        reference.src_lang = source
        want = [reference(text)["input_ids"] for text in texts]
        got = [[ours.language_id(source), *ours.encode(text), ours.eos_id] for text in texts]
        mismatches = [(t, g, w) for t, g, w in zip(texts, got, want, strict=True) if g != w]
        assert not mismatches, mismatches[:3]
    assert sum(len(ids) for ids in got) > 20000
    assert ours.vocab_size == (len(reference) if family == "nllb" else reference.vocab_size + 100 + 8)
    assert set(FAMILIES[family][2]) <= set(ours.languages)
    decoded = [ours.decode(ids[1:]) for ids in want[:500]]  # transformers keeps M2M-100's code in decode(): cut it
    assert decoded == [reference.decode(ids[1:], skip_special_tokens=True) for ids in want[:500]]


def test_converted_model_log_probs_equal_transformers(checkpoint: Path, hf, family: str) -> None:
    reference, tokenizer = hf
    model, _, _ = load_checkpoint(checkpoint)
    texts = corpus_lines()[:64]
    tokenizer.src_lang = FAMILIES[family][1]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = tokenizer(texts[::-1], return_tensors="pt", padding=True)["input_ids"]
    start = torch.full((len(texts), 1), reference.config.decoder_start_token_id)
    target_in = torch.cat([start, labels[:, :-1]], dim=1)
    real = labels != tokenizer.pad_token_id
    # float64 shows the computation is the same (1e-13); in float32 the test model's large activations (pre-norm,
    # gain-3 weights) leave rounding differences of up to 1e-4 at the largest logits.
    for dtype, tolerance in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
        theirs, ours = copy.deepcopy(reference).to(dtype), copy.deepcopy(model).to(dtype)
        with torch.inference_mode():
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            want = theirs(**inputs, decoder_input_ids=target_in).logits.log_softmax(-1)
            got = ours(batch["input_ids"], target_in).log_softmax(-1)
        assert (got - want).abs()[real].max() < tolerance, dtype


def test_engine_beam4_equals_transformers_generate(engine: Engine, hf, family: str) -> None:
    model, tokenizer = hf
    texts = corpus_lines()[:SENTENCES]
    targets = targets_for(family, len(texts))
    want, want_scores = hf_generate(model, tokenizer, family, texts, targets, beam=4)
    nbests = engine.translate_ids(
        our_sources(engine, family, texts), OPTIONS, max_batch_size=32, target_prefixes=our_prefixes(engine, targets)
    )
    got = [nbest[0].token_ids for nbest in nbests]
    assert len({len(t) for t in want}) > 3, "the model must end hypotheses at varied lengths"
    assert got == want
    got_scores = [nbest[0].score for nbest in nbests]
    assert max(abs(g - w) for g, w in zip(got_scores, want_scores, strict=True)) < 1e-4


def test_engine_greedy_equals_transformers(engine: Engine, hf, family: str) -> None:
    model, tokenizer = hf
    texts = corpus_lines()[200:260]
    targets = targets_for(family, len(texts))
    want, _ = hf_generate(model, tokenizer, family, texts, targets, beam=1)
    greedy = DecodingOptions(**{**OPTIONS.__dict__, "beam_size": 1})
    got = engine.translate_ids(
        our_sources(engine, family, texts), greedy, target_prefixes=our_prefixes(engine, targets)
    )
    assert [n[0].token_ids for n in got] == want


def test_pytorch_reference_equals_transformers(checkpoint: Path, hf, engine: Engine, family: str) -> None:
    model, tokenizer = hf
    texts = corpus_lines()[:40]
    targets = targets_for(family, len(texts))
    want, _ = hf_generate(model, tokenizer, family, texts, targets, beam=4)
    converted, _, _ = load_checkpoint(checkpoint)
    sources, prefixes = our_sources(engine, family, texts), our_prefixes(engine, targets)
    got = [nbest[0].token_ids for nbest in beam_search(converted, sources, OPTIONS, target_prefixes=prefixes)]
    assert got == want


def test_engine_equals_ctranslate2_converter(
    hf_dir: Path, hf, engine: Engine, family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second, independent referee: CTranslate2's own transformers converter, its ``target_prefix`` the code."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from ctranslate2.converters import TransformersConverter

    _, tokenizer = hf
    if family == "m2m100":
        # CTranslate2 (4.x) appends the language tokens it finds in special_tokens_map["additional_special_tokens"],
        # which transformers 5's M2M100Tokenizer no longer fills: its vocabulary would lack the 100 codes and the
        # conversion fail. Hand it the codes under that name (in id order, as transformers numbers them).
        cls = type(tokenizer)
        original = cls.special_tokens_map

        def with_codes(self) -> dict:
            return {**original.fget(self), "additional_special_tokens": list(self.lang_token_to_id)}

        monkeypatch.setattr(cls, "special_tokens_map", property(with_codes))
    TransformersConverter(str(hf_dir)).convert(str(tmp_path / "ct2"), force=True)
    translator = ctranslate2.Translator(str(tmp_path / "ct2"), intra_threads=1)
    texts = corpus_lines()[:SENTENCES]
    targets = targets_for(family, len(texts))
    sources = our_sources(engine, family, texts)
    results = translator.translate_batch(
        [tokenizer.convert_ids_to_tokens(ids) for ids in sources],
        target_prefix=[[_code_token(family, code)] for code in targets],
        beam_size=4,
        length_penalty=1.0,
        max_decoding_length=MAX_NEW_TOKENS,
        min_decoding_length=1,
    )
    # CTranslate2's own vocabulary maps its tokens back: transformers' maps the made-up words to <unk>
    vocabulary = json.loads((tmp_path / "ct2" / "shared_vocabulary.json").read_text(encoding="utf-8"))
    ids = {token: i for i, token in enumerate(vocabulary)}
    want = [[ids[token] for token in result.hypotheses[0]] for result in results]
    got = engine.translate_ids(sources, OPTIONS, max_batch_size=32, target_prefixes=our_prefixes(engine, targets))
    assert [nbest[0].token_ids for nbest in got] == want


def test_served_over_grpc_with_two_targets(model_dir: Path, engine: Engine, family: str) -> None:
    """Two concurrent requests for different target languages (one batch): each gets the engine's translations;
    GetModelInfo lists the codes; an unknown or missing code is INVALID_ARGUMENT listing the valid ones."""
    texts = corpus_lines()[:24]
    source, (first, second) = FAMILIES[family][1], FAMILIES[family][2]
    options = DecodingOptions(beam_size=4, length_penalty=0.0, max_length=MAX_NEW_TOKENS)
    want = {
        code: engine.translate_ids(
            our_sources(engine, family, texts), options, target_prefixes=our_prefixes(engine, [code] * len(texts))
        )
        for code in (first, second)
    }
    config = ServerConfig(model=model_dir, port=0, metrics_port=0, threads=1, warmup=False, max_queue_delay_ms=50.0)
    request_options = pb.DecodingOptions(beam_size=4, length_penalty=0.0, max_length=MAX_NEW_TOKENS)
    with BackgroundServer(config) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TranslatorStub(channel)

        def translate(code: str) -> pb.TranslateResponse:
            request = pb.TranslateRequest(
                texts=texts, options=request_options, source_language=source, target_language=code
            )
            return stub.Translate(request, timeout=120)

        with ThreadPoolExecutor(2) as pool:
            responses = dict(zip((first, second), pool.map(translate, (first, second)), strict=True))
        info = stub.GetModelInfo(pb.GetModelInfoRequest())
        cli_out = _cli_translate(server.address, texts[:3], source, second)
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Translate(pb.TranslateRequest(texts=["x"], source_language=source, target_language="xx_Yyyy"))
        # No target code: the manifest's target, which an export without --target-language takes from the
        # tokenizer config's tgt_lang ("de" for M2M-100, "deu_Latn" for NLLB: both the first pair's second code).
        unnamed = pb.TranslateRequest(texts=texts, options=request_options, source_language=source)
        defaulted = stub.Translate(unnamed)
        with pytest.raises(grpc.RpcError) as bad_source:
            stub.Translate(pb.TranslateRequest(texts=["x"], source_language="klingon", target_language=first))
    for code in (first, second):
        texts_got = [t.hypotheses[0].text for t in responses[code].translations]
        assert texts_got == [engine.tokenizer.decode(nbest[0].token_ids) for nbest in want[code]]
    assert responses[first].translations != responses[second].translations
    assert cli_out == [t.hypotheses[0].text for t in responses[second].translations[:3]]
    assert set(info.languages) == set(engine.tokenizer.languages) and first in info.languages
    texts_of = lambda response: [t.hypotheses[0].text for t in response.translations]  # noqa: E731
    assert texts_of(defaulted) == texts_of(responses[first])  # scores: float noise of another batch layout
    errors = [(unknown, "target_language"), (bad_source, "source_language")]
    for error, field in errors:
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in error.value.details() and second in error.value.details()


def _cli_translate(address: str, texts: list[str], source: str, target: str) -> list[str]:
    """``nmtserve translate --server ... --source-language ... --target-language ...`` with ``texts`` on stdin."""
    command = [sys.executable, "-m", "nmtserve.cli.main", "translate", "--server", address, "--beam-size", "4"]
    command += ["--length-penalty", "0", "--max-length", str(MAX_NEW_TOKENS)]
    command += ["--source-language", source, "--target-language", target]
    run = subprocess.run(command, input="\n".join(texts) + "\n", capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def test_manifest_records_the_family(model_dir: Path, family: str) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["model"]["architecture"] == "M2M100ForConditionalGeneration"
    assert manifest["tokenizer"] == {"kind": family}
    assert manifest["family"]["positions"] == "sinusoidal-fairseq"
    assert manifest["family"]["position_offset"] == 2 and manifest["family"]["pre_norm"] is True
    assert manifest["special_ids"]["decoder_start"] == 2 and manifest["special_ids"]["bos"] == 0
