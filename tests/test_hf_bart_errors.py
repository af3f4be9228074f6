"""``nmtserve convert hf`` on bad BART / mBART directories: one line naming the problem, exit code 2, nothing at
``--out``; and the family's language rules as the tokenizer enforces them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from nmtserve.cli.main import main
from nmtserve.engine.bart_tokenizer import BartTokenizer
from nmtserve.export.hf_testing_bart import tiny_bart, tiny_mbart


@pytest.fixture(scope="module")
def bart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bart(tmp_path_factory.mktemp("hf") / "bart", max_position_embeddings=64)


@pytest.fixture(scope="module")
def mbart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_mbart(tmp_path_factory.mktemp("hf") / "mbart", style="mbart", max_position_embeddings=64)


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def truncate_weights(source: Path) -> None:
    path = source / "model.safetensors"
    os.truncate(path, path.stat().st_size // 2)


def cut_tokenizer(source: Path) -> None:
    path = source / "tokenizer.json"
    path.write_text(path.read_text()[:1000])


CASES = {
    "missing tokenizer.json": ("bart", lambda s: (s / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    "truncated tokenizer.json": ("bart", cut_tokenizer, "tokenizer.json: not a tokenizers file"),
    "vocabulary size disagrees": (
        "bart",
        lambda s: edit_json(s / "config.json", vocab_size=500),
        "vocab_size 500 disagrees with the tokenizer's tokenizer.json (401 ids)",
    ),
    "truncated weights": ("bart", truncate_weights, "safetensors weights cannot be read (truncated?)"),
    "position table of another size": (
        "bart",
        lambda s: edit_json(s / "config.json", max_position_embeddings=32),
        "model.encoder.embed_positions has 66 rows, not max_position_embeddings + 2 = 34",
    ),
    "mBART vocabulary size disagrees": (
        "mbart",
        lambda s: edit_json(s / "config.json", vocab_size=300),
        "vocab_size 300 disagrees with the tokenizer's tokenizer.json (327 ids)",
    ),
    "mBART-cc25 starting from no language": (
        "mbart",
        lambda s: edit_json(s / "generation_config.json", decoder_start_token_id=2),
        "must start decoding from its target language's code",
    ),
    "mBART model with a BART tokenizer": (
        "mbart",
        lambda s: edit_json(s / "tokenizer_config.json", tokenizer_class="BartTokenizer"),
        "tokenizer_class gives 'bart' special-token rules, which do not fit this mBART model",
    ),
    "unsupported architecture": (
        "mbart",
        lambda s: edit_json(s / "config.json", architectures=["PegasusForConditionalGeneration"], model_type="pegasus"),
        "PegasusForConditionalGeneration' is not supported (supported: BartForConditionalGeneration, ",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(
    case: str, bart_dir: Path, mbart_dir: Path, tmp_path: Path, capsys
) -> None:
    family, damage, message = CASES[case]
    source = Path(shutil.copytree(bart_dir if family == "bart" else mbart_dir, tmp_path / "src"))
    damage(source)
    out = tmp_path / "ckpt"
    code = main(["convert", "hf", str(source), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no staging folder left either


def test_language_rules(bart_dir: Path, mbart_dir: Path, tmp_path: Path) -> None:
    bart = BartTokenizer(bart_dir, {"forced_bos_id": 0})
    assert bart.request_languages("", "") == ([], [], [0])
    with pytest.raises(ValueError, match="source_language 'en_XX': this BART model has no languages"):
        bart.request_languages("en_XX", "")
    cc25 = BartTokenizer(mbart_dir, {"target_language": "ro_RO"})
    en, de = cc25.language_id("en_XX"), cc25.language_id("de_DE")
    assert cc25.request_languages("de_DE", "ro_RO") == ([], [de], [])
    assert cc25.request_languages("", "") == ([], [en], [])  # the saved src_lang is en_XX
    with pytest.raises(ValueError, match="target_language 'de_DE': this mBART model translates into ro_RO only"):
        cc25.request_languages("en_XX", "de_DE")
    with pytest.raises(ValueError, match="source_language 'xx_XX' is not one of the model's: ar_AR, cs_CZ"):
        cc25.request_languages("xx_XX", "")
    mbart50 = BartTokenizer(mbart_dir, {"template": "mbart50"})
    assert mbart50.request_languages("de_DE", "en_XX") == ([de], [], [en])
    with pytest.raises(ValueError, match="target_language is required by this multilingual model"):
        mbart50.request_languages("de_DE", "")
