#!/usr/bin/env bash
# One device call for the recipes and the tracer: `hf-sdpa trace` on a padded batch, the comparison on the
# embedded model scaled to about 100M parameters (seq 2048, bf16, packed rows), then the tracer's, the
# registry's and the model matrix's tests. Wheels the image lacks (datasets) are carried in .whl/.
set -uo pipefail
OUT=${OUT:-benchmarks/results/local}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_SDPA_CACHE=/tmp/hf_sdpa_cache
python3 -m pip install -q --no-deps .whl/*.whl > "$OUT/setup.txt" 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . >> "$OUT/setup.txt" 2>&1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, transformers, accelerate, datasets; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__)"
} > "$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"
timeout 150 hf-sdpa trace --model embedded:100m --batch 4 --seq 2048 --padding 0.6 --new-tokens 4 \
  > "$OUT/trace_gpu.txt" 2>&1; echo "trace rc=$?"
timeout 150 hf-sdpa trace --model embedded:100m --batch 4 --seq 2048 --new-tokens 4 \
  > "$OUT/trace_gpu_unpadded.txt" 2>&1; echo "trace (unpadded) rc=$?"
timeout ${COMPARE_TIMEOUT:-330} python3 recipes/compare.py --model embedded:100m --seq-len 2048 --packing \
  --batch-size 4 --steps ${STEPS:-100} --lr 6e-4 --warmup 10 --save-every 1000 --log-every 25 \
  --eval-batches 4 --output-dir "$OUT/compare" > "$OUT/compare_log.txt" 2>&1; echo "compare rc=$?"
rm -rf "$OUT"/compare/*/checkpoints "$OUT"/compare/*/model
if [ "${TESTS:-1}" = 1 ]; then
  timeout 200 python3 -m pytest -q -n 4 -p no:cacheprovider -rs tests/test_trace.py tests/test_registry.py \
    > "$OUT/tests_trace_registry_gpu.txt" 2>&1; tail -n 2 "$OUT/tests_trace_registry_gpu.txt"
fi
# One archive: the device returns few files per call.
(cd "$OUT" && tar czf ../results.tgz . && rm -rf ./* && mv ../results.tgz .)
