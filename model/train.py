"""Training: Adam (beta2 0.98, eps 1e-9), warm-up schedule, label smoothing 0.1, token batches (Section 5).

A run can stop at any time (``max_minutes``) and resume from ``<out>/state``: weights, Adam moments and the
trainer's position are saved as safetensors + JSON, never pickle. Every evaluation also keeps a weight
snapshot; the final checkpoint averages the last few, which is cheap and usually worth a little BLEU.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from nmtserve.engine.tokenizer import Tokenizer
from nmtserve.model.batching import TokenizedPairs, collate, make_batches, read_lines, tokenize_split
from nmtserve.model.beam_search import DecodingOptions
from nmtserve.model.checkpoint import TOKENIZER, WEIGHTS, read_config, save_checkpoint
from nmtserve.model.evaluate import score, translate_texts
from nmtserve.model.schedule import transformer_lr
from nmtserve.model.tokenizer_training import train_tokenizer
from nmtserve.model.train_config import TrainConfig
from nmtserve.model.transformer import PRESETS, Transformer

log = logging.getLogger(__name__)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors = {
        f"{param}.{name}": value
        for param, moments in state["state"].items()
        for name, value in moments.items()
        if torch.is_tensor(value)
    }
    return tensors, {"param_groups": state["param_groups"]}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        param, name = key.split(".", 1)
        state.setdefault(int(param), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.out = Path(config.out)
        self.state_dir, self.snapshot_dir = self.out / "state", self.out / "snapshots"
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        tokenizer_path = self.out / TOKENIZER
        if config.init_from is not None and not tokenizer_path.is_file():
            self.out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(config.init_from) / TOKENIZER, tokenizer_path)
        if not tokenizer_path.is_file():
            log.info("training the SentencePiece model")
            texts = read_lines(config.corpus / "train.en") + read_lines(config.corpus / "train.de")
            train_tokenizer(texts, tokenizer_path, config.vocab_size)
        self.tokenizer = Tokenizer(tokenizer_path)
        if config.init_from is not None:
            model_config = read_config(Path(config.init_from))[0]
        else:
            preset = PRESETS[config.preset]
            model_config = type(preset).from_dict({**preset.to_dict(), "vocab_size": self.tokenizer.vocab_size})
        self.model = Transformer(model_config)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9)
        self.train_pairs = tokenize_split(config.corpus, "train", self.tokenizer, self.out / "cache")
        self.dev_pairs = tokenize_split(config.corpus, "dev", self.tokenizer, self.out / "cache")
        self.dev_sources = read_lines(config.corpus / "dev.en")[: config.eval_sentences]
        self.dev_references = read_lines(config.corpus / "dev.de")[: config.eval_sentences]
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.history: list[dict] = []
        if config.init_from is not None:
            self.model.load_state_dict(load_file(Path(config.init_from) / WEIGHTS))
        self._resume()

    # -- state -------------------------------------------------------------------------------------------
    def _resume(self) -> None:
        trainer_file = self.state_dir / "trainer.json"
        if not trainer_file.is_file():
            return
        meta = json.loads(trainer_file.read_text())
        self.model.load_state_dict(load_file(self.state_dir / "model.safetensors"))
        _load_optimizer(self.optimizer, load_file(self.state_dir / "optimizer.safetensors"), meta["optimizer"])
        self.step, self.epoch, self.batch_in_epoch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        self.history = meta["history"]
        torch.manual_seed(self.config.seed + self.step)
        log.info("resumed at step %d (epoch %d, batch %d)", self.step, self.epoch, self.batch_in_epoch)

    def save_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tensors, optimizer_meta = _optimizer_tensors(self.optimizer)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, self.state_dir / "model.tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, self.state_dir / "optimizer.tmp")
        meta = {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "history": self.history,
            "optimizer": optimizer_meta,
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()},
        }
        (self.state_dir / "trainer.tmp").write_text(json.dumps(meta))
        # Rename last, so a run killed mid-save leaves the previous state whole.
        (self.state_dir / "model.tmp").replace(self.state_dir / "model.safetensors")
        (self.state_dir / "optimizer.tmp").replace(self.state_dir / "optimizer.safetensors")
        (self.state_dir / "trainer.tmp").replace(self.state_dir / "trainer.json")

    # -- training ----------------------------------------------------------------------------------------
    def loss(self, pairs: TokenizedPairs, indices: np.ndarray) -> tuple[torch.Tensor, int]:
        cfg = self.model.config
        source, target_in, target_out = (
            torch.from_numpy(a) for a in collate(pairs, indices, cfg.pad_id, cfg.bos_id, cfg.eos_id)
        )
        logits = self.model(source, target_in)
        tokens = int((target_out != cfg.pad_id).sum())
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(),
            target_out.view(-1),
            ignore_index=cfg.pad_id,
            label_smoothing=self.config.label_smoothing,
            reduction="sum",
        )
        return loss, tokens

    def epoch_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.config.seed + self.epoch)
        return make_batches(self.train_pairs, self.config.max_tokens, self.config.max_length, rng)

    def train(self) -> Path:
        cfg = self.config
        deadline = time.monotonic() + cfg.max_minutes * 60
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        batches = self.epoch_batches()
        window_loss, window_tokens = 0.0, 0
        while self.step < cfg.max_steps and time.monotonic() < deadline:
            self.model.train()
            lr = transformer_lr(self.step + 1, self.model.config.d_model, cfg.warmup_steps, cfg.lr_factor)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            step_tokens = 0
            losses = []
            for _ in range(cfg.accumulate):
                if self.batch_in_epoch >= len(batches):
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    batches = self.epoch_batches()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                    loss, tokens = self.loss(self.train_pairs, batches[self.batch_in_epoch])
                self.batch_in_epoch += 1
                loss.backward()
                losses.append(loss.item())
                step_tokens += tokens
            for p in self.model.parameters():  # loss was summed: normalise by target tokens of the whole step
                if p.grad is not None:
                    p.grad.div_(step_tokens)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.step += 1
            window_loss, window_tokens = window_loss + sum(losses), window_tokens + step_tokens
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses) / step_tokens:.3f}", lr=f"{lr:.2e}", epoch=self.epoch)
            if self.step % cfg.eval_every == 0:
                self.evaluate(window_loss / max(window_tokens, 1))
                window_loss, window_tokens = 0.0, 0
                self.save_state()
        bar.close()
        self.save_state()
        return self.finalize()

    @torch.inference_mode()
    def evaluate(self, train_loss: float) -> dict:
        self.model.eval()
        total, tokens = 0.0, 0
        rng = np.random.default_rng(0)
        for indices in make_batches(self.dev_pairs, self.config.max_tokens, self.config.max_length, rng):
            loss, n = self.loss(self.dev_pairs, indices)
            total, tokens = total + float(loss), tokens + n
        hypotheses = translate_texts(
            self.model, self.tokenizer, self.dev_sources, DecodingOptions(beam_size=1), batch_size=64
        )
        bleu = score(hypotheses, self.dev_references).bleu
        entry = {
            "step": self.step,
            "epoch": self.epoch,
            "train_loss": train_loss,
            "dev_loss": total / max(tokens, 1),
            "dev_bleu": bleu,
            "time": time.time(),
        }
        self.history.append(entry)
        tqdm.write(json.dumps(entry))
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.model.state_dict().items()},
            self.snapshot_dir / f"step_{self.step:07d}.safetensors",
        )
        for old in sorted(self.snapshot_dir.glob("step_*.safetensors"))[: -self.config.average_last]:
            old.unlink()
        plot_history(self.history, self.out / "curves.png")
        return entry

    def finalize(self) -> Path:
        """Average the last snapshots into ``<out>/final``, a plain checkpoint directory."""
        snapshots = sorted(self.snapshot_dir.glob("step_*.safetensors"))[-self.config.average_last :]
        averaged: dict[str, torch.Tensor] | None = None
        if snapshots:
            weights = [load_file(s) for s in snapshots]
            averaged = {k: cast(torch.Tensor, sum(w[k] for w in weights)) / len(weights) for k in weights[0]}
        metadata = {
            "steps": self.step,
            "epochs": self.epoch,
            "averaged_snapshots": [s.name for s in snapshots],
            "train_config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()},
            "history": self.history,
        }
        return save_checkpoint(self.out / "final", self.model, self.out / TOKENIZER, metadata, averaged)


def plot_history(history: list[dict], path: Path) -> None:
    """Loss and BLEU curves: what one looks at to decide whether training still pays."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, (ax_loss, ax_bleu) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(steps, [h["train_loss"] for h in history], label="train (label-smoothed)")
    ax_loss.plot(steps, [h["dev_loss"] for h in history], label="dev")
    ax_loss.set(xlabel="step", ylabel="cross-entropy per token", title="Loss")
    ax_loss.legend()
    ax_bleu.plot(steps, [h["dev_bleu"] for h in history], marker="o", color="tab:green")
    ax_bleu.set(xlabel="step", ylabel="BLEU", title="Dev BLEU (greedy)")
    for ax in (ax_loss, ax_bleu):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
