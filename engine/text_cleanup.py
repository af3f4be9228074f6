"""transformers' ``clean_up_tokenization_spaces``: the decoded text's optional last step, as a tokenizer asks.

A tokenizer saved by transformers 4 usually carries ``"clean_up_tokenization_spaces": true`` in its
``tokenizer_config.json`` (transformers 5 writes false and defaults to false). When it is true, transformers 5
removes the space before punctuation and English contractions after decoding, except for BPE tokenizers
(``tokenizers``' BPE model: BART, NLLB), where it skips the step because it would remove real spaces. The
engine's tokenizers follow the same rule so that a converted model's text equals ``decode()``'s.
"""

from __future__ import annotations

import json
from pathlib import Path

TOKENIZER_CONFIG = "tokenizer_config.json"


def clean_up_setting(directory: Path | str) -> bool:
    """``clean_up_tokenization_spaces`` of ``directory``'s ``tokenizer_config.json`` (False when absent)."""
    path = Path(directory) / TOKENIZER_CONFIG
    if not path.is_file():
        return False
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(settings, dict) and bool(settings.get("clean_up_tokenization_spaces", False))


def clean_up(text: str) -> str:
    """transformers' ``clean_up_tokenization``: no space before punctuation and English contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't")):
        text = text.replace(before, after)
    for suffix in ("'m", "'s", "'ve", "'re"):
        text = text.replace(f" {suffix}", suffix)
    return text
