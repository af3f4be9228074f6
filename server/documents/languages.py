"""The language code the sentence segmenter understands, from however a model or a request spells it.

sentencex keys its rules by ISO 639-1 codes (``de``, ``zh``) and a few ISO 639-3 ones for languages without a
two-letter code (``gsw``); a code it does not know gets its English rules, silently. The codes that reach the
document layer are the model's and the request's: NLLB-200's FLORES codes (``deu_Latn``, ``zho_Hans``), mBART's
(``de_DE``), Tatoeba OPUS-MT's three-letter ones (``deu``), BCP 47 tags (``de-AT``, ``zh-Hant``). Handed over as
they are, each of those split German at "z. B." and "3. Oktober" and Russian at "т. е." as English does. So the
code is cut to its language subtag and a three-letter code is mapped to its two-letter equivalent where ISO 639
has one: ``ISO_639_1`` holds the ISO 639-3 and 639-2/B codes that have an ISO 639-1 code (from Debian's iso-codes)
plus the standard individual language NLLB-200 names for a macrolanguage (``arb`` Standard Arabic, ``zsm`` Malay,
``pes`` Iranian Persian); ``VARIETIES`` the other individual languages NLLB-200 has of such a macrolanguage
(``arz`` Egyptian Arabic, ``prs`` Dari), which get the macrolanguage's rules but are not that language: the
LibreTranslate API (server/http/libre_languages.py) lists only ``ISO_639_1``'s under the two-letter code.
"""

from __future__ import annotations

import re

_SUBTAG = re.compile(r"[-_]")
ISO_639_1 = {
    "aar": "aa", "abk": "ab", "afr": "af", "aka": "ak",
    "alb": "sq", "als": "sq", "amh": "am", "ara": "ar", "arb": "ar", "arg": "an", "arm": "hy",
    "asm": "as", "ava": "av", "ave": "ae", "aym": "ay", "ayr": "ay",
    "aze": "az", "azj": "az", "bak": "ba", "bam": "bm", "baq": "eu", "bel": "be", "ben": "bn",
    "bis": "bi", "bod": "bo", "bos": "bs", "bre": "br", "bul": "bg", "bur": "my", "cat": "ca", "ces": "cs",
    "cha": "ch", "che": "ce", "chi": "zh", "chu": "cu", "chv": "cv", "cmn": "zh", "cor": "kw", "cos": "co",
    "cre": "cr", "cym": "cy", "cze": "cs", "dan": "da", "deu": "de", "div": "dv", "dut": "nl", "dzo": "dz",
    "ekk": "et", "ell": "el", "eng": "en", "epo": "eo", "est": "et", "eus": "eu", "ewe": "ee", "fao": "fo",
    "fas": "fa", "fij": "fj", "fin": "fi", "fra": "fr", "fre": "fr", "fry": "fy", "ful": "ff", "fuv": "ff",
    "gaz": "om", "geo": "ka", "ger": "de", "gla": "gd", "gle": "ga", "glg": "gl", "glv": "gv", "gre": "el",
    "grn": "gn", "guj": "gu", "hat": "ht", "hau": "ha", "hbs": "sh", "heb": "he", "her": "hz", "hin": "hi",
    "hmo": "ho", "hrv": "hr", "hun": "hu", "hye": "hy", "ibo": "ig", "ice": "is", "ido": "io", "iii": "ii",
    "iku": "iu", "ile": "ie", "ina": "ia", "ind": "id", "ipk": "ik", "isl": "is", "ita": "it", "jav": "jv",
    "jpn": "ja", "kal": "kl", "kan": "kn", "kas": "ks", "kat": "ka", "kau": "kr", "kaz": "kk", "khk": "mn",
    "khm": "km", "kik": "ki", "kin": "rw", "kir": "ky", "kmr": "ku", "knc": "kr", "kom": "kv", "kon": "kg",
    "kor": "ko", "kua": "kj", "kur": "ku", "lao": "lo", "lat": "la", "lav": "lv", "lim": "li", "lin": "ln",
    "lit": "lt", "ltz": "lb", "lub": "lu", "lug": "lg", "lvs": "lv", "mac": "mk", "mah": "mh", "mal": "ml",
    "mao": "mi", "mar": "mr", "may": "ms", "mkd": "mk", "mlg": "mg", "mlt": "mt", "mon": "mn", "mri": "mi",
    "msa": "ms", "mya": "my", "nau": "na", "nav": "nv", "nbl": "nr", "nde": "nd", "ndo": "ng", "nep": "ne",
    "nld": "nl", "nno": "nn", "nob": "nb", "nor": "no", "npi": "ne", "nya": "ny", "oci": "oc", "oji": "oj",
    "ori": "or", "orm": "om", "ory": "or", "oss": "os", "pan": "pa", "pbt": "ps", "per": "fa", "pes": "fa",
    "pli": "pi", "plt": "mg", "pol": "pl", "por": "pt", "pus": "ps", "que": "qu", "quy": "qu",
    "roh": "rm", "ron": "ro", "rum": "ro", "run": "rn", "rus": "ru", "sag": "sg", "san": "sa", "sin": "si",
    "slk": "sk", "slo": "sk", "slv": "sl", "sme": "se", "smo": "sm", "sna": "sn", "snd": "sd", "som": "so",
    "sot": "st", "spa": "es", "sqi": "sq", "srd": "sc", "srp": "sr", "ssw": "ss", "sun": "su", "swa": "sw",
    "swe": "sv", "swh": "sw", "tah": "ty", "tam": "ta", "tat": "tt", "tel": "te", "tgk": "tg", "tgl": "tl",
    "tha": "th", "tib": "bo", "tir": "ti", "ton": "to", "tsn": "tn", "tso": "ts", "tuk": "tk", "tur": "tr",
    "twi": "tw", "uig": "ug", "ukr": "uk", "urd": "ur", "uzb": "uz", "uzn": "uz", "ven": "ve", "vie": "vi",
    "vol": "vo", "wel": "cy", "wln": "wa", "wol": "wo", "xho": "xh", "ydd": "yi", "yid": "yi", "yor": "yo",
    "zha": "za", "zho": "zh", "zsm": "ms", "zul": "zu",
}  # fmt: skip
VARIETIES = {
    "acm": "ar", "acq": "ar", "aeb": "ar", "ajp": "ar", "apc": "ar", "ars": "ar", "ary": "ar", "arz": "ar",
    "azb": "az", "prs": "fa",
}  # fmt: skip


def segmenter_language(code: str, default: str = "en") -> str:
    """``code``'s language as sentencex names it (``deu_Latn`` -> ``de``, ``zh-Hant`` -> ``zh``, ``gsw`` stays);
    ``default`` for an empty code."""
    language = _SUBTAG.split(code.strip(), maxsplit=1)[0].lower()
    if not language:
        return default
    return ISO_639_1.get(language) or VARIETIES.get(language, language)


# Languages written without spaces between words (scriptio continua): Chinese (also Cantonese and Wu, which have
# no ISO 639-1 code), Japanese, Thai, Lao, Khmer, Burmese, Tibetan and Dzongkha. Korean writes spaces.
UNSPACED = frozenset({"zh", "yue", "wuu", "ja", "th", "lo", "km", "my", "bo", "dz"})


def writes_spaces(code: str) -> bool:
    """Whether ``code``'s language puts spaces between words (any spelling, as ``segmenter_language`` reads it;
    an empty code counts as English). It decides what joins the translated pieces of a sentence cut to fit the
    model (``split.piece_join``): a Chinese sentence cut between two characters is, in English, two phrases."""
    return segmenter_language(code) not in UNSPACED
