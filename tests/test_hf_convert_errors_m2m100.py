"""``nmtserve convert hf`` on bad M2M-100 / NLLB input: one line naming the problem, exit 2, nothing at ``--out``.

The Marian cases (unsupported architecture, no config, no weights, a pickle with code) are in
``test_hf_convert_errors.py``; these are the ones whose files or rules differ for the M2M-100 family.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from nmtserve.cli.main import main
from nmtserve.export.hf_testing import tiny_m2m100
from nmtserve.model.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {family: tiny_m2m100(root / family, tokenizer=family) for family in ("m2m100", "nllb")}


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def remove(*names: str):
    def damage(source: Path) -> None:
        for name in names:
            (source / name).unlink()

    return damage


CASES = {
    "m2m100: missing SentencePiece model": (
        "m2m100",
        remove("sentencepiece.bpe.model"),
        "sentencepiece.bpe.model is missing",
    ),
    "m2m100: missing vocabulary": ("m2m100", remove("vocab.json"), "vocab.json is missing"),
    "m2m100: no tokenizer at all": (
        "m2m100",
        remove("vocab.json", "sentencepiece.bpe.model", "tokenizer_config.json"),
        "no M2M-100 / NLLB tokenizer",
    ),
    "m2m100: vocabulary smaller than the tokenizer": (
        "m2m100",
        lambda s: edit_json(s / "config.json", vocab_size=200),
        "vocab_size 200 is smaller than the tokenizer's 269 ids",
    ),
    "m2m100: truncated weights": ("m2m100", lambda s: truncate(s / "model.safetensors"), "cannot be read (truncated?)"),
    "nllb: missing tokenizer config": ("nllb", remove("tokenizer_config.json"), "tokenizer_config.json is missing"),
    "nllb: damaged tokenizer.json": ("nllb", lambda s: truncate(s / "tokenizer.json"), "not a tokenizers file"),
    "nllb: legacy source layout": (
        "nllb",
        lambda s: edit_json(s / "tokenizer_config.json", legacy_behaviour=True),
        "legacy_behaviour (source code after EOS) is not supported",
    ),
    "nllb: vocabulary smaller than the tokenizer": (
        "nllb",
        lambda s: edit_json(s / "config.json", vocab_size=100),
        "is smaller than the tokenizer's",
    ),
    "nllb: truncated weights": ("nllb", lambda s: truncate(s / "model.safetensors"), "cannot be read (truncated?)"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(
    case: str, hf_dirs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    family, damage, message = CASES[case]
    source = Path(shutil.copytree(hf_dirs[family], tmp_path / "src"))
    damage(source)
    out = tmp_path / "ckpt"
    code = main(["convert", "hf", str(source), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no staging folder left either


def test_spare_embedding_rows_are_kept(hf_dirs: dict[str, Path], tmp_path: Path, capsys) -> None:
    """A model with more embedding rows than the tokenizer has ids (NLLB-200: 2) converts and keeps them all."""
    source = Path(shutil.copytree(hf_dirs["nllb"], tmp_path / "src"))
    shutil.rmtree(source / "spm-training")
    assert main(["convert", "hf", str(source), "--out", str(tmp_path / "ckpt")]) == 0
    model, tokenizer, metadata = load_checkpoint(tmp_path / "ckpt")
    assert metadata["architecture"] == "M2M100ForConditionalGeneration"
    assert (
        model.config.vocab_size
        == tokenizer.vocab_size
        == json.loads((source / "config.json").read_text())["vocab_size"]
    )
