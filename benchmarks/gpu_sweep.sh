#!/usr/bin/env bash
# One device call (under 10 minutes) for benchmarks/NOTES.md entry 8: the table's configurations on the e2e
# model's attention shape in three layouts (contiguous; the model's (B, S, H, D) views; views with contiguous
# copies of Q and dO for the backward), then full sweeps of that shape in the model's layout and of head size
# 256 (its spill-free 8-warp dK/dV candidates).
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
timeout ${LAYOUT_TIMEOUT:-120} python3 benchmarks/tune.py --passes table --out "$OUT/r/layouts" \
  --cases d64-gqa-s4096-causal-b2,d64-gqa-s4096-causal-b2-bshd,d64-gqa-s4096-causal-b2-bshdcopy \
  > "$OUT/r/layouts_log.txt" 2>&1
tail -n 5 "$OUT/r/layouts_log.txt"
timeout ${SWEEP_TIMEOUT:-420} python3 benchmarks/tune.py --out "$OUT/r/sweep" \
  --cases ${CASES:-d64-gqa-s4096-causal-b2-bshd,d256-mha-s8192-causal} > "$OUT/r/sweep_log.txt" 2>&1
tail -n 4 "$OUT/r/sweep_log.txt"
(cd "$OUT/r" && tar czf ../results.tgz . ) && rm -rf "$OUT/r"
