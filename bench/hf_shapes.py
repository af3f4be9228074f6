"""Speed of a converted Hugging Face model beside CTranslate2 (converted by CTranslate2's own converter).

Speed does not depend on the weights' values, so the models are random, of a real model's shape (OPUS-MT's
Marian by default), and both engines decode a fixed number of tokens per sentence (min = max length) so that
they do the same work. One thread; tokens/s at each precision and beam. Run it where the CPU is not shared:
``python -m nmtserve.bench.hf_shapes --out /tmp/hf-bench``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

OPUS_MT = dict(
    d_model=512,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=8,
    decoder_attention_heads=8,
    encoder_ffn_dim=2048,
    decoder_ffn_dim=2048,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--vocab", type=int, default=58101)
    parser.add_argument("--sentences", type=int, default=16)
    parser.add_argument("--source-length", type=int, default=24)
    parser.add_argument("--output-length", type=int, default=24)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--beams", nargs="+", type=int, default=[4, 1])
    args = parser.parse_args(argv)

    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    from nmtserve.engine import DecodingOptions, Engine
    from nmtserve.export.exporter import export_model
    from nmtserve.export.hf_convert import convert_hf
    from nmtserve.export.hf_testing import tiny_marian

    out = args.out
    hf = out / "hf"
    if not (hf / "config.json").is_file():
        tiny_marian(hf, total_vocab=args.vocab, **OPUS_MT)  # type: ignore[arg-type]
    checkpoint = convert_hf(hf, out / "checkpoint")
    pieces = {i: p for p, i in json.loads((hf / "vocab.json").read_text()).items()}
    rng = random.Random(0)
    sources = [
        [*(rng.randrange(3, args.vocab - 1) for _ in range(args.source_length - 1)), 0] for _ in range(args.sentences)
    ]
    n = args.output_length
    options = {b: DecodingOptions(beam_size=b, min_length=n, max_length=n, max_length_ratio=1e3) for b in args.beams}
    results = []
    for precision in args.precisions:
        model_dir = out / f"onnx-{precision}"
        if not (model_dir / "manifest.json").is_file():
            export_model(checkpoint, model_dir, precision, progress=False)
        ct2_dir = out / f"ct2-{precision}"
        if not (ct2_dir / "model.bin").is_file():
            quantization = None if precision == "fp32" else precision
            TransformersConverter(str(hf)).convert(str(ct2_dir), quantization=quantization, force=True)
        engine = Engine.load(model_dir, threads=1)
        translator = ctranslate2.Translator(str(ct2_dir), intra_threads=1, inter_threads=1)
        tokens = [[pieces[i] for i in ids] for ids in sources]
        for beam in args.beams:
            engine.translate_ids(sources[:2], options[beam])  # warm-up
            start = time.perf_counter()
            ours = engine.translate_ids(sources, options[beam], max_batch_size=len(sources))
            ours_s = time.perf_counter() - start
            translator.translate_batch(tokens[:2], beam_size=beam, min_decoding_length=n, max_decoding_length=n)
            start = time.perf_counter()
            theirs = translator.translate_batch(
                tokens, beam_size=beam, min_decoding_length=n, max_decoding_length=n, max_batch_size=len(tokens)
            )
            theirs_s = time.perf_counter() - start
            produced = sum(len(nbest[0].token_ids) for nbest in ours)
            produced_ct2 = sum(len(r.hypotheses[0]) for r in theirs)
            row = {
                "precision": precision,
                "beam": beam,
                "tokens": produced,
                "tokens_ct2": produced_ct2,
                "nmtserve_tokens_per_s": round(produced / ours_s, 1),
                "ctranslate2_tokens_per_s": round(produced_ct2 / theirs_s, 1),
            }
            row["ratio"] = round(row["nmtserve_tokens_per_s"] / row["ctranslate2_tokens_per_s"], 3)
            results.append(row)
            print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
