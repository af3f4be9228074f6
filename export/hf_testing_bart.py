"""Tiny random BART and mBART models with their tokenizers, built with transformers and tokenizers (for tests).

As in ``hf_testing``: nothing is downloaded. BART's byte-level BPE is trained with the ``tokenizers`` library on
corpus lines and wrapped in ``BartTokenizerFast``; mBART's SentencePiece model is trained with sentencepiece and
handed to ``MBartTokenizerFast`` / ``MBart50TokenizerFast`` (which add their language codes); the weights are
transformers' random initialisation, re-scaled so that outputs depend on the source, with the EOS logit raised so
that hypotheses end at varied lengths. LayerNorm weights are randomised too: a converter that dropped or swapped
one would then be caught.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, cast

import sentencepiece as spm

from nmtserve.export.hf_testing import _train_spm, corpus_lines

MBART_STYLES = ("mbart", "mbart50")


def _dims(**dims: Any) -> dict[str, Any]:
    return {
        "d_model": 32,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "max_position_embeddings": 1024,  # as facebook/bart-large and mbart-large-*
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
    } | dims


def _randomise(model, eos_id: int, pad_id: int, eos_bias: float) -> None:
    import torch

    with torch.no_grad():
        model.model.shared.weight.normal_(0.0, 0.3)
        model.model.shared.weight[pad_id] = 0.0
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not model.lm_head:
                module.weight.normal_(0.0, module.in_features**-0.5)
                module.bias.normal_(0.0, 0.02)
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.0, 0.1)
        for stack in (model.model.encoder, model.model.decoder):
            stack.embed_positions.weight.normal_(0.0, 0.1)
        model.final_logits_bias.normal_(0.0, 0.5)
        model.final_logits_bias[0, eos_id] = eos_bias


def tiny_bart(
    directory: Path, vocab_size: int = 400, eos_bias: float = 4.0, seed: int = 0, forced_bos: bool = True, **dims
) -> Path:
    """A random ``BartForConditionalGeneration`` with a byte-level BPE tokenizer; returns ``directory``.

    ``forced_bos``: force ``<s>`` as the first generated token, as facebook/bart-large's config does.
    """
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    bpe.train_from_iterator(corpus_lines(), vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    vocab = bpe.get_vocab()
    vocab["<mask>"] = len(vocab)  # last, as in facebook/bart-*
    work = directory / "bpe-training"
    work.mkdir(exist_ok=True)
    bpe.save_model(str(work))
    merges = [
        tuple(line.split(" "))
        for line in (work / "merges.txt").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    tokenizer = BartTokenizerFast(vocab=vocab, merges=cast(Any, merges))  # pairs, as tokenizers' BPE takes them
    config = BartConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        activation_function="gelu",
        scale_embedding=False,
        **_dims(**dims, normalize_before=False),  # as the Hub's BART configs carry it (CTranslate2 reads it)
    )
    torch.manual_seed(seed)
    model = BartForConditionalGeneration(config).eval()
    _randomise(model, cast(int, config.eos_token_id), cast(int, config.pad_token_id), eos_bias)
    model.generation_config.forced_bos_token_id = tokenizer.bos_token_id if forced_bos else None
    model.generation_config.decoder_start_token_id = config.decoder_start_token_id
    model.generation_config.forced_eos_token_id = None
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tiny_mbart(
    directory: Path,
    style: str = "mbart50",
    vocab_size: int = 300,
    eos_bias: float = 4.0,
    seed: int = 0,
    target_language: str = "ro_RO",
    **dims,
) -> Path:
    """A random ``MBartForConditionalGeneration`` with an mBART (cc25) or mBART-50 tokenizer; returns ``directory``.

    ``mbart50``: decodes from EOS, the target language forced first (per request: facebook/mbart-large-50-*).
    ``mbart``: a cc25 fine-tune whose decoder starts from its one target language's code (facebook/mbart-large-en-ro).
    """
    import torch
    from transformers import MBart50Tokenizer, MBartConfig, MBartForConditionalGeneration, MBartTokenizer

    if style not in MBART_STYLES:
        raise ValueError(f"style must be one of {MBART_STYLES}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    work = directory / "spm-training"
    work.mkdir(exist_ok=True)
    processor = spm.SentencePieceProcessor(model_file=str(_train_spm(corpus_lines(), work / "spm", vocab_size)))
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    tokenizer: Any
    if style == "mbart50":
        tokenizer = MBart50Tokenizer(vocab=pieces, src_lang="en_XX", tgt_lang=target_language)
    else:
        fairseq = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces[3:]]
        tokenizer = MBartTokenizer(vocab=fairseq, src_lang="en_XX", tgt_lang=target_language)
    target = int(tokenizer.convert_tokens_to_ids(target_language))
    config = MBartConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=0,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id if style == "mbart50" else target,
        activation_function="gelu",
        scale_embedding=True,  # as facebook/mbart-large-50
        # as the Hub's configs carry them (CTranslate2's converter reads them; transformers ignores them)
        **_dims(
            **dims, normalize_before=True, tokenizer_class=f"{'MBart50' if style == 'mbart50' else 'MBart'}Tokenizer"
        ),
    )
    torch.manual_seed(seed)
    model = MBartForConditionalGeneration(config).eval()
    _randomise(model, cast(int, config.eos_token_id), cast(int, config.pad_token_id), eos_bias)
    model.generation_config.decoder_start_token_id = config.decoder_start_token_id
    model.generation_config.forced_bos_token_id = None
    model.generation_config.forced_eos_token_id = None
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


EXTRAS = (
    "é",
    "ß",
    "日本語",
    "  ",
    "\t",
    "\n",
    "42",
    "3.14",
    "—",
    "ü",
    "(",
    ")",
    "<s>",
    "</s>",
    "de_DE",
    "&",
    "’",
    "😀",
)


def varied_strings(n: int, seed: int = 3) -> list[str]:
    """Corpus lines, cut, re-cased, with punctuation, digits, accents, emoji, special tokens, stray spaces."""
    rng = random.Random(seed)
    lines = corpus_lines()
    out = []
    for i in range(n):
        line = lines[i % len(lines)]
        choice = i % 6
        if choice == 1:
            line = line.upper()
        elif choice == 2:
            line = line[: rng.randint(0, len(line))]
        elif choice == 3:
            line = " ".join(rng.choice(EXTRAS) + w for w in line.split())
        elif choice == 4:
            line = rng.choice(EXTRAS) + line + rng.choice(EXTRAS)
        elif choice == 5:
            line = "  " + line.replace(" ", "   ") + " "
        out.append(line)
    return out
