#!/bin/bash
# Issue 17, session 23: p99/p50 at half load with equal work (equal source AND translation lengths)
cd /work/main
OUT=/tmp/s23/runs; mkdir -p $OUT
PY=.venv/bin/python
for text in dev readme; do
  case $text in dev) IN=data/corpus/dev.en;; readme) IN=/tmp/readme600.en;; esac
  $PY -m nmtserve.bench.latency_floor --model /tmp/ragged-fp32 --input $IN --equal-work --out $OUT/floor_${text}_equal_work.json
  $PY -m nmtserve.bench.latency_floor --model /tmp/ragged-fp32 --input $IN --out $OUT/floor_${text}_equal_length.json
  for mode in equal_work equal_length; do
    flag=""; [ $mode = equal_work ] && flag="--equal-work"
    $PY -m nmtserve.bench.equal_length_sweep --model /tmp/ragged-fp32 --input $IN $flag \
      --setting "request, join window 8 (default)" --setting continuous --repeats 2 --duration 30 \
      --out $OUT/sweep_${text}_${mode}.json
  done
done
echo done
