"""``convert_hf``: a Hugging Face model directory (as ``save_pretrained`` writes it) -> a project checkpoint.

One loader per supported architecture reads the Hugging Face ``config.json``, checks that the model fits the
project's Transformer (``TransformerConfig``'s family options), renames the weights and copies the tokenizer
files; ``nmtserve export`` then turns the checkpoint into a verified ONNX model directory as for any other.

Weights are read from safetensors (one file or an index of shards). A ``pytorch_model.bin`` is read only with
``torch.load(weights_only=True)``, which refuses anything but tensors: a checkpoint never unpickles code, and the
serving path reads no pickle at all. The checkpoint is written to a staging folder beside ``out`` and renamed
into place only when complete, so a failed conversion leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nmtserve.engine import m2m100_tokenizer, marian_tokenizer, nllb_tokenizer
from nmtserve.engine.m2m100_tokenizer import TokenizerFileError as M2M100FileError
from nmtserve.engine.marian_tokenizer import TokenizerFileError, read_vocab
from nmtserve.engine.text_cleanup import clean_up_setting
from nmtserve.model.checkpoint import CONFIG, WEIGHTS
from nmtserve.model.transformer import TransformerConfig

log = logging.getLogger(__name__)
ACTIVATION_NAMES = {"relu": "relu", "gelu": "gelu", "swish": "swish", "silu": "swish"}
# Added to the logits bias of a token that generation_config.json bans (OPUS-MT bans <pad>): exp(-1e4) is 0 in
# fp32 and fp16 alike, while a finite value keeps the export's log-prob comparison free of inf - inf.
SUPPRESSED_LOGIT = -1.0e4


class ConversionError(ValueError):
    """The source directory is not a model this converter can turn into a checkpoint; the message names why."""


def read_hf_config(source: Path) -> dict[str, Any]:
    path = source / "config.json"
    if not source.is_dir():
        raise ConversionError(f"{source}: not a directory")
    if not path.is_file():
        raise ConversionError(f"{path}: missing (not a Hugging Face model directory)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path}: not valid JSON: {error}") from error


def read_hf_weights(source: Path) -> dict[str, torch.Tensor]:
    """All tensors of the model: safetensors (single or sharded) first, else ``pytorch_model.bin`` (tensors only)."""
    single, index = source / "model.safetensors", source / "model.safetensors.index.json"
    try:
        if single.is_file():
            return load_file(single)
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            weights: dict[str, torch.Tensor] = {}
            for shard in shards:
                weights.update(load_file(source / shard))
            return weights
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as error:
        raise ConversionError(f"{source}: the safetensors weights cannot be read (truncated?): {error}") from error
    legacy = source / "pytorch_model.bin"
    if legacy.is_file():
        log.warning("%s: reading pytorch_model.bin with weights_only=True; safetensors is preferred", source)
        try:
            state = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for truncated or non-tensor pickles
            raise ConversionError(f"{legacy}: cannot be read as a tensors-only checkpoint: {error}") from error
        if not isinstance(state, dict):
            raise ConversionError(f"{legacy}: holds no state dict")
        return state
    raise ConversionError(f"{source}: no weights (model.safetensors, its index, or pytorch_model.bin)")


def with_class_defaults(source: Path, config: dict[str, Any], config_class: str) -> dict[str, Any]:
    """``config.json`` as transformers loads it: every key it leaves out takes the config class's default (a
    hand-written or trimmed config may leave out ``scale_embedding`` or ``activation_function``, whose defaults
    differ between families), aliases resolved."""
    try:
        import transformers
    except ImportError as error:
        raise ConversionError("nmtserve convert hf needs transformers: pip install 'nmtserve[train]'") from error
    try:
        return getattr(transformers, config_class).from_dict(config).to_dict()
    except (TypeError, ValueError, AttributeError) as error:
        message = f"{source / 'config.json'}: transformers cannot read it as {config_class}: {error}"
        raise ConversionError(message) from error


def generation_settings(source: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The settings ``generate()`` decodes with. A model saved with a ``generation_config.json`` is read from that
    file alone: transformers then takes no generation setting from config.json, and a key the file leaves out has
    GenerationConfig's default (None). A model without one is read from config.json
    (``GenerationConfig.from_model_config``)."""
    path = source / "generation_config.json"
    if not path.is_file():
        return config
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(settings, dict):
        raise ConversionError(f"{path}: not a JSON object")
    return settings


def decoder_start(source: Path, settings: dict[str, Any]) -> int:
    """The decoder's first input as ``generate()`` picks it: ``decoder_start_token_id``, else ``bos_token_id``."""
    start = settings.get("decoder_start_token_id")
    start = settings.get("bos_token_id") if start is None else start
    if not isinstance(start, int):
        raise ConversionError(
            f"{source}: the generation settings set neither decoder_start_token_id nor bos_token_id to one token id "
            f"({start!r}), so generate() has no first decoder token"
        )
    return start


def suppressed_tokens(source: Path, settings: dict[str, Any]) -> list[int]:
    """Single tokens the generation settings never let the model generate (``bad_words_ids``)."""
    bad = settings.get("bad_words_ids") or []
    longer = [ids for ids in bad if len(ids) != 1]
    if longer:
        log.warning("%s: bad_words_ids of more than one token are not applied: %s", source, longer)
    return sorted({ids[0] for ids in bad if len(ids) == 1})


def recorded_languages(source: Path) -> dict[str, str]:
    """The model's language pair as its ``tokenizer_config.json`` names it, for the manifest's default languages
    (``nmtserve export`` without ``--source-language/--target-language``): ``source_lang``/``target_lang`` in an
    OPUS-MT model's (``de``/``en`` for opus-mt-de-en), ``src_lang``/``tgt_lang`` in M2M-100's, NLLB's and mBART's
    (``zho_Hans``/``eng_Latn``). Without it a zh->en model was exported as en->de: requests naming zh were refused,
    and documents were cut into sentences by English rules. Empty where the file names no pair."""
    path = source / "tokenizer_config.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(settings, dict):
        return {}
    pair = {}
    for field, keys in (("source", ("source_lang", "src_lang")), ("target", ("target_lang", "tgt_lang"))):
        value = next((settings[key] for key in keys if isinstance(settings.get(key), str) and settings[key]), "")
        if value:
            pair[field] = value
    return pair if len(pair) == 2 else {}


def _require(source: Path, condition: bool, message: str) -> None:
    if not condition:
        raise ConversionError(f"{source / 'config.json'}: {message}")


class MarianLoader:
    """``MarianMTModel`` (OPUS-MT): post-norm, sinusoidal positions in halves, one shared embedding, logits bias."""

    architecture = "MarianMTModel"
    config_class = "MarianConfig"

    def __init__(self, source: Path, config: dict[str, Any]) -> None:
        self.source, self.hf = source, config
        self.generation = generation_settings(source, config)

    def model_config(self, vocab_size: int) -> TransformerConfig:
        hf = self.hf
        heads, ffn = hf["encoder_attention_heads"], hf["encoder_ffn_dim"]
        _require(self.source, heads == hf["decoder_attention_heads"], "encoder and decoder head counts differ")
        _require(self.source, ffn == hf["decoder_ffn_dim"], "encoder and decoder FFN sizes differ")
        _require(
            self.source,
            hf["share_encoder_decoder_embeddings"],
            "separate source and target vocabularies are not supported",
        )
        _require(
            self.source, hf.get("decoder_vocab_size") in (None, hf["vocab_size"]), "decoder_vocab_size != vocab_size"
        )
        activation = ACTIVATION_NAMES.get(hf["activation_function"])
        _require(self.source, activation is not None, f"activation {hf.get('activation_function')!r} is not supported")
        if hf["vocab_size"] != vocab_size:
            raise ConversionError(
                f"{self.source}: config.json vocab_size {hf['vocab_size']} disagrees with the tokenizer's "
                f"vocab.json ({vocab_size} ids)"
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
            pre_norm=False,
            pad_id=hf["pad_token_id"],
            unk_id=0,  # replaced below from vocab.json
            bos_id=decoder_start(self.source, self.generation),
            eos_id=hf["eos_token_id"],
            activation=cast(str, activation),  # checked by _require above
            positions="sinusoidal-halves",
            scale_embedding=hf["scale_embedding"],
            final_logits_bias=True,
        )

    def tokenizer(self) -> tuple[dict[str, Any], dict[str, Path], int, int]:
        """The checkpoint's tokenizer entry, the files to copy, the vocabulary size and the unk id."""
        files = {name: self.source / name for name in marian_tokenizer.FILES}
        for name, path in files.items():
            if not path.is_file():
                raise ConversionError(f"{path}: Marian tokenizer file {name} is missing")
        try:
            vocab = read_vocab(files[marian_tokenizer.VOCAB])
        except TokenizerFileError as error:
            raise ConversionError(str(error)) from error
        spec = {"kind": "marian", "clean_up_tokenization_spaces": clean_up_setting(self.source)}
        return spec, files, max(vocab.values()) + 1, vocab[marian_tokenizer.UNK]

    def weights(self, hf: dict[str, torch.Tensor], config: TransformerConfig) -> dict[str, torch.Tensor]:
        get = _getter(self.source, hf)
        embedding = get("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
        if "lm_head.weight" in hf and not torch.equal(hf["lm_head.weight"], embedding):
            raise ConversionError(f"{self.source}: an output projection separate from the embedding is not supported")
        bias = get("final_logits_bias").reshape(-1).clone()
        bias[suppressed_tokens(self.source, self.generation)] += SUPPRESSED_LOGIT  # generate() would ban them
        return {"embedding.weight": embedding, "final_logits_bias": bias} | _layer_weights(get, config)


class M2M100Loader:
    """``M2M100ForConditionalGeneration`` (M2M-100, NLLB-200): pre-norm with final encoder and decoder LayerNorms,
    fairseq's sinusoidal positions after the padding index, ReLU, one tied embedding, no logits bias, decoding
    from EOS with the target language forced as the first token. The tokenizer is NLLB's (``tokenizer.json``) or
    M2M-100's (SentencePiece + ``vocab.json``)."""

    architecture = "M2M100ForConditionalGeneration"
    config_class = "M2M100Config"

    def __init__(self, source: Path, config: dict[str, Any]) -> None:
        self.source, self.hf = source, config
        self.generation = generation_settings(source, config)

    def model_config(self, vocab_size: int) -> TransformerConfig:
        hf = self.hf
        heads, ffn = hf["encoder_attention_heads"], hf["encoder_ffn_dim"]
        _require(self.source, heads == hf["decoder_attention_heads"], "encoder and decoder head counts differ")
        _require(self.source, ffn == hf["decoder_ffn_dim"], "encoder and decoder FFN sizes differ")
        activation = ACTIVATION_NAMES.get(hf["activation_function"])
        _require(self.source, activation is not None, f"activation {hf.get('activation_function')!r} is not supported")
        _require(self.source, hf["tie_word_embeddings"], "an untied output projection is not supported")
        if hf["vocab_size"] < vocab_size:
            raise ConversionError(
                f"{self.source}: config.json vocab_size {hf['vocab_size']} is smaller than the tokenizer's "
                f"{vocab_size} ids"
            )
        pad = hf["pad_token_id"]
        return TransformerConfig(
            vocab_size=hf["vocab_size"],
            d_model=hf["d_model"],
            n_heads=heads,
            n_encoder_layers=hf["encoder_layers"],
            n_decoder_layers=hf["decoder_layers"],
            d_ff=ffn,
            dropout=0.0,
            max_positions=hf["max_position_embeddings"],
            pre_norm=True,
            pad_id=pad,
            unk_id=3,  # replaced from the tokenizer
            bos_id=hf["bos_token_id"],
            eos_id=hf["eos_token_id"],
            decoder_start_id=decoder_start(self.source, self.generation),
            activation=cast(str, activation),  # checked by _require above
            positions="sinusoidal-fairseq",
            position_offset=pad + 1,  # transformers: position i of a sequence is row i + padding_idx + 1
            scale_embedding=hf["scale_embedding"],
            final_logits_bias=bool(suppressed_tokens(self.source, self.generation)),  # only to ban tokens
        )

    def tokenizer(self) -> tuple[dict[str, Any], dict[str, Path], int, int]:
        """NLLB's ``tokenizer.json`` where there is one (the ``tokenizers`` model transformers saves), else
        M2M-100's SentencePiece model and ``vocab.json``."""
        nllb = {name: self.source / name for name in nllb_tokenizer.FILES}
        m2m = {name: self.source / name for name in m2m100_tokenizer.FILES}
        kind, files = ("nllb", nllb) if nllb[nllb_tokenizer.TOKENIZER_JSON].is_file() else ("m2m100", m2m)
        missing = [name for name, path in files.items() if not path.is_file()]
        if missing and kind == "m2m100" and all(not path.is_file() for path in m2m.values()):
            raise ConversionError(
                f"{self.source}: no M2M-100 / NLLB tokenizer (NLLB: {', '.join(nllb_tokenizer.FILES)}; "
                f"M2M-100: {', '.join(m2m100_tokenizer.FILES)})"
            )
        if missing:
            raise ConversionError(f"{files[missing[0]]}: {kind} tokenizer file {missing[0]} is missing")
        try:
            if kind == "nllb":
                loaded: Any = nllb_tokenizer.NllbTokenizer(self.source)
            else:
                loaded = m2m100_tokenizer.M2M100Tokenizer(self.source)
        except M2M100FileError as error:
            raise ConversionError(str(error)) from error
        return {"kind": kind}, files, loaded.vocab_size, loaded.unk_id

    def weights(self, hf: dict[str, torch.Tensor], config: TransformerConfig) -> dict[str, torch.Tensor]:
        get = _getter(self.source, hf)
        embedding = get("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
        if "lm_head.weight" in hf and not torch.equal(hf["lm_head.weight"].float(), embedding):
            raise ConversionError(f"{self.source}: an output projection separate from the embedding is not supported")
        out = {"embedding.weight": embedding} | _layer_weights(get, config)
        out |= _norm(get, "model.encoder.layer_norm", "encoder_norm")
        out |= _norm(get, "model.decoder.layer_norm", "decoder_norm")
        if config.final_logits_bias:
            bias = torch.zeros(config.vocab_size)
            bias[suppressed_tokens(self.source, self.generation)] = SUPPRESSED_LOGIT
            out["final_logits_bias"] = bias
        return out


def _layer_weights(get, config: TransformerConfig) -> dict[str, torch.Tensor]:
    """The encoder and decoder layers, named alike in every BART-style family (Marian, M2M-100, BART, mBART)."""
    out: dict[str, torch.Tensor] = {}
    for i in range(config.n_encoder_layers):
        hf_layer, layer = f"model.encoder.layers.{i}", f"encoder_layers.{i}"
        out |= _attention(get, f"{hf_layer}.self_attn", f"{layer}.self_attention")
        out |= _norm(get, f"{hf_layer}.self_attn_layer_norm", f"{layer}.attention_residual.norm")
        out |= _ffn(get, hf_layer, f"{layer}.feed_forward")
        out |= _norm(get, f"{hf_layer}.final_layer_norm", f"{layer}.feed_forward_residual.norm")
    for i in range(config.n_decoder_layers):
        hf_layer, layer = f"model.decoder.layers.{i}", f"decoder_layers.{i}"
        out |= _attention(get, f"{hf_layer}.self_attn", f"{layer}.self_attention")
        out |= _norm(get, f"{hf_layer}.self_attn_layer_norm", f"{layer}.self_residual.norm")
        out |= _attention(get, f"{hf_layer}.encoder_attn", f"{layer}.cross_attention")
        out |= _norm(get, f"{hf_layer}.encoder_attn_layer_norm", f"{layer}.cross_residual.norm")
        out |= _ffn(get, hf_layer, f"{layer}.feed_forward")
        out |= _norm(get, f"{hf_layer}.final_layer_norm", f"{layer}.feed_forward_residual.norm")
    return out


def _getter(source: Path, hf: dict[str, torch.Tensor]) -> Callable[..., torch.Tensor]:
    def get(*names: str) -> torch.Tensor:
        for name in names:
            if name in hf:
                return hf[name].float()
        raise ConversionError(f"{source}: weight {names[0]} is missing from the weights file")

    return get


def _attention(get, hf: str, ours: str) -> dict[str, torch.Tensor]:
    pairs = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "output"}
    return {f"{ours}.{o}.{p}": get(f"{hf}.{h}.{p}") for h, o in pairs.items() for p in ("weight", "bias")}


def _norm(get, hf: str, ours: str) -> dict[str, torch.Tensor]:
    return {f"{ours}.{p}": get(f"{hf}.{p}") for p in ("weight", "bias")}


def _ffn(get, hf: str, ours: str) -> dict[str, torch.Tensor]:
    names = {"fc1": "inner", "fc2": "outer"}
    return {f"{ours}.{o}.{p}": get(f"{hf}.{h}.{p}") for h, o in names.items() for p in ("weight", "bias")}


# architecture -> loader class (architecture, config_class, model_config, tokenizer, weights)
LOADERS: dict[str, Any] = {"MarianMTModel": MarianLoader, "M2M100ForConditionalGeneration": M2M100Loader}
MODEL_TYPES = {"marian": "MarianMTModel", "m2m_100": "M2M100ForConditionalGeneration"}


def _register_bart() -> None:
    """BART / mBART live in their own module (which imports this one's helpers)."""
    from nmtserve.export.hf_bart import BartLoader, MBartLoader

    LOADERS.update({loader.architecture: loader for loader in (BartLoader, MBartLoader)})
    MODEL_TYPES.update({"bart": BartLoader.architecture, "mbart": MBartLoader.architecture})


def _loader(source: Path, config: dict[str, Any]):
    _register_bart()
    architectures = config.get("architectures") or [MODEL_TYPES.get(config.get("model_type", ""), "")]
    name = architectures[0] if architectures else ""
    if name not in LOADERS:
        raise ConversionError(
            f"{source}: architecture {name or config.get('model_type')!r} is not supported "
            f"(supported: {', '.join(sorted(LOADERS))})"
        )
    loader = LOADERS[name]
    return loader(source, with_class_defaults(source, config, loader.config_class))


def convert_hf(source: Path | str, out: Path | str) -> Path:
    """Write the checkpoint of the Hugging Face model in ``source`` to ``out``; raises ConversionError."""
    source, out = Path(source).resolve(), Path(out).resolve()
    loader = _loader(source, read_hf_config(source))
    spec, tokenizer_files, vocab_size, unk_id = loader.tokenizer()
    config = loader.model_config(vocab_size)
    config = TransformerConfig.from_dict({**config.to_dict(), "unk_id": unk_id})
    weights = loader.weights(read_hf_weights(source), config)

    from nmtserve.model.transformer import Transformer

    model = Transformer(config)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:  # shapes that disagree with config.json
        raise ConversionError(f"{source}: weights do not match config.json: {str(error).splitlines()[-1]}") from None
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, staging / WEIGHTS)
        for name, path in tokenizer_files.items():
            shutil.copyfile(path, staging / name)
        metadata = {
            "converted_from": str(source),
            "architecture": loader.architecture,
            "version": "hf",
            "suppressed_tokens": suppressed_tokens(source, loader.generation),
            **({"languages": languages} if (languages := recorded_languages(source)) else {}),
        }
        document = {"model": config.to_dict(), "metadata": metadata, "tokenizer": spec}
        (staging / CONFIG).write_text(json.dumps(document, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out
