#!/usr/bin/env bash
# One device call (under 10 minutes) for benchmarks/NOTES.md entry 8: the GPU kernel tests of the forms now on
# (the scale folded into the exponent, one key range per row) and their A/B against the forms they replace
# (ab_switch.py). gpu_sweep.sh is the entry's other call.
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider -n 6 \
  tests/test_kernels.py tests/test_hopper_compile.py -k "${TEST_K:-not random_cases and not gpu_long and not past_2_31}" > "$OUT/r/tests_kernels_gpu_ab.txt" 2>&1
tail -n 3 "$OUT/r/tests_kernels_gpu_ab.txt"
timeout ${AB_TIMEOUT:-300} python3 benchmarks/ab_switch.py ${SWITCHES:-FOLD_SCALE,RANGE_MASK,HEADS_INNER} --out "$OUT/r" \
  > "$OUT/r/ab_log.txt" 2>&1
tail -n 4 "$OUT/r/ab_log.txt"
(cd "$OUT/r" && tar czf ../results.tgz . ) && rm -rf "$OUT/r"
