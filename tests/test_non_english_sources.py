"""Models whose source is not English: converted, exported and served, documents cut by the source's own rules.

Each model is a tiny random Hugging Face model built by transformers (``export/hf_testing.py``); transformers'
``generate()`` is the referee of every sentence, sentencex itself (given the plain ISO 639-1 code) the referee of
the sentence boundaries. The texts are German and Russian with abbreviations that English rules split at
("z. B.", "3. Oktober", "т. е."), and Chinese without spaces.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import unicodedata
import urllib.request
from pathlib import Path

import grpc
import pytest
import sentencex
import torch

transformers = pytest.importorskip("transformers")

from nmtserve.export.exporter import export_model  # noqa: E402
from nmtserve.export.hf_convert import convert_hf  # noqa: E402
from nmtserve.export.hf_testing import tiny_m2m100, tiny_marian  # noqa: E402
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb  # noqa: E402
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc  # noqa: E402
from nmtserve.server.background import BackgroundServer  # noqa: E402
from nmtserve.server.config import ServerConfig  # noqa: E402
from nmtserve.server.documents.segment import reassemble, sentence_spans  # noqa: E402
from nmtserve.server.documents.split import piece_join, split_to_fit  # noqa: E402

GERMAN = (
    "Das kostet z. B. 1.000,50 Euro usw. und mehr. Er sagte „Hallo“ und ging.\n\n"
    "Dr. Müller kam am 3. Oktober. Die Straße ist sehr lang! Ist das ca. 5 km entfernt?"
)
RUSSIAN = "Он сказал «привет». Это, т. е. пример, и т. д. и т. п. Москва — столица России. Как дела?"
CHINESE = "今天天气很好。我们去公园吧！你觉得怎么样？他说：「好的。」然后我们出发了。"
MAX_LENGTH = 12  # output tokens, EOS (and a forced language code) included: generate()'s max_new_tokens
REQUEST_OPTIONS = pb.DecodingOptions(beam_size=4, length_penalty=1.0, max_length=MAX_LENGTH)


def english_rules_differ(text: str, language: str) -> bool:
    return list(sentencex.segment(language, text)) != list(sentencex.segment("en", text))


@pytest.mark.parametrize(
    ("text", "language", "spellings"),
    [
        (GERMAN, "de", ["de", "deu_Latn", "de_DE", "deu", "ger", "de-AT", "DE"]),
        (RUSSIAN, "ru", ["rus_Cyrl", "ru_RU", "rus", "ru-RU"]),
        (CHINESE, "zh", ["zho_Hans", "zho_Hant", "zh_CN", "zh-Hant", "cmn"]),
    ],
)
def test_any_spelling_of_the_source_code_gets_that_languages_rules(text: str, language: str, spellings: list[str]):
    """FLORES (NLLB), mBART, three-letter (Tatoeba OPUS-MT) and BCP 47 codes: the segmenter's own sentences for
    the language, not its English fallback (which splits German and Russian at their abbreviations)."""
    want = [piece.strip() for piece in sentencex.segment(language, text) if piece.strip()]
    want = [part.strip() for sentence in want for part in sentence.split("\n\n") if part.strip()]
    assert language == "zh" or english_rules_differ(text, language)
    for code in spellings:
        assert [text[s.start : s.end] for s in sentence_spans(text, code)] == want, code
    assert len(sentence_spans(CHINESE, "zho_Hans")) == 5  # 。！？ end sentences without spaces


# -- served end to end ------------------------------------------------------------------------------------------


def generate(model, tokenizer, sentences: list[str], forced: int | None = None) -> list[str]:
    """transformers' beam-4 translations, one ``generate()`` call, decoded as the server decodes."""
    batch = tokenizer(sentences, return_tensors="pt", padding=True)
    extra = {} if forced is None else {"forced_bos_token_id": forced}
    with torch.inference_mode():
        out = model.generate(
            **batch,
            num_beams=4,
            do_sample=False,
            max_new_tokens=MAX_LENGTH,
            min_new_tokens=1,
            length_penalty=1.0,
            early_stopping=True,
            no_repeat_ngram_size=0,
            repetition_penalty=1.0,
            **extra,
        )
    codes = set(getattr(tokenizer, "lang_code_to_id", {}).values())  # transformers 5 keeps M2M-100's in decode()
    rows = [[i for i in row if i not in codes] for row in out.tolist()]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]


def referee_document(model, tokenizer, text: str, language: str, forced: int | None = None) -> str:
    """The document as transformers translates it: each sentence of the language's segmentation, put back."""
    spans = sentence_spans(text, language)
    assert len(spans) > 3
    return reassemble(text, spans, generate(model, tokenizer, [text[s.start : s.end] for s in spans], forced))


def serve(model_dir: Path, **settings) -> BackgroundServer:
    config = ServerConfig(model=model_dir, port=0, metrics_port=0, threads=1, warmup=False, max_queue_delay_ms=5.0)
    return BackgroundServer(dataclasses.replace(config, **settings))


@pytest.fixture(scope="module")
def marian_de_en(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An OPUS-MT-style de->en model (its tokenizer config names the pair), converted and exported without any
    language flags."""
    root = tmp_path_factory.mktemp("marian-de-en")
    hf_dir = tiny_marian(root / "hf", pair=("de", "en"))
    return hf_dir, export_model(convert_hf(hf_dir, root / "ckpt"), root / "onnx", "fp32", progress=False)


def test_a_converted_models_pair_is_recorded_and_its_documents_cut_by_its_rules(marian_de_en) -> None:
    """de->en without --source-language: the manifest says de->en (it said en->de), a request naming de is served
    and its German document is cut by German rules; naming en is refused, naming the field."""
    hf_dir, model_dir = marian_de_en
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["languages"] == {"source": "de", "target": "en"}
    model = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(hf_dir)
    want = referee_document(model, tokenizer, GERMAN, "de")
    with serve(model_dir) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        request = pb.TranslateRequest(texts=[GERMAN], options=REQUEST_OPTIONS, format="text", source_language="de")
        got = stub.Translate(request, timeout=120).translations[0].hypotheses[0].text
        with pytest.raises(grpc.RpcError) as wrong:
            stub.Translate(pb.TranslateRequest(texts=["Hallo."], source_language="en"), timeout=60)
    assert got == want
    assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "source_language" in wrong.value.details() and "'de'" in wrong.value.details()


@pytest.fixture(scope="module", params=["m2m100", "nllb"])
def multilingual(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A many-to-many model exported without language flags, its transformers twin and its Russian code."""
    family = request.param
    root = tmp_path_factory.mktemp(family)
    hf_dir = tiny_m2m100(root / "hf", tokenizer=family, extra_ids=2 if family == "nllb" else 0, seed=0)
    model_dir = export_model(convert_hf(hf_dir, root / "ckpt"), root / "onnx", "fp32", progress=False)
    model = transformers.M2M100ForConditionalGeneration.from_pretrained(hf_dir).eval()
    codes = {"m2m100": ("ru", "en", "__en__"), "nllb": ("rus_Cyrl", "eng_Latn", "eng_Latn")}[family]
    return family, model_dir, model, transformers.AutoTokenizer.from_pretrained(hf_dir), codes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_multilingual_models_document_is_cut_by_the_requests_source_language(multilingual) -> None:
    """source_language rus_Cyrl (NLLB) or ru (M2M-100) on a model whose manifest source is English: the Russian
    document is cut by Russian rules (it was cut by the manifest's English ones, at "т." and "д."), and each
    sentence is transformers' translation. LibreTranslate's /translate takes the mixed-case NLLB code as sent."""
    family, model_dir, model, tokenizer, (source, target, target_token) = multilingual
    assert english_rules_differ(RUSSIAN, "ru")
    tokenizer.src_lang = source
    forced = tokenizer.convert_tokens_to_ids(target_token)
    want = referee_document(model, tokenizer, RUSSIAN, source, forced)
    port = free_port()
    with serve(model_dir, http_port=port) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        request = pb.TranslateRequest(
            texts=[RUSSIAN], options=REQUEST_OPTIONS, format="text", source_language=source, target_language=target
        )
        got = stub.Translate(request, timeout=120).translations[0].hypotheses[0].text
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
        served_source, served_target = info.source_language, info.target_language
        body = json.dumps({"q": "Как дела?", "source": served_source, "target": served_target}).encode()
        call = urllib.request.Request(
            f"http://127.0.0.1:{port}/translate", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(call, timeout=60) as answer:
            libre = json.loads(answer.read())
        native = stub.Translate(
            pb.TranslateRequest(
                texts=["Как дела?"], format="text", source_language=served_source, target_language=served_target
            ),
            timeout=60,
        )
    assert got == want
    assert (served_source, served_target) == {"m2m100": ("en", "de"), "nllb": ("eng_Latn", "deu_Latn")}[family]
    assert libre["translatedText"] == native.translations[0].hypotheses[0].text


# -- sentences too long for the model: where they are cut, how their pieces are joined ---------------------------

# One Chinese sentence of four clauses, far over a 10-token limit, then a short one. Each clause ends with a
# full-width comma and no space; cut by halving, it was cut inside 上海 and 晚上.
LONG_CHINESE = "我住在北京，工作在上海，每天坐地铁上班，晚上回家和朋友一起吃饭，周末有时候去公园看书。今天天气很好。"
LIMIT = 10  # max_input_tokens of the zh->en server


@pytest.fixture(scope="module")
def marian_zh_en(tmp_path_factory: pytest.TempPathFactory):
    """An OPUS-MT-style zh->en model whose source tokenizer was trained on Chinese, converted and exported."""
    from nmtserve.export.hf_testing import chinese_lines

    root = tmp_path_factory.mktemp("marian-zh-en")
    hf_dir = tiny_marian(root / "hf", pair=("zh", "en"), source_lines=chinese_lines())
    model_dir = export_model(convert_hf(hf_dir, root / "ckpt"), root / "onnx", "fp32", progress=False)
    model = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
    return model_dir, model, transformers.MarianTokenizer.from_pretrained(hf_dir)


def hf_count(tokenizer):
    return lambda piece: len(tokenizer(piece).input_ids) - 1  # without EOS, as max_input_tokens counts


def test_a_long_chinese_sentence_is_cut_after_its_clause_marks(marian_zh_en) -> None:
    """Real segmentation (zh rules) and real token counts: the long sentence is cut after its full-width commas,
    packed greedily, never by halving inside a word."""
    _, _, tokenizer = marian_zh_en
    count = hf_count(tokenizer)
    sentences = [LONG_CHINESE[s.start : s.end] for s in sentence_spans(LONG_CHINESE, "zh")]
    assert sentences == [
        "我住在北京，工作在上海，每天坐地铁上班，晚上回家和朋友一起吃饭，周末有时候去公园看书。",
        "今天天气很好。",
    ]
    long = sentences[0]
    assert count(long) > LIMIT
    pieces = [long[s.start : s.end] for s in split_to_fit(long, count, LIMIT)]
    assert pieces == [
        "我住在北京，工作在上海，",
        "每天坐地铁上班，",
        "晚上回家和朋友一起吃饭，",
        "周末有时候去公园看书。",
    ]
    assert all(count(piece) <= LIMIT for piece in pieces)


def test_a_run_without_spaces_is_halved_only_between_grapheme_clusters() -> None:
    """Thai (tone marks and vowels above and below their consonant), Devanagari (vowel signs, virama) and an
    emoji family (joined by ZWJ), each a run without spaces or clause marks, counted by code points: no piece
    starts with a combining mark or a joiner, none ends with a joiner, and the family stays whole."""
    family = "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
    for text in ("ที่นี่มีน้ำที่ดีมากและอาหารที่อร่อยมาก", "किताबेंपढ़नाअच्छीआदतहै", "ab" + family + "cd" + family):
        pieces = [text[s.start : s.end] for s in split_to_fit(text, len, 5)]
        assert "".join(pieces) == text and len(pieces) > 2
        for piece in pieces:
            assert not unicodedata.category(piece[0]).startswith("M") and piece[0] != "\u200d", (text, pieces)
            assert piece[-1] != "\u200d", (text, pieces)
        assert all("\u200d" not in piece or family in piece for piece in pieces), (text, pieces)


def test_pieces_are_joined_as_the_target_language_writes() -> None:
    """Unspaced source to spaced target: a space; one spaced-source word halved: nothing; an unspaced target:
    nothing between clauses; a line break: kept. Any spelling of the codes."""
    assert piece_join("", "zh", "en") == " "
    assert piece_join("", "zho_Hans", "eng_Latn") == " "
    assert piece_join("", "ja", "de") == " "
    assert piece_join("", "en", "de") == ""  # a URL or a hash cut in two
    assert piece_join(" ", "en", "de") == " "
    assert piece_join(" ", "en", "zh") == ""
    assert piece_join("", "zh", "ja") == ""
    assert piece_join("\n", "en", "zh") == "\n"


def test_a_long_chinese_sentence_is_translated_piece_by_piece_and_joined_with_spaces(marian_zh_en) -> None:
    """Through a real server with max_input_tokens 10: the long sentence's pieces (cut after ，) are each
    transformers' translation and are joined by spaces in the English answer (they were joined by nothing)."""
    model_dir, model, tokenizer = marian_zh_en
    count = hf_count(tokenizer)
    spans = sentence_spans(LONG_CHINESE, "zh")
    translated = []
    for span in spans:
        sentence = LONG_CHINESE[span.start : span.end]
        pieces = [sentence[s.start : s.end] for s in split_to_fit(sentence, count, LIMIT)]
        translated.append(" ".join(generate(model, tokenizer, pieces)))
    want = reassemble(LONG_CHINESE, spans, translated)
    assert len(split_to_fit(LONG_CHINESE[spans[0].start : spans[0].end], count, LIMIT)) == 4
    with serve(model_dir, max_input_tokens=LIMIT) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        request = pb.TranslateRequest(texts=[LONG_CHINESE], options=REQUEST_OPTIONS, format="text")
        got = stub.Translate(request, timeout=120).translations[0].hypotheses[0].text
    assert got == want
