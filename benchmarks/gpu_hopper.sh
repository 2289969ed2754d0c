#!/usr/bin/env bash
# One device call (under 10 minutes) for benchmarks/NOTES.md entry 13, the Gluon forward's first run: its GPU tests
# (a hang is cut short by the timeout: the kernel waits on barriers), then hopper_ab.py (correctness check, then the
# forward and forward+backward against forward.py, sdpa_cudnn and sdpa_fa2, interleaved), with the tiles in TILES
# beside the default ones. Files under $OUT/r. (The model matrix's tiny models have head size 16 and padded
# batches: the Gluon forward never runs there, so it is not part of this call.)
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
timeout ${TEST_TIMEOUT:-240} python3 -m pytest -v -n 4 -p no:cacheprovider tests/test_kernels.py -k gluon \
  > "$OUT/r/tests_gluon_gpu.txt" 2>&1
tests=$?
echo "tests: exit $tests"; tail -n 4 "$OUT/r/tests_gluon_gpu.txt"
# After a hang nothing more; after a failure only the A/B's checks (each case's differences, no timing), whose
# numbers say what is wrong.
rounds=5; [ "$tests" = 0 ] || rounds=0
if [ "$tests" != 124 ]; then
  timeout ${AB_TIMEOUT:-330} python3 benchmarks/hopper_ab.py --out "$OUT/r/hopper_ab" --rounds $rounds \
    --tiles "${TILES:-128:64x2,64:64x3,64:128x2}" ${CASES:+--cases $CASES} > "$OUT/r/hopper_ab_log.txt" 2>&1
  echo "ab (rounds $rounds): exit $?"; tail -n 30 "$OUT/r/hopper_ab_log.txt"
fi
