#!/usr/bin/env bash
# One device call (under 10 minutes) for Hopper's TMA descriptors (benchmarks/NOTES.md, entry 4): the GPU kernel
# tests of the descriptor path in every pass, softcap (hardware tanh) and decode, then tune.py over all three
# passes with and without TMA (max_diff checks each forward variant against the table's output).
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
timeout 200 python3 -m pytest -q -p no:cacheprovider -n 4 tests/test_kernels.py -k "${TEST_K:-tma or softcap or decode or features}" \
  > "$OUT/r/tests_tma_gpu.txt" 2>&1
tail -n 3 "$OUT/r/tests_tma_gpu.txt"
timeout ${TUNE_TIMEOUT:-330} python3 benchmarks/tune.py --out "$OUT/r" --passes ${PASSES:-all} \
  --cases ${CASES:-d128-gqa-s4096-causal,d64-mha-s8192-full,d256-mha-s8192-causal} > "$OUT/r/tune_log.txt" 2>&1
tail -n 6 "$OUT/r/tune_log.txt"
(cd "$OUT/r" && tar czf ../results.tgz . ) && rm -rf "$OUT/r"
