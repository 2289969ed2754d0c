#!/usr/bin/env bash
# One device call (under 10 minutes) for benchmarks/NOTES.md entry 8's follow-up: the d64 GQA shape of the e2e
# model, contiguous and in the model's (B, S, H, D) layout, swept with the dK/dV pass walking the GQA group's
# heads innermost and head by head (with and without TMA among the candidates); then the GPU kernel tests.
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
for form in on off; do
  timeout ${SWEEP_TIMEOUT:-120} python3 benchmarks/tune.py --heads-inner $form --out "$OUT/r/heads_inner_$form" \
    --cases ${CASES:-d64-gqa-s4096-causal-b2,d64-gqa-s4096-causal-b2-bshd} > "$OUT/r/heads_inner_${form}_log.txt" 2>&1
  tail -n 3 "$OUT/r/heads_inner_${form}_log.txt"
done
timeout ${TEST_TIMEOUT:-210} python3 -m pytest -q -p no:cacheprovider -n 6 \
  tests/test_kernels.py tests/test_hopper_compile.py -k "${TEST_K:-not random_cases and not gpu_long and not past_2_31}" \
  > "$OUT/r/tests_kernels_gpu.txt" 2>&1
tail -n 3 "$OUT/r/tests_kernels_gpu.txt"
(cd "$OUT/r" && tar czf ../results.tgz . ) && rm -rf "$OUT/r"
