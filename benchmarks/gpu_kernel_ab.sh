#!/usr/bin/env bash
# One device call: the kernel files in $VARIANT against the committed ones, for a change to the Gluon forward (or
# any kernel hopper_ab.py times). VARIANT is an ignored folder carried to the device, its files named as in kernels/;
# to make one from a patch:
#   git apply benchmarks/results/h100/session23/k0_candidate.patch && mkdir -p .ab/new \
#     && cp kernels/hopper_forward.py kernels/hopper_dq.py .ab/new/ && git checkout kernels/
# and run with carry [".ab"]:
#   VARIANT=.ab/new TESTS="gluon_forward or gluon_dq" CASES=d128-mha-s512-causal,d128-mha-s8192-causal \
#     bash benchmarks/gpu_kernel_ab.sh
# First the GPU tests that TESTS selects (pytest -k), on the variant; after a failure or a hang nothing is timed.
# Then hopper_ab.py (its own checks against math and forward.py, then the timings) ROUNDS_AB times a kernel set,
# variant and committed in turns (the GPU's speed drifts within a call). Files under $OUT/r: tests_gpu.txt, ab.txt
# (every run's tables, marked new/old and the turn) and ab_runs.tgz (each run's JSON and Markdown).
OUT=${OUT:-benchmarks/results/local}
: "${VARIANT:?set VARIANT to the folder of changed kernel files (see above)}"
source benchmarks/device_setup.sh "$OUT/r"
rm -f "$OUT/r/setup.txt"
committed=$(mktemp -d)
for f in "$VARIANT"/*.py; do cp "kernels/$(basename "$f")" "$committed/"; done
use() { cp "$1"/*.py kernels/; }
use "$VARIANT"
timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q -n 4 -p no:cacheprovider -m gpu tests/test_kernels.py \
  -k "${TESTS:-gluon}" > "$OUT/r/tests_gpu.txt" 2>&1
tests=$?
echo "tests: exit $tests"; tail -n 2 "$OUT/r/tests_gpu.txt"
if [ "$tests" = 0 ]; then
  for turn in $(seq "${ROUNDS_AB:-2}"); do
    for v in new old; do
      if [ $v = new ]; then use "$VARIANT"; else use "$committed"; fi
      echo "== $v $turn" >> "$OUT/r/ab.txt"
      timeout ${AB_TIMEOUT:-90} python3 benchmarks/hopper_ab.py --out "$OUT/r/runs/$v$turn" --rounds 3 \
        ${CASES:+--cases $CASES} ${AB_ARGS:-} 2>&1 | grep -v "^- " >> "$OUT/r/ab.txt"
    done
  done
  grep "^| d\|^==" "$OUT/r/ab.txt"
  (cd "$OUT/r" && tar czf ab_runs.tgz runs && rm -rf runs)
fi
use "$committed"
