#!/usr/bin/env bash
# One device call: the kernel files in each folder of VARIANT against the committed ones, for a change to the Gluon
# forward (or any kernel hopper_ab.py times). VARIANT names one or more ignored folders (space-separated) carried to
# the device, their files named as in kernels/; to make one from a patch:
#   git apply benchmarks/results/h100/session23/k0_candidate.patch && mkdir -p .ab/new \
#     && cp kernels/hopper_forward.py kernels/hopper_dq.py .ab/new/ && git checkout kernels/
# and run with carry [".ab"]:
#   VARIANT=.ab/new TESTS="gluon_forward or gluon_dq" CASES=d128-mha-s512-causal,d128-mha-s8192-causal \
#     bash benchmarks/gpu_kernel_ab.sh
# First the GPU tests that TESTS selects (pytest -k; TEST_MARK="" also takes the unmarked tests, which run on the GPU
# where there is one: the decode tests), on each variant; after a failure or a hang nothing is timed.
# Then hopper_ab.py (its own checks against math and forward.py, then the timings; with AB=decode, decode_bench.py
# and AB_ARGS its options, e.g. "--kv 4096,65536"; with AB=backward, hopper_bwd_ab.py) ROUNDS_AB times a kernel set,
# each variant and the committed one in turns (the GPU's speed drifts within a call). Files under $OUT/r:
# tests_gpu.txt (tests_gpu_<folder>.txt with several variants), ab.txt (every run's tables, marked with the
# variant's folder name, or new/old with one variant, and the turn) and ab_runs.tgz (each run's JSON and Markdown).
OUT=${OUT:-benchmarks/results/local}
: "${VARIANT:?set VARIANT to the folder(s) of changed kernel files (see above)}"
source benchmarks/device_setup.sh "$OUT/r"
rm -f "$OUT/r/setup.txt"
read -r -a variants <<< "$VARIANT"
committed=$(mktemp -d)
for v in "${variants[@]}"; do
  for f in "$v"/*.py; do cp "kernels/$(basename "$f")" "$committed/"; done
done
use() { cp "$committed"/*.py kernels/; [ "$1" = "$committed" ] || cp "$1"/*.py kernels/; }
label() {  # the name a kernel set goes by in ab.txt
  if [ "$1" = "$committed" ]; then echo old; elif [ ${#variants[@]} = 1 ]; then echo new; else basename "$1"; fi
}
tests=0
for v in "${variants[@]}"; do
  log="$OUT/r/tests_gpu.txt"
  [ ${#variants[@]} = 1 ] || log="$OUT/r/tests_gpu_$(basename "$v").txt"
  use "$v"
  timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q -n 4 -p no:cacheprovider -m "${TEST_MARK-gpu}" \
    tests/test_kernels.py -k "${TESTS:-gluon}" > "$log" 2>&1
  status=$?
  echo "tests ($(label "$v")): exit $status"; tail -n 2 "$log"
  [ "$status" = 0 ] || tests=$status
done
if [ "$tests" = 0 ]; then
  for turn in $(seq "${ROUNDS_AB:-2}"); do
    for v in "${variants[@]}" "$committed"; do
      use "$v"
      name=$(label "$v")
      echo "== $name $turn" >> "$OUT/r/ab.txt"
      if [ "${AB:-hopper}" = decode ]; then
        timeout ${AB_TIMEOUT:-90} python3 benchmarks/decode_bench.py --out "$OUT/r/runs/$name$turn" ${AB_ARGS:-} \
          2>&1 | grep "^| [0-9]" >> "$OUT/r/ab.txt"
      elif [ "${AB:-hopper}" = backward ]; then
        timeout ${AB_TIMEOUT:-90} python3 benchmarks/hopper_bwd_ab.py --out "$OUT/r/runs/$name$turn" --rounds 3 \
          --tiles "" ${CASES:+--cases $CASES} ${AB_ARGS:-} 2>&1 | grep -v "^- \|^{" >> "$OUT/r/ab.txt"
      else
        timeout ${AB_TIMEOUT:-90} python3 benchmarks/hopper_ab.py --out "$OUT/r/runs/$name$turn" --rounds 3 \
          ${CASES:+--cases $CASES} ${AB_ARGS:-} 2>&1 | grep -v "^- " >> "$OUT/r/ab.txt"
      fi
    done
  done
  grep "^| [d0-9]\|^==" "$OUT/r/ab.txt"
  (cd "$OUT/r" && tar czf ab_runs.tgz runs && rm -rf runs)
fi
use "$committed"
