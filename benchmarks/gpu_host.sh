#!/usr/bin/env bash
# One device call for benchmarks/NOTES.md entry 11, the host time of a call: the GPU tests (the direct relaunch of
# kernels/launch.py runs every repeated shape), launch_overhead.py and the 512-token benchmark cases, each with
# Triton's binder (HF_SDPA_TRITON_LAUNCH=1) and with the direct relaunch, alternating, in one run.
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider -n 6 tests/test_launch.py tests/test_kernels.py \
  tests/test_hopper_compile.py tests/test_registry.py -k "${TEST_K:-not random_cases and not gpu_long and not past_2_31}" \
  > "$OUT/r/tests_kernels_gpu.txt" 2>&1
tail -n 3 "$OUT/r/tests_kernels_gpu.txt"
for launch in ${LAUNCHES:-binder direct}; do
  [ "$launch" = binder ] && export HF_SDPA_TRITON_LAUNCH=1 || export HF_SDPA_TRITON_LAUNCH=0
  mkdir -p "$OUT/r/overhead_$launch"
  timeout ${HOST_TIMEOUT:-80} python3 benchmarks/launch_overhead.py --out "$OUT/r/overhead_$launch" \
    > "$OUT/r/overhead_$launch/log.txt" 2>&1
  grep -h '"train\|prefill' "$OUT/r/overhead_$launch/log.txt" | cut -c1-150
  timeout ${BENCH_TIMEOUT:-120} python3 benchmarks/attention_bench.py --seqs ${SEQS:-512} --no-masked --no-flex \
    --impls triton_attention,sdpa_cudnn,sdpa_fa2 --out "$OUT/r/bench512_$launch" > "$OUT/r/bench512_$launch.txt" 2>&1
  tail -n 14 "$OUT/r/bench512_$launch.txt" | head -n 12
done
(cd "$OUT/r" && tar czf ../results.tgz . ) && rm -rf "$OUT/r"
