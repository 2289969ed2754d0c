#!/usr/bin/env bash
# One device call (under 10 minutes) for benchmarks/NOTES.md entry 8: the GPU kernel tests of the forms now on
# (fold of the scale, one key range per row), their A/B against the forms they replace, and tune.py on the e2e
# model's attention shape in three layouts (contiguous; the model's (B, S, H, D) views; views with contiguous
# copies of Q and dO for the backward).
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
timeout 200 python3 -m pytest -q -p no:cacheprovider -n 6 tests/test_kernels.py tests/test_hopper_compile.py \
  -k "${TEST_K:-not random_cases and not gpu_long and not past_2_31}" > "$OUT/r/tests_kernels_gpu_ab.txt" 2>&1
tail -n 3 "$OUT/r/tests_kernels_gpu_ab.txt"
timeout ${AB_TIMEOUT:-200} python3 benchmarks/ab_switch.py ${SWITCHES:-FOLD_SCALE,RANGE_MASK} --out "$OUT/r" \
  > "$OUT/r/ab_log.txt" 2>&1
tail -n 4 "$OUT/r/ab_log.txt"
timeout ${TUNE_TIMEOUT:-150} python3 benchmarks/tune.py --out "$OUT/r" \
  --cases ${CASES:-d64-gqa-s4096-causal-b2,d64-gqa-s4096-causal-b2-bshd,d64-gqa-s4096-causal-b2-bshdcopy} \
  > "$OUT/r/tune_log.txt" 2>&1
tail -n 6 "$OUT/r/tune_log.txt"
(cd "$OUT/r" && tar czf ../results.tgz . ) && rm -rf "$OUT/r"
