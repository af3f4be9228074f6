"""Models whose source is not English: converted, exported and served, documents cut by the source's own rules.

Each model is a tiny random Hugging Face model built by transformers (``export/hf_testing.py``); transformers'
``generate()`` is the referee of every sentence, sentencex itself (given the plain ISO 639-1 code) the referee of
the sentence boundaries. The texts are German and Russian with abbreviations that English rules split at
("z. B.", "3. Oktober", "т. е."), and Chinese without spaces.
"""

from __future__ import annotations

import pytest
import sentencex

from nmtserve.server.documents.segment import sentence_spans

GERMAN = (
    "Das kostet z. B. 1.000,50 Euro usw. und mehr. Er sagte „Hallo“ und ging.\n\n"
    "Dr. Müller kam am 3. Oktober. Die Straße ist sehr lang! Ist das ca. 5 km entfernt?"
)
RUSSIAN = "Он сказал «привет». Это, т. е. пример, и т. д. и т. п. Москва — столица России. Как дела?"
CHINESE = "今天天气很好。我们去公园吧！你觉得怎么样？他说：「好的。」然后我们出发了。"


def english_rules_differ(text: str, language: str) -> bool:
    return list(sentencex.segment(language, text)) != list(sentencex.segment("en", text))


@pytest.mark.parametrize(
    ("text", "language", "spellings"),
    [
        (GERMAN, "de", ["de", "deu_Latn", "de_DE", "deu", "ger", "de-AT", "DE"]),
        (RUSSIAN, "ru", ["rus_Cyrl", "ru_RU", "rus", "ru-RU"]),
        (CHINESE, "zh", ["zho_Hans", "zho_Hant", "zh_CN", "zh-Hant", "cmn"]),
    ],
)
def test_any_spelling_of_the_source_code_gets_that_languages_rules(text: str, language: str, spellings: list[str]):
    """FLORES (NLLB), mBART, three-letter (Tatoeba OPUS-MT) and BCP 47 codes: the segmenter's own sentences for
    the language, not its English fallback (which splits German and Russian at their abbreviations)."""
    want = [piece.strip() for piece in sentencex.segment(language, text) if piece.strip()]
    want = [part.strip() for sentence in want for part in sentence.split("\n\n") if part.strip()]
    assert language == "zh" or english_rules_differ(text, language)
    for code in spellings:
        assert [text[s.start : s.end] for s in sentence_spans(text, code)] == want, code
    assert len(sentence_spans(CHINESE, "zho_Hans")) == 5  # 。！？ end sentences without spaces
