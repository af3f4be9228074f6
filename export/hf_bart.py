"""Loaders for ``BartForConditionalGeneration`` and ``MBartForConditionalGeneration`` (``convert_hf``'s registry).

Both families share one layout of weights: learned position tables with BART's offset of 2 rows, one per stack,
a LayerNorm right after embedding + position (``layernorm_embedding``), one embedding shared by encoder, decoder
and the output projection, and ``final_logits_bias``. They differ in where the LayerNorms sit: BART is post-norm,
mBART pre-norm with a final LayerNorm closing each stack (the model's ``encoder_norm`` / ``decoder_norm``).

Generation settings are read the way ``generate()`` reads them (``hf_convert.generation_settings``):
``generation_config.json`` where the model has one, else ``config.json``. The decoder starts from
``decoder_start_token_id`` (EOS in BART and mBART-50; a language code in mBART-cc25 fine-tunes such as en-ro), or
``bos_token_id`` where that is unset. ``forced_bos_token_id`` (BART's ``<s>``) is forced as the first generated
token; mBART-50 forces the requested target language there instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import torch

from nmtserve.engine import bart_tokenizer
from nmtserve.engine.bart_tokenizer import BartTokenizer, TokenizerFileError
from nmtserve.export.hf_convert import (
    ACTIVATION_NAMES,
    SUPPRESSED_LOGIT,
    ConversionError,
    _getter,
    _layer_weights,
    _norm,
    _require,
    decoder_start,
    generation_settings,
    suppressed_tokens,
)
from nmtserve.model.transformer import LEARNED_POSITION_OFFSET, TransformerConfig


def _tokenizer_config(source: Path) -> dict[str, Any]:
    path = source / bart_tokenizer.TOKENIZER_CONFIG
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path}: not valid JSON: {error}") from error


class BartLoader:
    """``BartForConditionalGeneration``: post-norm, GELU, learned positions, ``layernorm_embedding``."""

    architecture = "BartForConditionalGeneration"
    config_class = "BartConfig"
    pre_norm = False
    family = "BART"

    def __init__(self, source: Path, config: dict[str, Any]) -> None:
        self.source, self.hf = source, config
        self.generation = generation_settings(source, config)

    def model_config(self, vocab_size: int) -> TransformerConfig:
        hf, source = self.hf, self.source
        heads, ffn = hf["encoder_attention_heads"], hf["encoder_ffn_dim"]
        _require(source, heads == hf["decoder_attention_heads"], "encoder and decoder head counts differ")
        _require(source, ffn == hf["decoder_ffn_dim"], "encoder and decoder FFN sizes differ")
        activation = ACTIVATION_NAMES.get(hf["activation_function"])
        _require(source, activation is not None, f"activation {hf.get('activation_function')!r} is not supported")
        if hf["vocab_size"] != vocab_size:
            raise ConversionError(
                f"{source}: config.json vocab_size {hf['vocab_size']} disagrees with the tokenizer's "
                f"{bart_tokenizer.TOKENIZER_JSON} ({vocab_size} ids)"
            )
        return TransformerConfig(
            vocab_size=hf["vocab_size"],
            d_model=hf["d_model"],
            n_heads=heads,
            n_encoder_layers=hf["encoder_layers"],
            n_decoder_layers=hf["decoder_layers"],
            d_ff=ffn,
            dropout=0.0,
            max_positions=hf["max_position_embeddings"],
            pre_norm=self.pre_norm,
            pad_id=hf["pad_token_id"],
            unk_id=0,  # replaced from the tokenizer
            bos_id=hf["bos_token_id"],
            decoder_start_id=decoder_start(source, self.generation),
            eos_id=hf["eos_token_id"],
            activation=cast(str, activation),  # checked by _require above
            positions="learned",
            position_offset=LEARNED_POSITION_OFFSET,
            scale_embedding=bool(hf["scale_embedding"]),
            final_logits_bias=True,
            layernorm_embedding=True,
        )

    def tokenizer(self) -> tuple[dict[str, Any], dict[str, Path], int, int]:
        """The checkpoint's tokenizer entry, the files to copy, the vocabulary size and the unk id."""
        files = {name: self.source / name for name in bart_tokenizer.FILES}
        settings = _tokenizer_config(self.source)
        forced = self.generation.get("forced_bos_token_id")
        spec: dict[str, Any] = {
            "kind": "bart",
            "template": bart_tokenizer.template_of(self.source),
            "clean_up_tokenization_spaces": bool(settings.get("clean_up_tokenization_spaces", False)),
            "forced_bos_id": forced,
        }
        if (spec["template"] == "bart") != (self.family == "BART"):
            raise ConversionError(
                f"{self.source}: tokenizer_config.json's tokenizer_class gives {spec['template']!r} special-token "
                f"rules, which do not fit this {self.family} model"
            )
        if settings.get("src_lang"):
            spec["source_language"] = settings["src_lang"]
        if settings.get("tgt_lang"):
            spec["target_language"] = settings["tgt_lang"]
        if spec["template"] == "mbart":  # a cc25 fine-tune: its decoder starts from its one target language
            spec["target_language"] = self._language_of(decoder_start(self.source, self.generation))
        try:
            tokenizer = BartTokenizer(self.source, spec)
        except (TokenizerFileError, KeyError) as error:
            raise ConversionError(str(error)) from error
        if tokenizer.template != "bart" and not tokenizer.languages:
            raise ConversionError(f"{files[bart_tokenizer.TOKENIZER_JSON]}: an mBART tokenizer without language codes")
        return spec, files, tokenizer.vocab_size, tokenizer.unk_id

    def _language_of(self, token_id: int | None) -> str:
        """The language code whose id is ``token_id`` (mBART-cc25's decoder start), or refuse the model."""
        backend = bart_tokenizer.read_backend(self.source / bart_tokenizer.TOKENIZER_JSON)
        code = backend.id_to_token(token_id) if token_id is not None else None
        if code is None or not bart_tokenizer.LANGUAGE_CODE.match(code):
            raise ConversionError(
                f"{self.source / 'config.json'}: an mBART-cc25 model must start decoding from its target language's "
                f"code (decoder_start_token_id is {token_id}, {code!r}); per-request start tokens are not supported"
            )
        return code

    def weights(self, hf: dict[str, torch.Tensor], config: TransformerConfig) -> dict[str, torch.Tensor]:
        get = _getter(self.source, hf)
        embedding = get("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
        if "lm_head.weight" in hf and not torch.equal(hf["lm_head.weight"].float(), embedding):
            raise ConversionError(f"{self.source}: an output projection separate from the embedding is not supported")
        bias = get("final_logits_bias").reshape(-1).clone()
        bias[suppressed_tokens(self.source, self.generation)] += SUPPRESSED_LOGIT  # generate() would ban them
        out = {"embedding.weight": embedding, "final_logits_bias": bias}
        rows = config.max_positions + config.position_offset
        for stack in ("encoder", "decoder"):
            positions = get(f"model.{stack}.embed_positions.weight")
            if positions.shape[0] != rows:
                raise ConversionError(
                    f"{self.source}: model.{stack}.embed_positions has {positions.shape[0]} rows, not "
                    f"max_position_embeddings + {config.position_offset} = {rows}"
                )
            out[f"{stack}_positions.weight"] = positions
            out |= _norm(get, f"model.{stack}.layernorm_embedding", f"{stack}_embedding_norm")
            if self.pre_norm:  # mBART closes each stack with a LayerNorm
                out |= _norm(get, f"model.{stack}.layer_norm", f"{stack}_norm")
        out |= _layer_weights(get, config)
        return out


class MBartLoader(BartLoader):
    """``MBartForConditionalGeneration``: BART's layout, pre-norm, a final LayerNorm per stack, language codes."""

    architecture = "MBartForConditionalGeneration"
    config_class = "MBartConfig"
    pre_norm = True
    family = "mBART"
