"""Tiny random Hugging Face models of the supported families, built with transformers itself (for tests).

Nothing is downloaded: the tokenizers are trained here on lines of the licence texts every Debian system ships
(or on generated sentences where those are absent), and the weights are transformers' own random initialisation.
A random model seldom chooses EOS, which would leave the beam's EOS rules untested, so the EOS entry of the
logits bias is raised: hypotheses then end at varied, source-dependent lengths.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
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


CHINESE_WORDS = (
    "我", "你", "他", "她", "我们", "他们", "住", "在", "北京", "上海", "工作", "每天",
    "坐", "地铁", "上班", "今天", "天气", "很", "好", "去", "公园", "吧", "觉得",
    "怎么样", "说", "然后", "出发", "了", "晚上", "回家", "吃饭", "朋友", "一起", "看",
    "电影", "学习", "中文", "喜欢", "早上", "喝", "茶", "咖啡", "周末", "有时候", "也",
    "书", "买", "商店", "开车", "公司", "的", "是", "不", "和",
)  # fmt: skip


def chinese_lines(limit: int = 3000, seed: int = 0) -> list[str]:
    """Generated Chinese sentences (no spaces; clauses ended by ，、；： and sentences by 。！？), for a source
    tokenizer that has seen Chinese: the licence texts have none, and every Chinese character would be unknown."""
    rng = random.Random(seed)
    lines = []
    for _ in range(limit):
        clauses = [
            "".join(rng.choice(CHINESE_WORDS) for _ in range(rng.randint(2, 6))) for _ in range(rng.randint(1, 4))
        ]
        lines.append("".join(c + rng.choice("，，、；：") for c in clauses[:-1]) + clauses[-1] + rng.choice("。。！？"))
    return lines


def _train_spm(lines: list[str], prefix: Path, vocab_size: int, model_type: str = "unigram") -> Path:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
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
    pair: tuple[str, str] | None = None,
    source_lines: list[str] | None = None,
    **dims,
) -> Path:
    """A random ``MarianMTModel`` with its tokenizer, saved as ``save_pretrained`` writes it; returns ``directory``.

    ``languages``: target codes of a multilingual model, as ``>>xx<<`` tokens in the vocabulary.
    ``pair``: (source, target) as an OPUS-MT model's ``tokenizer_config.json`` names them (``source_lang``...).
    ``total_vocab``: pad the vocabulary with made-up pieces to this size (real-size speed measurements).
    ``source_lines``: what the source tokenizer is trained on (``chinese_lines()`` for a zh->xx model); default:
    half of ``corpus_lines()``.
    """
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = corpus_lines()
    work = directory / "spm-training"
    work.mkdir(exist_ok=True)
    source = _train_spm(lines[::2] if source_lines is None else source_lines, work / "source", vocab_size)
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
    named: dict[str, Any] = {"source_lang": pair[0], "target_lang": pair[1]} if pair else {}
    tokenizer = MarianTokenizer(str(source), str(target), str(work / "vocab.json"), **named)
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


NLLB_TEST_LANGUAGES = ("deu_Latn", "eng_Latn", "fra_Latn", "rus_Cyrl")


def _fairseq_vocab(spm_model: Path) -> dict[str, int]:
    """fairseq's dictionary of a SentencePiece model, as M2M-100's ``vocab.json`` holds it: ``<s> <pad> </s> <unk>``
    then every other piece in SentencePiece order."""
    processor = spm.SentencePieceProcessor(model_file=str(spm_model))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for i in range(processor.get_piece_size()):
        if not (processor.is_control(i) or processor.is_unknown(i)):
            vocab.setdefault(processor.id_to_piece(i), len(vocab))
    return vocab


def _m2m100_tokenizer(
    directory: Path, work: Path, lines: list[str], vocab_size: int, languages: Sequence[str] | None = None
) -> int:
    """transformers' ``M2M100Tokenizer`` (SentencePiece + vocab.json + its 100 ``__xx__`` codes) saved to
    ``directory``; returns the number of ids it uses (vocabulary, language codes and made-up words)."""
    from transformers import M2M100Tokenizer

    model = _train_spm(lines, work / "m2m", vocab_size, "bpe")
    (work / "vocab.json").write_text(json.dumps(_fairseq_vocab(model), ensure_ascii=False))
    tokenizer = M2M100Tokenizer(str(work / "vocab.json"), str(model), src_lang="en", tgt_lang="de")
    tokenizer.save_pretrained(directory)
    return len(tokenizer.encoder) + len(tokenizer.lang_code_to_id) + tokenizer.num_madeup_words


def _nllb_tokenizer(
    directory: Path, work: Path, lines: list[str], vocab_size: int, languages: Sequence[str] | None = None
) -> int:
    """transformers' ``NllbTokenizer`` (a ``tokenizers`` BPE converted from SentencePiece, fairseq id offset,
    language codes as added tokens: ``languages``, else ``NLLB_TEST_LANGUAGES``) saved to ``directory``; returns
    the number of ids it uses."""
    import shutil

    from transformers import NllbTokenizer

    model = _train_spm(lines, work / "nllb", vocab_size, "bpe")
    source = work / "nllb-source"
    source.mkdir(exist_ok=True)
    shutil.copyfile(model, source / "sentencepiece.bpe.model")
    tokenizer = NllbTokenizer.from_pretrained(
        str(source),
        additional_special_tokens=list(languages or NLLB_TEST_LANGUAGES),
        src_lang="eng_Latn",
        tgt_lang="deu_Latn",
    )
    tokenizer.save_pretrained(directory)
    return len(tokenizer)


def tiny_m2m100(
    directory: Path,
    tokenizer: str = "m2m100",
    vocab_size: int = 160,
    eos_bias: float = 3.5,
    seed: int = 0,
    extra_ids: int = 0,
    transformers_init: bool = False,
    languages: Sequence[str] | None = None,
    **dims,
) -> Path:
    """A random ``M2M100ForConditionalGeneration`` with an M2M-100 (``tokenizer="m2m100"``) or NLLB (``"nllb"``)
    tokenizer, saved as ``save_pretrained`` writes it; returns ``directory``.

    ``extra_ids``: embedding rows beyond the tokenizer's ids (NLLB-200's checkpoints have 2; or padding to a real
    vocabulary size for speed measurements). ``transformers_init``: keep transformers' own initialisation (for
    speed at real sizes, where the outputs do not matter; the re-initialisation below is tuned for tiny models).
    ``languages``: an NLLB tokenizer's codes (all of NLLB-200's, say; default ``NLLB_TEST_LANGUAGES``).
    The model has no logits bias, so EOS is made likely through the final decoder LayerNorm's bias (a component
    along the EOS embedding raises its logit by ``eos_bias``), and ``<pad>`` is made all but impossible (see below).
    """
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    work = directory / "spm-training"
    work.mkdir(exist_ok=True)
    build = {"m2m100": _m2m100_tokenizer, "nllb": _nllb_tokenizer}[tokenizer]
    ids = build(directory, work, corpus_lines(), vocab_size, languages)
    settings: dict[str, Any] = {
        "d_model": 32,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "max_position_embeddings": 512,
    } | dims
    config = M2M100Config(
        vocab_size=ids + extra_ids,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        **settings,
    )
    torch.manual_seed(seed)
    model = M2M100ForConditionalGeneration(config).eval()
    if transformers_init:
        model.save_pretrained(directory)
        return directory
    # transformers' init (std 0.02) lets the positions drown the tokens, and with pre-norm the token embedding carried
    # on the residual stream makes a tied model repeat its input: the decoder's layers get 3x larger weights (tried
    # 1-4 on 32 sentences), except the cross-attention K/V projections, whose outputs the export verifies to 1e-4
    # absolute (large values there leave fp32 rounding above it).
    with torch.no_grad():
        shared = model.model.shared.weight
        shared.normal_(0.0, 0.3)
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and module is not model.lm_head:
                cross_kv = name.endswith(("encoder_attn.k_proj", "encoder_attn.v_proj"))
                gain = 3.0 if name.startswith("model.decoder") and not cross_kv else 1.0
                module.weight.normal_(0.0, gain * module.in_features**-0.5)
                module.bias.normal_(0.0, 0.02)
        # <pad> must never be generated: transformers gives a generated pad the padding position, which no other
        # decoder does. Every other embedding is made orthogonal to a direction u, pad's is -u, and the final
        # LayerNorm's bias gets 30 u: pad's logit is about -30 and no other logit changes.
        u = torch.nn.functional.normalize(torch.randn(config.d_model), dim=0)
        shared.sub_(torch.outer(shared @ u, u))
        shared[config.pad_token_id] = -u
        eos = shared[config.eos_token_id]
        model.model.decoder.layer_norm.bias.add_(eos_bias * eos / eos.dot(eos) + 30.0 * u)
    model.save_pretrained(directory)
    return directory
