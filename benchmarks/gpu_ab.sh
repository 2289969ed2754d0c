#!/usr/bin/env bash
# One device call (under 10 minutes) for benchmarks/NOTES.md entry 8: the A/B of the forms of the kernels' code
# under test (ab_switch.py; each flipped switch recompiles only the kernels that read it, which is most of this
# call's time). gpu_sweep.sh is the entry's other call, with the GPU kernel tests.
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
timeout ${AB_TIMEOUT:-540} python3 benchmarks/ab_switch.py ${SWITCHES:-FOLD_SCALE,RANGE_MASK,HEADS_INNER} \
  --head-dims ${HEAD_DIMS:-64,128} --out "$OUT/r" > "$OUT/r/ab_log.txt" 2>&1
tail -n 6 "$OUT/r/ab_log.txt"
(cd "$OUT/r" && tar czf ../results.tgz . ) && rm -rf "$OUT/r"
