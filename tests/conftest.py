"""Shared fixtures: a synthetic EN/DE corpus, a small SentencePiece model, tiny models and one short training run.

Everything runs on one CPU thread with the "tiny" preset so that the whole suite stays well under a minute.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nmtserve.engine.int8_kernels import u8s8_saturates
from nmtserve.model.tokenizer_training import train_tokenizer
from nmtserve.model.train import TrainConfig, Trainer
from nmtserve.model.transformer import PRESETS, Transformer, TransformerConfig

torch.set_num_threads(1)
# CTranslate2 picks its int8 GEMM backend by CPU vendor when it is imported: oneDNN on AMD, whose u8s8 kernel
# saturates without VNNI as onnxruntime's does (the tiny model's int8 output began as fp32's in 4 of 12 sentences,
# 11 of 12 with MKL). The tests check our converter's weights, not that backend choice.
if u8s8_saturates():
    os.environ.setdefault("CT2_USE_MKL", "1")

TINY: TransformerConfig = PRESETS["tiny"]

# A word-for-word "dictionary": the synthetic corpus is a learnable EN->DE mapping, not noise.
SUBJECTS = [
    ("The package", "Das Paket"),
    ("The server", "Der Server"),
    ("The user", "Der Benutzer"),
    ("This file", "Diese Datei"),
    ("The program", "Das Programm"),
    ("The system", "Das System"),
    ("The window", "Das Fenster"),
    ("The library", "Die Bibliothek"),
    ("The driver", "Der Treiber"),
    ("The menu", "Das Menü"),
]
VERBS = [
    ("is installed", "ist installiert"),
    ("is running", "läuft"),
    ("was removed", "wurde entfernt"),
    ("is updated", "wird aktualisiert"),
    ("is open", "ist geöffnet"),
    ("is missing", "fehlt"),
    ("is large", "ist groß"),
    ("was closed", "wurde geschlossen"),
]
ADVERBS = [("", ""), ("now", "jetzt"), ("again", "wieder"), ("today", "heute"), ("quickly", "schnell")]


def synthetic_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` parallel sentences such as "The package is installed now." / "Das Paket ist installiert jetzt."."""
    rng = random.Random(seed)
    english, german = [], []
    for _ in range(n):
        (s_en, s_de), (v_en, v_de), (a_en, a_de) = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(ADVERBS)
        english.append(" ".join(w for w in (s_en, v_en, a_en) if w) + ".")
        german.append(" ".join(w for w in (s_de, v_de, a_de) if w) + ".")
    return english, german


def write_corpus(directory: Path, train: int = 300, dev: int = 16) -> Path:
    """``train.en/.de`` and ``dev.en/.de`` in ``directory``, line-aligned."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", train, 1), ("dev", dev, 2)):
        english, german = synthetic_pairs(n, seed)
        (directory / f"{split}.en").write_text("\n".join(english) + "\n", encoding="utf-8")
        (directory / f"{split}.de").write_text("\n".join(german) + "\n", encoding="utf-8")
    return directory


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    """A seeded, untrained tiny Transformer in eval mode (``overrides`` replace config fields)."""
    torch.manual_seed(seed)
    return Transformer(replace(TINY, **overrides)).eval()


def random_sources(n: int, seed: int, vocab: int = TINY.vocab_size, lengths: tuple[int, int] = (3, 9)):
    """``n`` token-id sources of varied length, each ending with EOS and free of special ids."""
    rng = random.Random(seed)
    return [[rng.randrange(4, vocab) for _ in range(rng.randint(*lengths))] + [TINY.eos_id] for _ in range(n)]


@pytest.fixture(scope="session")
def spm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 100-piece SentencePiece model trained on the synthetic corpus."""
    english, german = synthetic_pairs(300, seed=1)
    return train_tokenizer(english + german, tmp_path_factory.mktemp("spm") / "sentencepiece.model", 100)


@dataclass
class Overfit:
    model: Transformer
    sources: list[list[int]]
    targets: list[list[int]]  # without BOS/EOS
    losses: list[float]


@pytest.fixture(scope="session")
def overfit() -> Overfit:
    """A tiny model trained with Adam until it memorises five random sentence pairs."""
    model = tiny_model(seed=3)
    sources = random_sources(5, seed=10)
    targets = [s[:-1] for s in random_sources(5, seed=11, lengths=(3, 7))]
    cfg = model.config
    width_s, width_t = max(map(len, sources)), max(map(len, targets)) + 1
    source = torch.full((5, width_s), cfg.pad_id)
    target_in = torch.full((5, width_t), cfg.pad_id)
    target_out = torch.full((5, width_t), cfg.pad_id)
    for row, (s, t) in enumerate(zip(sources, targets, strict=True)):
        source[row, : len(s)] = torch.tensor(s)
        target_in[row, : len(t) + 1] = torch.tensor([cfg.bos_id, *t])
        target_out[row, : len(t) + 1] = torch.tensor([*t, cfg.eos_id])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(300):
        optimizer.zero_grad()
        logits = model(source, target_in)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_out.reshape(-1), ignore_index=cfg.pad_id)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return Overfit(model.eval(), sources, targets, losses)


def train_config(corpus: Path, out: Path, max_steps: int) -> TrainConfig:
    """The one training configuration of the suite; runs differ only in ``max_steps``."""
    return TrainConfig(
        corpus=corpus,
        out=out,
        preset="tiny",
        vocab_size=100,
        max_tokens=1000,
        warmup_steps=10,
        lr_factor=0.3,
        max_steps=max_steps,
        eval_every=10,
        eval_sentences=16,
        average_last=5,
        threads=1,
        bf16=False,
    )


@dataclass
class TrainedRun:
    corpus: Path
    out: Path
    trainer: Trainer


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """A 30-step tiny training run on the synthetic corpus, evaluated every 10 steps."""
    root = tmp_path_factory.mktemp("train")
    corpus = write_corpus(root / "corpus")
    trainer = Trainer(train_config(corpus, root / "run", max_steps=30))
    trainer.train()
    return TrainedRun(corpus, root / "run", trainer)


@pytest.fixture(scope="session")
def trained_checkpoint(trained_run: TrainedRun) -> Path:
    """The ``final/`` checkpoint directory of the training run."""
    return trained_run.out / "final"


def copy_tokenizer(run: TrainedRun, out: Path) -> None:
    """Seed ``out`` with the run's tokenizer so that a second run shares its vocabulary exactly."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run.out / "sentencepiece.model", out / "sentencepiece.model")


# -- reliability and security tests: the shipped demo export, servers on 127.0.0.1 ----------------------------------


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The shipped fp32 demo export (``export/demo/fp32``): the real model behind the reliability tests."""
    from nmtserve.engine.model_dir import demo_export

    return demo_export("fp32")


@pytest.fixture(scope="session")
def demo_engine(demo_model_dir: Path):
    """The demo model in an offline engine: the reference every served translation is compared with."""
    from nmtserve.engine import Engine

    return Engine.load(demo_model_dir, threads=1, spin=False)


def scrape_metrics(url: str, by_model: bool = False) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a /metrics endpoint, parsed with prometheus_client's parser.

    Unless ``by_model``, series are summed over their ``model`` and ``version`` labels (PromQL's
    ``sum without (model, version)``), as a dashboard showing every model does: tests of one-model behaviour then
    read the same keys whatever the served model is called. The labels themselves are tested in
    test_server_metrics.py (and with ``by_model=True``)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            if not by_model and "model" in labels:
                labels.pop("model")
                labels.pop("version", None)
            key = (sample.name, tuple(sorted(labels.items())))
            samples[key] = samples.get(key, 0.0) + sample.value if not by_model else sample.value
    return samples


@pytest.fixture(scope="session")
def metrics_of():
    """``metrics_of(url)``: the samples of a /metrics endpoint (see ``scrape_metrics``)."""
    return scrape_metrics
