#!/usr/bin/env bash
# One device call (under 10 minutes) for issue 4's open measurements: decode per call and inside CUDA graphs,
# a sweep of the decode launch configuration, the end-to-end 0.85B Llama (training and generate() per name),
# and where a short call's time goes. Results land in $OUT as one results.tgz (the device tool returns few
# files per call).
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
timeout 120 python3 benchmarks/decode_bench.py --out "$OUT/r" > "$OUT/r/decode_log.txt" 2>&1
tail -n 8 "$OUT/r/decode_log.txt"
timeout 100 python3 benchmarks/tune_decode.py --out "$OUT/r" > "$OUT/r/tune_decode_log.txt" 2>&1
cat "$OUT/r/tune_decode_log.txt" | tail -n 4
timeout ${E2E_TIMEOUT:-270} python3 benchmarks/e2e_bench.py --size 1b --out "$OUT/r" > "$OUT/r/e2e_log.txt" 2>&1
tail -n 12 "$OUT/r/e2e_log.txt"
timeout 60 python3 benchmarks/launch_overhead.py --out "$OUT/r" > "$OUT/r/launch_log.txt" 2>&1
(cd "$OUT/r" && tar czf ../results.tgz . ) && rm -rf "$OUT/r"
