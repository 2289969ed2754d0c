#!/usr/bin/env bash
# One device call (under 10 minutes) for benchmarks/NOTES.md entry 8: the table's configurations on the e2e
# model's attention shape in three layouts (contiguous; the model's (B, S, H, D) views; views with contiguous
# copies of Q and dO for the backward), a full sweep of that shape in the model's layout (CASES adds others,
# e.g. d256-mha-s8192-causal for the 8-warp dK/dV candidates), then the GPU kernel tests of the forms now on.
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
timeout ${LAYOUT_TIMEOUT:-120} python3 benchmarks/tune.py --passes table --out "$OUT/r/layouts" \
  --cases d64-gqa-s4096-causal-b2,d64-gqa-s4096-causal-b2-bshd,d64-gqa-s4096-causal-b2-bshdcopy \
  > "$OUT/r/layouts_log.txt" 2>&1
tail -n 5 "$OUT/r/layouts_log.txt"
timeout ${SWEEP_TIMEOUT:-180} python3 benchmarks/tune.py --out "$OUT/r/sweep" \
  --cases ${CASES:-d64-gqa-s4096-causal-b2-bshd} > "$OUT/r/sweep_log.txt" 2>&1
tail -n 3 "$OUT/r/sweep_log.txt"
timeout ${TEST_TIMEOUT:-210} python3 -m pytest -q -p no:cacheprovider -n 6 \
  tests/test_kernels.py tests/test_hopper_compile.py -k "${TEST_K:-not random_cases and not gpu_long and not past_2_31}" \
  > "$OUT/r/tests_kernels_gpu.txt" 2>&1
tail -n 3 "$OUT/r/tests_kernels_gpu.txt"
(cd "$OUT/r" && tar czf ../results.tgz . ) && rm -rf "$OUT/r"
