"""Tiny random Hugging Face models of the supported families, built with transformers itself (for tests).

Nothing is downloaded: the tokenizers are trained here on lines of the licence texts every Debian system ships
(or on generated sentences where those are absent), and the weights are transformers' own random initialisation.
A random model seldom chooses EOS, which would leave the beam's EOS rules untested, so the EOS entry of the
logits bias is raised: hypotheses then end at varied, source-dependent lengths.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import sentencepiece as spm

LICENCES = Path("/usr/share/common-licenses")


def corpus_lines(limit: int = 3000, seed: int = 0) -> list[str]:
    """Varied non-empty lines: the shipped licence texts, topped up with generated sentences."""
    lines: list[str] = []
    if LICENCES.is_dir():
        for path in sorted(LICENCES.iterdir()):
            if path.is_file():
                lines += [line.strip() for line in path.read_text(errors="ignore").splitlines() if line.strip()]
    rng = random.Random(seed)
    words = [
        "the",
        "a",
        "program",
        "file",
        "copy",
        "licence",
        "work",
        "you",
        "may",
        "not",
        "with",
        "for",
        "this",
        "of",
        "and",
        "to",
        "in",
        "is",
        "be",
    ]
    while len(lines) < limit:
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 15))).capitalize() + ".")
    rng.shuffle(lines)
    return lines[:limit]


def _train_spm(lines: list[str], prefix: Path, vocab_size: int) -> Path:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


def tiny_marian(
    directory: Path,
    vocab_size: int = 160,
    eos_bias: float = 4.0,
    seed: int = 0,
    languages: tuple[str, ...] = (),
    total_vocab: int | None = None,
    **dims,
) -> Path:
    """A random ``MarianMTModel`` with its tokenizer, saved as ``save_pretrained`` writes it; returns ``directory``.

    ``languages``: target codes of a multilingual model, as ``>>xx<<`` tokens in the vocabulary.
    ``total_vocab``: pad the vocabulary with made-up pieces to this size (real-size speed measurements).
    """
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = corpus_lines()
    work = directory / "spm-training"
    work.mkdir(exist_ok=True)
    source = _train_spm(lines[::2], work / "source", vocab_size)
    target = _train_spm(lines[1::2], work / "target", vocab_size)
    pieces: list[str] = []
    for model in (source, target):
        processor = spm.SentencePieceProcessor(model_file=str(model))
        pieces += [processor.id_to_piece(i) for i in range(processor.get_piece_size()) if not processor.is_control(i)]
    vocab = {"</s>": 0, "<unk>": 1} | {f">>{code}<<": 2 + i for i, code in enumerate(languages)}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    while total_vocab is not None and len(vocab) < total_vocab - 1:
        vocab[f"\u2581filler{len(vocab)}"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    (work / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    tokenizer = MarianTokenizer(str(source), str(target), str(work / "vocab.json"))
    settings: dict[str, Any] = {
        "d_model": 32,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "max_position_embeddings": 512,
        "activation_function": "swish",  # as OPUS-MT models are trained
    } | dims
    config = MarianConfig(
        vocab_size=len(vocab),
        decoder_vocab_size=len(vocab),
        pad_token_id=vocab["<pad>"],
        eos_token_id=0,
        decoder_start_token_id=vocab["<pad>"],
        forced_eos_token_id=None,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        **settings,
    )
    torch.manual_seed(seed)
    model = MarianMTModel(config).eval()
    with torch.no_grad():  # transformers' init (std 0.02) lets the positions drown the tokens: outputs ignore sources
        model.model.shared.weight.normal_(0.0, 0.3)
        model.model.shared.weight[config.pad_token_id] = 0.0  # as in trained Marian models: the start is a zero vector
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not model.lm_head:
                module.weight.normal_(0.0, module.in_features**-0.5)
        model.final_logits_bias.normal_(0.0, 0.5)
        model.final_logits_bias[0, 0] = eos_bias
    model.generation_config.bad_words_ids = None
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
