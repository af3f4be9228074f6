"""Speed of a converted Hugging Face model beside CTranslate2 (converted by CTranslate2's own converter).

Speed does not depend on the weights' values, so the models are random, of a real model's shape (OPUS-MT's
Marian by default; ``--family nllb``: NLLB-200-distilled-600M's M2M-100 with its 256k vocabulary), and both
engines decode a fixed number of tokens per sentence (min = max length) so that they do the same work; NLLB's
sentences start with the forced target-language token in both. One thread; tokens per CPU second at each
precision and beam (best of ``--repeats`` rounds, the two engines in turn within each round: CPU time moves far
less than wall time when something else shares the machine),
and (``--family nllb``) the peak RSS of a server with each model loaded. Run it where the CPU is not shared:
``python -m nmtserve.bench.hf_shapes --out /tmp/hf-bench``.
"""

from __future__ import annotations

import argparse
import json
import random
from functools import partial
from pathlib import Path

from nmtserve.bench.timing import limit_threads, measure_in_turns
from nmtserve.engine.int8_kernels import INT8_KERNELS

OPUS_MT = dict(
    d_model=512,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=8,
    decoder_attention_heads=8,
    encoder_ffn_dim=2048,
    decoder_ffn_dim=2048,
)


NLLB_600M = dict(
    d_model=1024,
    encoder_layers=12,
    decoder_layers=12,
    encoder_attention_heads=16,
    decoder_attention_heads=16,
    encoder_ffn_dim=4096,
    decoder_ffn_dim=4096,
    max_position_embeddings=1024,
)
NLLB_VOCAB = 256206  # facebook/nllb-200-distilled-600M's config.json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--family", choices=["marian", "nllb"], default="marian")
    parser.add_argument("--vocab", type=int, default=None, help="default: the family's (58101, 256206)")
    parser.add_argument("--layers", type=int, default=None, help="nllb: fewer layers (a quick check of the script)")
    parser.add_argument("--sentences", type=int, default=16)
    parser.add_argument("--source-length", type=int, default=24)
    parser.add_argument("--output-length", type=int, default=24)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--beams", nargs="+", type=int, default=[4, 1])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per setting; the best CPU time is kept")
    parser.add_argument("--int8-kernels", default="auto", choices=INT8_KERNELS, help="our int8 format on CPU")
    args = parser.parse_args(argv)
    limit_threads(1)

    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    from nmtserve.engine import DecodingOptions, Engine
    from nmtserve.export.exporter import export_model
    from nmtserve.export.hf_convert import convert_hf
    from nmtserve.export.hf_testing import tiny_m2m100, tiny_marian

    out = args.out
    hf = out / "hf"
    nllb = args.family == "nllb"
    vocab = args.vocab or (NLLB_VOCAB if nllb else 58101)
    if not (hf / "config.json").is_file():
        if nllb:
            shape = NLLB_600M | ({"encoder_layers": args.layers, "decoder_layers": args.layers} if args.layers else {})
            tiny_m2m100(hf, "nllb", 160, seed=2, extra_ids=vocab - 166, transformers_init=True, **shape)
        else:
            tiny_marian(hf, total_vocab=vocab, **OPUS_MT)  # type: ignore[arg-type]
    checkpoint = out / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        convert_hf(hf, checkpoint)
    rng = random.Random(0)
    n = args.output_length
    options = {b: DecodingOptions(beam_size=b, min_length=n, max_length=n, max_length_ratio=1e3) for b in args.beams}
    if nllb:
        source_code, target_code = "eng_Latn", "deu_Latn"
        from nmtserve.engine.nllb_tokenizer import NllbTokenizer

        tokenizer = NllbTokenizer(hf)
        eos, first = tokenizer.eos_id, tokenizer.language_id(source_code)
        prefix = [tokenizer.language_id(target_code)]
        body = range(4, 160)  # ordinary pieces of the tokenizer
    else:
        eos, first, prefix, body = 0, None, [], range(3, vocab - 1)
    opening = [] if first is None else [first]
    sources = [
        [*opening, *(rng.choice(body) for _ in range(args.source_length - 1 - len(opening))), eos]
        for _ in range(args.sentences)
    ]
    results = []
    for precision in args.precisions:
        model_dir = out / f"onnx-{precision}"
        if not (model_dir / "manifest.json").is_file():
            export_model(checkpoint, model_dir, precision, progress=True)
        ct2_dir = out / f"ct2-{precision}"
        if not (ct2_dir / "model.bin").is_file():
            quantization = None if precision == "fp32" else precision
            TransformersConverter(str(hf)).convert(str(ct2_dir), quantization=quantization, force=True)
        pieces = json.loads((ct2_dir / "shared_vocabulary.json").read_text(encoding="utf-8"))
        engine = Engine.load(model_dir, threads=1, int8_kernels=args.int8_kernels)
        translator = ctranslate2.Translator(str(ct2_dir), intra_threads=1, inter_threads=1)
        tokens = [[pieces[i] for i in ids] for ids in sources]
        forced = [prefix] * len(sources)
        target_prefix = [[pieces[i] for i in prefix]] * len(sources) if prefix else None
        for beam in args.beams:
            ct2_options = dict(beam_size=beam, min_decoding_length=n, max_decoding_length=n)

            ours = partial(
                engine.translate_ids, sources, options[beam], max_batch_size=len(sources), target_prefixes=forced
            )
            theirs = partial(translator.translate_batch, tokens, target_prefix=target_prefix, **ct2_options)
            ours(), theirs()  # warm-up: onnxruntime's arena and CTranslate2's caches grow to these shapes
            calls = {"nmtserve": ours, "ctranslate2": theirs}
            timings, last = measure_in_turns(calls, args.repeats, f"{precision} beam {beam}")
            produced = sum(len(nbest[0].token_ids) for nbest in last["nmtserve"])
            produced_ct2 = sum(len(r.hypotheses[0]) for r in last["ctranslate2"])
            row = {
                "family": args.family,
                "precision": precision,
                "beam": beam,
                "int8_kernels": engine.runtime.int8_kernels if precision == "int8" else None,
                "tokens": produced,
                "tokens_ct2": produced_ct2,
                "nmtserve_tokens_per_cpu_s": round(produced / timings["nmtserve"].best_cpu, 1),
                "ctranslate2_tokens_per_cpu_s": round(produced_ct2 / timings["ctranslate2"].best_cpu, 1),
                "timings": {name: timing.to_dict() for name, timing in timings.items()},
            }
            row["ratio"] = round(row["nmtserve_tokens_per_cpu_s"] / row["ctranslate2_tokens_per_cpu_s"], 3)
            row["ratio_per_round"] = [
                round((produced / a) / (produced_ct2 / b), 3)
                for a, b in zip(timings["nmtserve"].cpu_seconds, timings["ctranslate2"].cpu_seconds, strict=True)
            ]
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "timings"}), flush=True)
        del engine, translator
        if nllb:
            memory = peak_rss(model_dir, ct2_dir, source_code, target_code)
            results.append({"family": args.family, "precision": precision, **memory})
            print(json.dumps(results[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


def peak_memory(pid: int) -> int:
    """Peak resident memory (VmHWM) of process ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM")


# VmHWM, not getrusage's ru_maxrss: Linux carries the parent's high-water mark across fork + exec into
# ru_maxrss, so a child of this (multi-GB) process would report the parent's peak.
CT2_PROCESS = """
import ctranslate2, json, sys
translator = ctranslate2.Translator(sys.argv[1], intra_threads=1)
tokens = json.loads(sys.argv[2])
translator.translate_batch([tokens], target_prefix=[[sys.argv[3]]], beam_size=4, max_decoding_length=8)
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(int(status.split()[0]) * 1024)
"""


def peak_rss(model_dir: Path, ct2_dir: Path, source: str, target: str) -> dict[str, float]:
    """Peak RSS (GiB) of ``nmtserve serve`` with ``model_dir`` after one beam-4 request, and of a process with
    CTranslate2's Translator loaded after the same translation (CTranslate2 has no server of its own)."""
    import subprocess
    import sys

    import grpc

    from nmtserve.loadtest.serverproc import ServerProcess
    from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
    from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc

    with ServerProcess(model_dir, "--threads", "1") as server, grpc.insecure_channel(server.address) as channel:
        request = pb.TranslateRequest(
            texts=["The program is free software."],
            source_language=source,
            target_language=target,
            options=pb.DecodingOptions(beam_size=4, max_length=8),
        )
        pb_grpc.TranslatorStub(channel).Translate(request, timeout=300)
        ours = peak_memory(server.pid)
    vocabulary = json.loads((ct2_dir / "shared_vocabulary.json").read_text(encoding="utf-8"))
    tokens = json.dumps([source, *vocabulary[10:30], "</s>"])
    run = subprocess.run([sys.executable, "-c", CT2_PROCESS, str(ct2_dir), tokens, target], capture_output=True)
    theirs = int(run.stdout.decode().split()[-1])
    gib = 1024**3
    return {"nmtserve_server_peak_rss_gib": round(ours / gib, 2), "ctranslate2_peak_rss_gib": round(theirs / gib, 2)}


if __name__ == "__main__":
    raise SystemExit(main())
