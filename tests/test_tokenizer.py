"""The joint SentencePiece tokenizer: fixed special ids, lossless round trips, specials dropped on decode."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from nmtserve.engine.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from nmtserve.model.tokenizer_training import train_tokenizer

# Word lists as plain text (split below): a few dozen words per language give a few hundred pieces.
ENGLISH_WORDS = (
    "the package file server user system window library driver menu program network printer update version "
    "is was are installed removed running open closed missing configured available selected new old large small "
    "now again today quickly please click select save delete error warning settings option document page"
)
GERMAN_WORDS = (
    "das Paket die Datei der Server Benutzer System Fenster Bibliothek Treiber Menü Programm Netzwerk Drucker "
    "Aktualisierung Version ist war sind installiert entfernt läuft geöffnet geschlossen fehlt konfiguriert "
    "verfügbar ausgewählt neu alt groß klein jetzt wieder heute schnell bitte klicken auswählen speichern löschen "
    "Fehler Warnung Einstellungen Option Dokument Seite für über Größe Schließen"
)
ENGLISH, GERMAN = ENGLISH_WORDS.split(), GERMAN_WORDS.split()


def sentences(n: int, seed: int) -> list[str]:
    """English- and German-like sentences: 3-9 words, sometimes a number, ending with '.', '?' or '!'."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        words = rng.choices(ENGLISH if k % 2 == 0 else GERMAN, k=rng.randint(3, 9))
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(1, 999)))
        text = " ".join(words)
        out.append(text[0].upper() + text[1:] + rng.choice(".?!"))
    return out


CAPITALS = "Äpfel, Öl und Über."  # capitalised umlauts, which the generator produces only rarely


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """A 200-piece unigram model trained on 400 generated sentences."""
    texts = [*sentences(400, seed=1), CAPITALS]
    path = train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "sentencepiece.model", 200)
    return Tokenizer(path)


def test_training_writes_only_the_model_file(tokenizer: Tokenizer) -> None:
    """train_tokenizer leaves exactly the requested .model file (the .vocab side file is removed)."""
    assert tokenizer.model_path.is_file()
    assert [p.name for p in tokenizer.model_path.parent.iterdir()] == ["sentencepiece.model"]
    assert tokenizer.vocab_size == 200


def test_custom_model_path_is_honoured(tmp_path: Path) -> None:
    """A model path whose name is not '<prefix>.model' is still where the model ends up."""
    path = train_tokenizer(sentences(300, seed=3), tmp_path / "sub" / "joint.spm", 150)
    assert path == tmp_path / "sub" / "joint.spm" and path.is_file()
    assert Tokenizer(path).vocab_size == 150


def test_special_ids(tokenizer: Tokenizer) -> None:
    """pad 0, unk 1, bos 2, eos 3, as the model config expects."""
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)


def test_encode_decode_round_trip(tokenizer: Tokenizer) -> None:
    """decode(encode(text)) == text for training sentences and unseen ones over the same alphabet."""
    texts = sentences(20, seed=1) + sentences(40, seed=2) + ["Größe 42 Schließen über Menü!"]
    assert set("".join(texts)) <= set("".join([*sentences(400, seed=1), CAPITALS]))
    for text in texts:
        ids = tokenizer.encode(text)
        assert ids and all(0 <= i < tokenizer.vocab_size for i in ids)
        assert UNK_ID not in ids
        assert tokenizer.decode(ids) == text


def test_encode_adds_no_special_tokens_and_decode_drops_them(tokenizer: Tokenizer) -> None:
    """encode() emits no pad/bos/eos; decode() ignores BOS, EOS and padding around the pieces."""
    text = "The printer is configured now."
    ids = tokenizer.encode(text)
    assert not {PAD_ID, BOS_ID, EOS_ID} & set(ids)
    assert tokenizer.decode([BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == text


def test_encode_batch_matches_encode(tokenizer: Tokenizer) -> None:
    """encode_batch is encode applied to each text, in order."""
    texts = sentences(10, seed=4)
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]


def test_pieces_concatenate_to_the_text(tokenizer: Tokenizer) -> None:
    """Pieces, with '▁' read as a space, spell the text; there are fewer pieces than characters."""
    text = "Das Paket ist jetzt installiert."
    pieces = tokenizer.pieces(text)
    assert "".join(pieces).replace("▁", " ").strip() == text
    assert len(pieces) == len(tokenizer.encode(text)) < len(text)


def test_unknown_characters_map_to_unk(tokenizer: Tokenizer) -> None:
    """Characters never seen in training are encoded as UNK rather than dropped."""
    assert UNK_ID in tokenizer.encode("Das Paket 漢字")
