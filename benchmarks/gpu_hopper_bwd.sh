#!/usr/bin/env bash
# One device call (under 10 minutes) for benchmarks/NOTES.md entry 15, the Gluon dK/dV kernel's first run: its GPU
# tests (a hang is cut short by the timeout: the kernel waits on barriers), then hopper_bwd_ab.py (gradients
# against backward.py's, then the backward alone and forward+backward against backward.py, sdpa_cudnn and sdpa_fa2,
# interleaved), with the tiles in TILES beside the default ones. Files under $OUT/r.
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
timeout ${TEST_TIMEOUT:-240} python3 -m pytest -v -n 4 -p no:cacheprovider tests/test_kernels.py \
  -k "${TESTS:-gluon_backward}" > "$OUT/r/tests_gluon_backward_gpu.txt" 2>&1
tests=$?
echo "tests: exit $tests"; tail -n 4 "$OUT/r/tests_gluon_backward_gpu.txt"
# After a hang nothing more; after a failure only the A/B's checks, whose numbers say what is wrong.
rounds=${ROUNDS:-3}; [ "$tests" = 0 ] || rounds=0
if [ "$tests" != 124 ]; then
  timeout ${AB_TIMEOUT:-330} python3 benchmarks/hopper_bwd_ab.py --out "$OUT/r/hopper_bwd_ab" --rounds $rounds \
    --tiles "${TILES-128:64x3,64:64x3}" ${CASES:+--cases $CASES} ${PROFILE:+--profile} > "$OUT/r/hopper_bwd_ab_log.txt" 2>&1
  echo "ab (rounds $rounds): exit $?"; tail -n 30 "$OUT/r/hopper_bwd_ab_log.txt"
fi
