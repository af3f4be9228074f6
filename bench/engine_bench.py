"""``nmtserve bench engine``: the three parts on one checkpoint, written as JSON + PNG and printed as tables.

1. decode cost per token against forced output length: ONNX engine (K/V cache) vs the PyTorch reference without
   (and with) a cache, CTranslate2 alongside;
2. output tokens/s of the ONNX engine against max batch size, beam 1 and 4;
3. the ONNX engine beside CTranslate2 on the same weights, sentences, beam, threads and precision, with the
   share of identical outputs; when ours is slower, a profile of where its time goes.
Every engine runs with the same thread count. Timings are never asserted anywhere: they are reported.

``device="cuda"`` runs the same parts on a GPU: our engine with the CUDA execution provider (IO binding, the
cache as device values) on the fp16 and fp32 exports, CTranslate2 with ``device="cuda"`` at the matching compute
type. The PyTorch reference rows of part 1 are left out there: the reference decodes on CPU only.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from nmtserve.bench import artifacts, plots, report
from nmtserve.bench.batch_throughput import BATCH_SIZES, run_batch_throughput
from nmtserve.bench.decode_cost import LENGTHS, run_decode_cost
from nmtserve.bench.timing import limit_threads
from nmtserve.engine.decoding import DecodingOptions
from nmtserve.model.checkpoint import DEMO_CHECKPOINT

PARTS = ("decode", "batch", "ctranslate2")
DEFAULT_PRECISIONS = {"cpu": ("fp32", "int8"), "cuda": ("fp16", "fp32")}  # int8 kernels are CPU-only
RESULTS_JSON = "engine.json"
FIGURES = {"decode": "decode_cost.png", "batch": "batch_throughput.png", "ctranslate2": "versus_ctranslate2.png"}


@dataclass(frozen=True)
class EngineBenchConfig:
    checkpoint: Path = DEMO_CHECKPOINT
    model_dirs: tuple[Path, ...] = ()  # exported directories; none: shipped exports or export here
    precisions: tuple[str, ...] | None = None  # used when no model_dirs are given; None: DEFAULT_PRECISIONS[device]
    device: str = "cpu"  # "cpu" or "cuda", for our engine and CTranslate2 alike
    threads: int = 1
    int8_kernels: str = "auto"  # our int8 format on CPU (engine/int8_kernels.py); u8s8 is CTranslate2's arithmetic
    out: Path = Path("runs/bench/engine")
    source_file: Path = Path("data/corpus/dev.en")
    sentences: int = 500  # part 3 (and the pool parts 1 and 2 draw from)
    batch_sentences: int = 200  # part 2: 2 beams x 7 batch sizes x precisions runs over these
    profile_sentences: int = 200  # the profile's three runs
    batch_size: int = 32  # max batch of both engines in part 3
    # part 3 runs every (precision, beam) once per entry: None bounds cohorts by batch_size only, a number by that
    # many padded source tokens too (``engine.cohorts``), the same cohorts for both engines
    batch_tokens: tuple[int | None, ...] = (None,)
    lengths: tuple[int, ...] = LENGTHS
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    beams: tuple[int, ...] = (4, 1)
    max_length: int = 256
    repeats: int = 3  # part 3; part 1: 2 x repeats - 1 interleaved rounds; part 2: once per point (seconds each)
    parts: tuple[str, ...] = PARTS
    profile: str = "auto"  # "auto": when ours is below CTranslate2; "always"; "never"
    work_dir: Path | None = None  # cache of exports and conversions; None: a temporary directory
    quick: bool = False

    def quickened(self) -> EngineBenchConfig:
        """Tiny sizes for the smoke test: seconds on the tiny model, every code path still taken (idempotent)."""
        return replace(
            self,
            sentences=min(self.sentences, 8),
            batch_sentences=min(self.batch_sentences, 8),
            profile_sentences=min(self.profile_sentences, 8),
            batch_size=4,
            lengths=(4, 8, 16),
            batch_sizes=(1, 4),
            beams=(2, 1),
            # The tiny random model falls into loops of a few tokens; past ~16 tokens, orderings of a loop score
            # within float rounding of each other and which one a beam keeps depends on summation order, which
            # differs between engines (seen: 7 of 8 sentences identical at 32 tokens, after a kernel change).
            max_length=16,
            repeats=1,
            quick=True,
        )


def load_sources(path: Path, tokenizer_path: Path, count: int, max_positions: int) -> list[list[int]]:
    """The first ``count`` non-empty lines as token ids ending with EOS (truncated as the engine does).

    Empty lines are skipped: CTranslate2 answers an EOS-only source with an empty translation without decoding,
    which would flatter it.
    """
    from nmtserve.engine.tokenizer import Tokenizer
    from nmtserve.model.batching import read_lines

    tokenizer = Tokenizer(tokenizer_path)
    texts = [line for line in read_lines(Path(path)) if line.strip()][:count]
    if not texts:
        raise ValueError(f"{path}: no sentences")
    return [[*ids[: max_positions - 1], tokenizer.eos_id] for ids in tokenizer.encode_batch(texts)]


def median_length_source(sources: Sequence[Sequence[int]]) -> list[int]:
    """A typical source for part 1: the one of median length."""
    median = statistics.median_low(len(s) for s in sources)
    return list(next(s for s in sources if len(s) == median))


def run(config: EngineBenchConfig) -> dict[str, Any]:
    """Run the selected parts; returns everything that was written to ``out/engine.json``."""
    if config.quick:
        config = config.quickened()
    limit_threads(config.threads)
    if config.work_dir is not None:
        return _run(config, Path(config.work_dir))
    with tempfile.TemporaryDirectory(prefix="nmtserve-bench-") as tmp:
        return _run(config, Path(tmp))


def _run(config: EngineBenchConfig, work_dir: Path) -> dict[str, Any]:
    from nmtserve.bench.ctranslate2_engine import COMPUTE_TYPES, CTranslate2Engine, absolute_cap
    from nmtserve.bench.engines import ctranslate2_translate, onnx_translate, torch_translate
    from nmtserve.engine import Engine
    from nmtserve.model.checkpoint import TOKENIZER, load_checkpoint

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.device not in DEFAULT_PRECISIONS:
        raise ValueError(f"device must be one of {sorted(DEFAULT_PRECISIONS)}, not {config.device!r}")
    precisions = config.precisions or DEFAULT_PRECISIONS[config.device]
    found = artifacts.prepare(config.checkpoint, list(config.model_dirs), list(precisions), work_dir, config.threads)
    model, _, _ = load_checkpoint(found.checkpoint)
    # spin=False, the server's default: with more than one thread see ``limit_threads``.
    load = partial(
        Engine.load, device=config.device, threads=config.threads, spin=False, int8_kernels=config.int8_kernels
    )
    engines = {p: load(d) for p, d in sorted(found.onnx.items())}
    needs_ct2 = {"decode", "ctranslate2"} & set(config.parts)  # part 2 alone runs where CTranslate2 cannot
    ct2 = {
        p: CTranslate2Engine(found.ctranslate2, threads=config.threads, precision=p, device=config.device)
        for p in engines
        if p in COMPUTE_TYPES[config.device] and needs_ct2
    }
    sources = load_sources(
        config.source_file, found.checkpoint / TOKENIZER, config.sentences, model.config.max_positions
    )
    options = absolute_cap(DecodingOptions(max_length=config.max_length))
    results: dict[str, Any] = {
        "config": _jsonable(asdict(config)),
        "machine": report.machine_info(config.threads, config.device),
        "artifacts": {
            "checkpoint": str(found.checkpoint),
            "weights_sha256": found.weights_sha256,
            "onnx": {p: str(d) for p, d in found.onnx.items()},
            "ctranslate2": str(found.ctranslate2),
        },
        "int8_kernels_resolved": {p: e.runtime.int8_kernels for p, e in engines.items() if p == "int8"},
        "decoding": _jsonable(asdict(options)),
    }
    title = f"{found.checkpoint.name} ({model.config.d_model}d), {config.threads} thread(s)"

    if "decode" in config.parts:
        decoders = {f"onnx {p} (cache)": onnx_translate(e) for p, e in engines.items()}
        decoders |= {f"ctranslate2 {p}": ctranslate2_translate(e) for p, e in ct2.items()}
        if config.device == "cpu":
            decoders["torch (cache)"] = torch_translate(model, use_cache=True)
            decoders["torch (no cache)"] = torch_translate(model, use_cache=False)
        decode = run_decode_cost(
            decoders, median_length_source(sources), config.lengths, repeats=1, rounds=2 * config.repeats - 1
        )
        results["decode_cost"] = decode
        plots.plot_decode_cost(decode, out / FIGURES["decode"], f"Decode cost per token: {title}")
        print(report.format_decode_cost(decode), flush=True)

    if "batch" in config.parts:
        throughput = run_batch_throughput(
            {f"onnx {p}": onnx_translate(e) for p, e in engines.items()},
            sources[: config.batch_sentences],
            options,
            config.batch_sizes,
            sorted(set(config.beams)),
        )
        results["batch_throughput"] = throughput
        plots.plot_batch_throughput(throughput, out / FIGURES["batch"], f"ONNX engine throughput: {title}")
        print(report.format_batch_throughput(throughput), flush=True)

    if "ctranslate2" in config.parts:
        versus, profiles = _versus(config, engines, ct2, sources, options, out)
        results["versus_ctranslate2"] = versus
        results["profile"] = profiles
        plots.plot_versus(versus, out / FIGURES["ctranslate2"], f"Same weights and sentences: {title}")
        print(report.format_versus(versus), flush=True)
        for profile in profiles:
            print(report.format_profile(profile), flush=True)

    results["contention"] = report.contention(results)
    if config.device == "cpu" and results["contention"]["min_cpu_over_wall"] < 0.9:  # on a GPU the CPU waits
        print(
            f"warning: some runs got {100 * results['contention']['min_cpu_over_wall']:.0f}% of a core "
            "(other processes competed for the CPU); treat those figures with care"
        )
    (out / RESULTS_JSON).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / RESULTS_JSON} and {', '.join(FIGURES[p] for p in config.parts if p in FIGURES)}")
    return results


def _versus(
    config: EngineBenchConfig,
    engines: dict[str, Any],
    ct2: dict[str, Any],
    sources: list[list[int]],
    options: DecodingOptions,
    out: Path,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from tqdm import tqdm

    from nmtserve.bench.engines import ctranslate2_translate, onnx_translate
    from nmtserve.bench.profile import profile_engine
    from nmtserve.bench.versus_ctranslate2 import compare

    work = [(p, beam, tokens) for p in ct2 for beam in config.beams for tokens in config.batch_tokens]
    versus, profiles = [], []
    for precision, beam, tokens in tqdm(work, desc="vs ctranslate2", unit="config"):
        beam_options = replace(options, beam_size=beam)
        row = compare(
            onnx_translate(engines[precision], tokens),
            ctranslate2_translate(ct2[precision], tokens),
            sources,
            beam_options,
            config.batch_size,
            config.repeats,
        )
        row["precision"], row["batch_tokens"] = precision, tokens
        versus.append(row)
        below = row["ratio_tokens_per_s"] < 1.0
        if config.profile == "always" or (config.profile == "auto" and below):
            subset = sources[: config.profile_sentences]
            profiles.append(
                profile_engine(engines[precision], subset, beam_options, config.batch_size, out / "profile", tokens)
            )
    return versus, profiles


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
