"""``nmtserve convert hf`` on bad input: one line naming the problem, exit code 2, nothing left at ``--out``.

And the legacy ``pytorch_model.bin`` path: read with ``weights_only=True``, so a pickle that carries code is
refused rather than run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")

from nmtserve.cli.main import main
from nmtserve.export.hf_testing import tiny_marian
from nmtserve.model.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_marian(tmp_path_factory.mktemp("hf") / "marian")


@pytest.fixture
def copy(hf_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(hf_dir, tmp_path / "src"))


def convert(source: Path, out: Path, capsys) -> tuple[int, str]:
    code = main(["convert", "hf", str(source), "--out", str(out)])
    return code, capsys.readouterr().err


def edit_config(source: Path, **changes) -> None:
    path = source / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def unsupported(source: Path) -> None:
    edit_config(source, architectures=["T5ForConditionalGeneration"], model_type="t5")


def truncate_weights(source: Path) -> None:
    path = source / "model.safetensors"
    os.truncate(path, path.stat().st_size // 2)


CASES = {
    "unsupported architecture": (unsupported, "T5ForConditionalGeneration' is not supported (supported: "),
    "missing tokenizer file": (lambda s: (s / "source.spm").unlink(), "source.spm is missing"),
    "missing vocabulary": (lambda s: (s / "vocab.json").unlink(), "vocab.json is missing"),
    "vocabulary size disagrees": (
        lambda s: edit_config(s, vocab_size=500, decoder_vocab_size=500),
        "disagrees with the tokenizer",
    ),
    "truncated weights": (truncate_weights, "safetensors weights cannot be read (truncated?)"),
    "no weights": (lambda s: (s / "model.safetensors").unlink(), "no weights"),
    "no config": (lambda s: (s / "config.json").unlink(), "config.json: missing"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(case: str, copy: Path, tmp_path: Path, capsys) -> None:
    damage, message = CASES[case]
    damage(copy)
    out = tmp_path / "ckpt"
    code, err = convert(copy, out, capsys)
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no staging folder left either


def test_pytorch_bin_is_read_tensors_only(copy: Path, tmp_path: Path, capsys) -> None:
    state = load_file(copy / "model.safetensors")
    (copy / "model.safetensors").unlink()
    torch.save(state, copy / "pytorch_model.bin")
    code, _ = convert(copy, tmp_path / "ckpt", capsys)
    assert code == 0
    model, _, metadata = load_checkpoint(tmp_path / "ckpt")
    assert metadata["architecture"] == "MarianMTModel"
    assert torch.equal(model.embedding.weight, state["model.shared.weight"])


class _Payload:
    """Unpickling this would run ``os.system``: a weights_only load must refuse it."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_with_code_is_refused(copy: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (copy / "model.safetensors").unlink()
    torch.save({"model.shared.weight": _Payload()}, copy / "pytorch_model.bin")
    code, err = convert(copy, tmp_path / "ckpt", capsys)
    assert code == 2 and "cannot be read as a tensors-only checkpoint" in err
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "ckpt").exists()


def test_banned_tokens_are_never_generated(copy: Path, tmp_path: Path, capsys) -> None:
    """OPUS-MT's generation_config bans <pad>: the converted model's logits bias makes it unreachable."""
    from nmtserve.engine import DecodingOptions
    from nmtserve.model.beam_search import beam_search

    pad = json.loads((copy / "config.json").read_text())["pad_token_id"]
    path = copy / "generation_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"bad_words_ids": [[pad]]}))
    code, _ = convert(copy, tmp_path / "ckpt", capsys)
    assert code == 0
    model, tokenizer, metadata = load_checkpoint(tmp_path / "ckpt")
    assert metadata["suppressed_tokens"] == [pad]
    with torch.inference_mode():
        logits, _ = model.decode(
            torch.tensor([[pad]]),
            model.cross_kv(model.encode(torch.tensor([[5, 6, 0]]))),
            torch.ones(1, 1, 1, 3, dtype=torch.bool),
        )
    assert logits.log_softmax(-1)[0, -1, pad] < -1000
    sources = [[*tokenizer.encode(t), tokenizer.eos_id] for t in ("a program", "the licence you may copy")]
    for nbest in beam_search(model, sources, DecodingOptions(beam_size=4, num_hypotheses=4, max_length=20)):
        assert all(pad not in h.token_ids for h in nbest)
