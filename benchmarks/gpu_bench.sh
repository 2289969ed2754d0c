#!/usr/bin/env bash
# One device call: the attention benchmark (all names in one run; bench.json is rewritten after every row, so a
# run cut short by the call's limit keeps its rows) and the decode benchmark. Results in $OUT/results.tgz.
# E2E_SIZES="1b-d128 1b" first times the training step end to end (sdpa_cudnn and triton_attention taking turns,
# e2e_bench.py) at each size; DECODE_TIMEOUT=0 leaves the decode benchmark out.
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
for size in ${E2E_SIZES:-}; do
  timeout ${E2E_TIMEOUT:-140} python3 benchmarks/e2e_bench.py --phases train --names sdpa_cudnn,triton_attention \
    --size "$size" --out "$OUT/r/e2e_$size" > "$OUT/r/e2e_$size.txt" 2>&1
  tail -n 3 "$OUT/r/e2e_$size.txt"
done
timeout ${BENCH_TIMEOUT:-450} python3 benchmarks/attention_bench.py --out "$OUT/r" ${BENCH_ARGS:-} > "$OUT/r/bench_log.txt" 2>&1
tail -n 4 "$OUT/r/bench_log.txt"
# cut short by BENCH_TIMEOUT: the Markdown and the plot from the rows it kept
[ -f "$OUT/r/bench.md" ] || [ ! -f "$OUT/r/bench.json" ] \
  || python3 benchmarks/attention_bench.py --render "$OUT/r/bench.json" --out "$OUT/r" >> "$OUT/r/bench_log.txt" 2>&1
if [ "${DECODE_TIMEOUT:-100}" != 0 ]; then
  timeout ${DECODE_TIMEOUT:-100} python3 benchmarks/decode_bench.py --out "$OUT/r" > "$OUT/r/decode_log.txt" 2>&1
  tail -n 8 "$OUT/r/decode_log.txt"
fi
(cd "$OUT/r" && tar czf ../results.tgz . ) && rm -rf "$OUT/r"
