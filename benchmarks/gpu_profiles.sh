#!/usr/bin/env bash
# One device call (about 5 minutes) for benchmarks/NOTES.md entry 10: the GPU kernel tests (the backward's
# Delta now comes from the dQ kernel), where a training call's host time goes (launch_overhead.py: forward +
# backward at issue 7's per-GPU shape, with cProfile), the e2e model's training step after plain positions
# stopped counting as packed documents (GPU kernels per step, 0.85B Llama, batch 2 x 4k; e2e_bench's training
# tokens/s), and issue 7's 100M model at 4 rows per GPU (wall against kernel time, host side per op).
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
timeout ${TEST_TIMEOUT:-260} python3 -m pytest -q -p no:cacheprovider -n 6 tests/test_kernels.py \
  tests/test_hopper_compile.py tests/test_registry.py -k "${TEST_K:-not random_cases and not gpu_long and not past_2_31}" \
  > "$OUT/r/tests_kernels_gpu.txt" 2>&1
tail -n 3 "$OUT/r/tests_kernels_gpu.txt"
timeout ${HOST_TIMEOUT:-90} python3 benchmarks/launch_overhead.py --out "$OUT/r" > "$OUT/r/launch_log.txt" 2>&1
grep 'train' "$OUT/r/launch_log.txt"
[ "${PROFILES:-1}" = 1 ] || { (cd "$OUT/r" && tar czf ../results.tgz . ) && rm -rf "$OUT/r"; exit; }
cd benchmarks
timeout ${TRAIN_TIMEOUT:-150} python3 e2e_bench.py --phases train --names sdpa,sdpa_cudnn,triton_attention \
  --out "$OUT/r/e2e_train" > "$OUT/r/e2e_train_log.txt" 2>&1
tail -6 "$OUT/r/e2e_train_log.txt"
timeout ${E2E_TIMEOUT:-100} python3 training_profile.py --names triton_attention,sdpa_cudnn --out "$OUT/r/e2e" \
  > "$OUT/r/training_profile_e2e_log.txt" 2>&1
grep "^## " "$OUT/r/training_profile_e2e_log.txt"
timeout ${HOST_PROFILE_TIMEOUT:-90} python3 training_profile.py --size 100m --batch 4 --seq 2048 --host \
  --names triton_attention,sdpa --out "$OUT/r/host" > "$OUT/r/training_profile_host_log.txt" 2>&1
grep "^## " "$OUT/r/training_profile_host_log.txt"
cd .. && (cd "$OUT/r" && tar czf ../results.tgz . ) && rm -rf "$OUT/r"
