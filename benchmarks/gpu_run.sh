#!/usr/bin/env bash
# One device call: the doctor and the GPU test suite (kernels, autotuner, model matrix in float32 and bfloat16).
# Everything it prints lands under $OUT (default benchmarks/results/local). The benchmark is gpu_bench.sh.
# At most 4 test workers: more run the float64 references of the 4097-token cases out of GPU memory together.
# It has to fit one device call (10 minutes): in session 11 the model matrix took 230 s run serially and the kernel
# tests did not finish in the 340 s left, test_random_cases alone taking 450 s at 200 examples (an H100, session 5;
# most of it compiling), so the models run on the workers too and the random cases default to 50 examples.
set -uo pipefail
OUT=${OUT:-benchmarks/results/local}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_SDPA_HYPOTHESIS_EXAMPLES=${HF_SDPA_HYPOTHESIS_EXAMPLES:-50}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || pip install -q --no-deps -e .
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -m hf_sdpa doctor --mask padding --heads 32 --kv-heads 8 --q-len 4096 --head-dim 128 --dtype bfloat16 --backward; } 2>&1 | tee "$OUT/doctor_gpu.txt"
if [ "${TESTS:-1}" = 1 ]; then
  for dt in float32 bfloat16; do
    HF_SDPA_TEST_DTYPE=$dt python3 -m pytest -q -n ${WORKERS:-4} -p no:cacheprovider -rs tests/test_models.py > "$OUT/tests_models_gpu_$dt.txt" 2>&1
    tail -5 "$OUT/tests_models_gpu_$dt.txt"
  done
  python3 -m pytest -v -n ${WORKERS:-4} -p no:cacheprovider tests/test_registry.py tests/test_kernels.py tests/test_autotune.py \
    tests/test_launch.py tests/test_threads_compile.py ${KERNEL_TEST_ARGS:-} > "$OUT/tests_kernels_gpu.txt" 2>&1
  tail -5 "$OUT/tests_kernels_gpu.txt"
fi
