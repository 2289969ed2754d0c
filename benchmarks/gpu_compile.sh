#!/usr/bin/env bash
# One device call: the torch.compile tests on the GPU (fullgraph training and inference with triton_attention,
# generate() with a static cache, whose decode step compiles with CUDA graphs on CUDA), then the end-to-end
# decode with a static cache for $NAMES. Files go to the folder given (default benchmarks/results/local).
R=$(realpath -m "${1:-benchmarks/results/local}")
source benchmarks/device_setup.sh "$R"
timeout "${TEST_S:-240}" python3 -m pytest -q -n "${WORKERS:-4}" -p no:cacheprovider -rs tests/test_threads_compile.py \
  tests/test_models.py -k "compile or static" > "$R/tests_compile_gpu.txt" 2>&1
tail -4 "$R/tests_compile_gpu.txt"
cd benchmarks && timeout "${E2E_S:-300}" python3 e2e_bench.py --size 1b --cache static --phases decode \
  --names "${NAMES:-triton_attention,sdpa}" --prompt "${PROMPT:-512}" --out "$R" 2>&1 | grep -v Warning | tail -12
