"""LibreTranslate's API on multilingual models: ``/languages`` lists every direction a model serves in
LibreTranslate's codes, ``/translate`` and ``/translate_file`` take those codes (and the model's own) and the
model translates the pair asked for.

Real servers on 127.0.0.1 (a model repository: a tiny NLLB model with all of NLLB-200's codes, the default, beside
an OPUS-MT-style br->en model; a lone tiny M2M-100 model), libretranslatepy and requests as the clients, the
offline engine (the model's own language codes as prefixes) as the referee of every translation.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import urllib.request
from pathlib import Path

import pytest
import requests
from libretranslatepy import LibreTranslateAPI

transformers = pytest.importorskip("transformers")

from nmtserve.engine import DecodingOptions, Engine  # noqa: E402
from nmtserve.export.exporter import export_model  # noqa: E402
from nmtserve.export.hf_convert import convert_hf  # noqa: E402
from nmtserve.export.hf_testing import tiny_m2m100, tiny_marian  # noqa: E402
from nmtserve.server.background import BackgroundServer  # noqa: E402
from nmtserve.server.config import ServerConfig  # noqa: E402
from nmtserve.server.http.libre_languages import ISO_CODES  # noqa: E402

NLLB_200 = transformers.models.nllb.tokenization_nllb.FAIRSEQ_LANGUAGE_CODES
TEXT = "the program is free"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(**settings) -> BackgroundServer:
    base = dict(port=0, metrics_port=0, http_port=free_port(), threads=1, warmup=False, max_queue_delay_ms=5.0)
    return BackgroundServer(ServerConfig(**(base | settings)))


def base_url(server: BackgroundServer) -> str:
    return f"http://127.0.0.1:{server.server.http_port}"


def referee(engine: Engine, text: str, source: str, target: str, config: ServerConfig) -> str:
    """The engine's translation with the model's own codes: the source code first, the target code forced."""
    tokenizer = engine.tokenizer
    ids = [tokenizer.language_id(source), *engine.encode_texts([text])[0]]
    options = DecodingOptions(beam_size=config.beam_size, max_length=config.max_length)
    best = engine.translate_ids([ids], options, target_prefixes=[[tokenizer.language_id(target)]])[0][0]
    return tokenizer.decode(best.token_ids)


def post(server: BackgroundServer, fields: dict[str, str]) -> tuple[int, dict]:
    answer = requests.post(f"{base_url(server)}/translate", json=fields, timeout=60)
    return answer.status_code, answer.json()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """nllb (every NLLB-200 code; manifest eng_Latn->deu_Latn; the default) and marian-br-en."""
    work, root = tmp_path_factory.mktemp("libre-builds"), tmp_path_factory.mktemp("libre-repo")
    built = {
        "nllb": tiny_m2m100(work / "nllb", tokenizer="nllb", extra_ids=2, languages=NLLB_200, eos_bias=1.0),
        "marian-br-en": tiny_marian(work / "br-en", pair=("br", "en")),  # Breton: not in NLLB-200
    }
    exports = {}
    for name, hf_dir in built.items():
        exports[name] = export_model(convert_hf(hf_dir, work / f"{name}-ckpt"), work / name, "fp32", progress=False)
        (root / name).mkdir()
        os.symlink(exports[name], root / name / "1")
    return root, exports


@pytest.fixture(scope="module")
def repository_server(repository):
    with serve(model_repository=repository[0], default_model="nllb", repository_poll_s=0) as server:
        yield server


def test_languages_lists_every_direction_in_libretranslate_codes(repository_server) -> None:
    """Every NLLB-200 code as a source with every other as a target (it listed eng_Latn->deu_Latn only, the
    manifest's pair), in LibreTranslate 1.9's codes where there is a clean one, the model's own elsewhere; the
    br->en model's pair beside them; the listing is cached and compressed for a client that accepts gzip."""
    client = LibreTranslateAPI(base_url(repository_server))
    listing = client.languages()
    by_code = {entry["code"]: entry for entry in listing}
    assert listing[0]["code"] == "en"  # the default model's manifest source first
    assert len(listing) == len(NLLB_200) + 1  # + br; NLLB-200's codes are all distinct once mapped
    for code in ("de", "en", "fr", "ru", "ar", "fa", "ms", "nb", "zh-Hans", "zh-Hant"):
        assert code in by_code, code
    for own in ("kas_Arab", "kas_Deva", "knc_Latn", "arz_Arab", "prs_Arab", "yue_Hant", "ace_Latn"):
        assert own in by_code, own  # no clean two-letter code: several of the model's for one, a variety, none
    for gone in ("deu_Latn", "eng_Latn", "zho_Hans", "arb_Arab", "ks", "zh", "zt"):
        assert gone not in by_code, gone
    de_targets = by_code["de"]["targets"]
    assert len(de_targets) == len(NLLB_200) - 1 and "de" not in de_targets
    assert {"en", "fr", "zh-Hant", "kas_Deva"} <= set(de_targets)
    assert by_code["br"]["targets"] == ["en"] and "br" not in by_code["en"]["targets"]
    if (ISO_CODES / "iso_639-3.json").is_file():  # Debian's iso-codes names the languages
        names = {code: by_code[code]["name"] for code in ("de", "zh-Hans", "zh-Hant", "kas_Deva", "br")}
        assert names == {
            "de": "German",
            "zh-Hans": "Chinese (Simplified)",
            "zh-Hant": "Chinese (Traditional)",
            "kas_Deva": "Kashmiri (Devanagari)",
            "br": "Breton",
        }
    plain = requests.get(f"{base_url(repository_server)}/languages", headers={"Accept-Encoding": "identity"})
    request = urllib.request.Request(f"{base_url(repository_server)}/languages", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.headers["Content-Encoding"] == "gzip"
        assert json.loads(gzip.decompress(answer.read())) == listing == plain.json()
    assert len(plain.content) < 400_000


def test_translate_maps_libretranslate_codes_to_the_models(repository_server, repository) -> None:
    """de->fr, zh->zh-Hant, ar->en on the NLLB model (each was "not supported") with LibreTranslate's codes,
    LibreTranslate's older zh/zt and the model's own codes in any case: the model's translation of that pair;
    br->en goes to the br->en model; a pair nobody serves and an ambiguous code are LibreTranslate's 400."""
    config = repository_server.server.config
    nllb = Engine.load(repository[1]["nllb"], threads=1)
    client = LibreTranslateAPI(base_url(repository_server))
    cases = [
        ("de", "fr", "deu_Latn", "fra_Latn"),
        ("DEU_LATN", "fra_latn", "deu_Latn", "fra_Latn"),
        ("zh-Hans", "zh-Hant", "zho_Hans", "zho_Hant"),
        ("zh", "zt", "zho_Hans", "zho_Hant"),
        ("ar", "en", "arb_Arab", "eng_Latn"),
        ("kas_deva", "pt", "kas_Deva", "por_Latn"),
    ]
    for source, target, own_source, own_target in cases:
        want = referee(nllb, TEXT, own_source, own_target, config)
        assert client.translate(TEXT, source, target) == want, (source, target)
    assert referee(nllb, TEXT, "deu_Latn", "fra_Latn", config) != referee(nllb, TEXT, "deu_Latn", "rus_Cyrl", config)
    marian = Engine.load(repository[1]["marian-br-en"], threads=1)
    options = DecodingOptions(beam_size=config.beam_size, max_length=config.max_length)
    assert client.translate(TEXT, "br", "en") == marian.translate([TEXT], options)[0][0].text
    assert post(repository_server, {"q": TEXT, "source": "br", "target": "de"}) == (
        400,
        {"error": "de is not supported"},
    )
    assert post(repository_server, {"q": TEXT, "source": "xx", "target": "en"}) == (
        400,
        {"error": "xx is not supported"},
    )
    assert post(repository_server, {"q": TEXT, "source": "ks", "target": "en"}) == (
        400,
        {"error": "ks is not supported"},
    )


def test_translate_file_maps_libretranslate_codes_to_the_models(repository_server, repository) -> None:
    """A text file de->zh-Hant: the model's zho_Hant translation, named with the listed code."""
    config = repository_server.server.config
    nllb = Engine.load(repository[1]["nllb"], threads=1)
    answer = requests.post(
        f"{base_url(repository_server)}/translate_file",
        data={"source": "de", "target": "zh-Hant"},
        files={"file": ("note.txt", f"{TEXT}\n".encode())},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    download = requests.get(answer.json()["translatedFileUrl"], timeout=30)
    assert "note.zh-Hant.txt" in download.headers["Content-Disposition"]
    assert download.content.decode() == referee(nllb, TEXT, "deu_Latn", "zho_Hant", config) + "\n"


@pytest.fixture(scope="module")
def m2m100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("libre-m2m100")
    return export_model(convert_hf(tiny_m2m100(work / "hf"), work / "ckpt"), work / "onnx", "fp32", progress=False)


def test_a_lone_multilingual_model_translates_the_pair_asked_for(m2m100: Path) -> None:
    """One M2M-100 model (no repository; manifest en->de): /languages lists its 100 codes both ways (zh as
    zh-Hans), and fr->ru is its fr->ru translation; the request's codes reached it (they were dropped for a lone
    model, which translated with its manifest's pair)."""
    engine = Engine.load(m2m100, threads=1)
    with serve(model=m2m100) as server:
        config = server.server.config
        client = LibreTranslateAPI(base_url(server))
        listing = {entry["code"]: entry["targets"] for entry in client.languages()}
        got = client.translate(TEXT, "fr", "ru")
        chinese = client.translate(TEXT, "zh-Hans", "en")
        settings = requests.get(f"{base_url(server)}/frontend/settings", timeout=30).json()["language"]
    assert len(listing) == len(engine.tokenizer.languages) == 100
    assert "zh-Hans" in listing and "zh" not in listing and len(listing["fr"]) == 99
    assert got == referee(engine, TEXT, "fr", "ru", config) != referee(engine, TEXT, "en", "de", config)
    assert chinese == referee(engine, TEXT, "zh", "en", config)
    assert (settings["source"]["code"], settings["target"]["code"]) == ("en", "de")
