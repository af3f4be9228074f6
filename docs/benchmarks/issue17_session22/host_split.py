"""Where one ``Engine.translate_ids`` run's thread CPU time goes on the host: the beam rules (``beam.advance``),
the ragged cache's reorder, and the step graph (``Binding.run``), each timed by wrapping it. Session 22's ceiling
for the 1.1x target (docs/benchmarks.md).

    python host_split.py --model /tmp/ragged-int8 --source /tmp/legal.en --beam 4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nmtserve.engine.batch as batch
import nmtserve.engine.cache as cache
import nmtserve.engine.runtime as runtime
from nmtserve.engine.decoding import DecodingOptions
from nmtserve.engine.engine import Engine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--sentences", type=int, default=176)
    parser.add_argument("--beam", type=int, default=4)
    args = parser.parse_args()
    totals = {"beam rules": 0.0, "cache reorder": 0.0, "graphs": 0.0}

    def timed(owner: object, name: str, key: str) -> None:
        function = getattr(owner, name)

        def wrapper(*a, **k):  # type: ignore[no-untyped-def]
            start = time.thread_time()
            result = function(*a, **k)
            totals[key] += time.thread_time() - start
            return result

        setattr(owner, name, wrapper)

    timed(batch, "advance", "beam rules")
    timed(batch, "advance_greedy_batch", "beam rules")
    timed(cache.RaggedHostCache, "reorder", "cache reorder")
    timed(runtime.Binding, "run", "graphs")
    engine = Engine.load(args.model, threads=1)
    lines = [line.strip() for line in args.source.read_text().splitlines() if line.strip()][: args.sentences]
    ids, options = engine.encode_texts(lines), DecodingOptions(beam_size=args.beam)
    engine.translate_ids(ids, options, 32)  # warm-up
    totals.update(dict.fromkeys(totals, 0.0))
    start = time.thread_time()
    engine.translate_ids(ids, options, 32)
    total = time.thread_time() - start
    print(
        f"{args.model} beam {args.beam}: {total:.2f} s", {k: f"{v:.3f} s ({v / total:.1%})" for k, v in totals.items()}
    )


if __name__ == "__main__":
    main()
