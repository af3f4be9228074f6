"""Session 22's A/B of ``beam_step_across_sentences.patch`` (apply it first: ``git apply``): whole
``Engine.translate_ids`` runs with the beam rules applied sentence by sentence (``BATCHED_BEAM_FROM`` huge) and as
one array step per group of sentences (``BATCHED_BEAM_FROM = 2``), CPU time, taking turns; the two must give the
same n-best lists and scores. It also reports the thread CPU time spent inside the beam rules themselves.

    python beam_step_ab.py --model /tmp/ragged-int8 --source /tmp/legal.en --rounds 5 --out beam_step_ab.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import nmtserve.engine.batch as batch
from nmtserve.engine.decoding import DecodingOptions
from nmtserve.engine.engine import Engine

SIDES = {"per_sentence": 10**9, "batched": 2}


def _timed(function, totals: dict[str, float], key: str):  # type: ignore[no-untyped-def]
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        start = time.thread_time()
        result = function(*args, **kwargs)
        totals[key] += time.thread_time() - start
        return result

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--sentences", type=int, default=176)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    engine = Engine.load(args.model, threads=1)
    lines = [line.strip() for line in args.source.read_text().splitlines() if line.strip()][: args.sentences]
    ids = engine.encode_texts(lines)
    options = DecodingOptions(beam_size=args.beam, num_hypotheses=2)
    rules = {"per_sentence": 0.0, "batched": 0.0}
    batch.advance = _timed(batch.advance, rules, "per_sentence")
    batch.advance_beam_batch = _timed(batch.advance_beam_batch, rules, "batched")

    def run(side: str) -> tuple[float, list]:
        batch.BATCHED_BEAM_FROM = SIDES[side]
        start = time.process_time()
        nbests = engine.translate_ids(ids, options, 32)
        return time.process_time() - start, [[(h.token_ids, h.score) for h in nbest] for nbest in nbests]

    if run("per_sentence")[1] != run("batched")[1]:
        raise SystemExit("the two ways of applying the beam rules gave different n-best lists")
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    rule_seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    for round_ in range(args.rounds):
        for side in list(SIDES) if round_ % 2 == 0 else list(SIDES)[::-1]:
            rules.update(per_sentence=0.0, batched=0.0)
            times[side].append(run(side)[0])
            rule_seconds[side].append(rules["per_sentence"] + rules["batched"])
    result = {
        "model": str(args.model),
        "source": str(args.source),
        "sentences": len(ids),
        "beam": args.beam,
        "run_seconds": times,
        "beam_rule_seconds": rule_seconds,
        "per_sentence_over_batched_median": statistics.median(times["per_sentence"])
        / statistics.median(times["batched"]),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
