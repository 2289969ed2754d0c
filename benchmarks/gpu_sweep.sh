#!/usr/bin/env bash
# One device call (under 10 minutes): tune.py on CASES. By default the e2e model's attention shape in three
# layouts (contiguous; the model's (B, S, H, D) views; views with contiguous Q and dO copies for the backward),
# then head size 256 with the spill-free 8-warp dK/dV candidates (benchmarks/NOTES.md entry 8).
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
timeout ${TUNE_TIMEOUT:-540} python3 benchmarks/tune.py --out "$OUT/r" --cases ${CASES:-d64-gqa-s4096-causal-b2,\
d64-gqa-s4096-causal-b2-bshd,d64-gqa-s4096-causal-b2-bshdcopy,d256-mha-s8192-causal} > "$OUT/r/tune_log.txt" 2>&1
tail -n 8 "$OUT/r/tune_log.txt"
(cd "$OUT/r" && tar czf ../results.tgz . ) && rm -rf "$OUT/r"
