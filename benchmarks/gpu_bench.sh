#!/usr/bin/env bash
# One device call: the attention benchmark (all names in one run; bench.json is rewritten after every row, so a
# run cut short by the call's limit keeps its rows) and the decode benchmark. Results in $OUT/results.tgz.
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
timeout ${BENCH_TIMEOUT:-450} python3 benchmarks/attention_bench.py --out "$OUT/r" ${BENCH_ARGS:-} > "$OUT/r/bench_log.txt" 2>&1
tail -n 4 "$OUT/r/bench_log.txt"
timeout ${DECODE_TIMEOUT:-100} python3 benchmarks/decode_bench.py --out "$OUT/r" > "$OUT/r/decode_log.txt" 2>&1
tail -n 8 "$OUT/r/decode_log.txt"
(cd "$OUT/r" && tar czf ../results.tgz . ) && rm -rf "$OUT/r"
