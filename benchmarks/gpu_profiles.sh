#!/usr/bin/env bash
# One device call (about 3 minutes) for benchmarks/NOTES.md "Open": where the e2e model's training step still
# loses to cuDNN after entry 9 (GPU kernels per step, 0.85B Llama, batch 2 x 4k), and whether issue 7's
# 100M model at 4 rows per GPU is bound by the host (wall against kernel time, and the host side per op).
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
cd benchmarks
timeout ${E2E_TIMEOUT:-120} python3 training_profile.py --names triton_attention,sdpa_cudnn --out "$OUT/r/e2e" \
  > "$OUT/r/training_profile_e2e_log.txt" 2>&1
grep "^## " "$OUT/r/training_profile_e2e_log.txt"
timeout ${HOST_TIMEOUT:-120} python3 training_profile.py --size 100m --batch 4 --seq 2048 --host \
  --names triton_attention,sdpa --out "$OUT/r/host" > "$OUT/r/training_profile_host_log.txt" 2>&1
grep "^## " "$OUT/r/training_profile_host_log.txt"
cd .. && (cd "$OUT/r" && tar czf ../results.tgz . ) && rm -rf "$OUT/r"
