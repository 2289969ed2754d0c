#!/usr/bin/env bash
# One device call for issue 6's evidence: the validation spec and a large hypothesis search across every name,
# threads and torch.compile, the tracer and registry tests, and the model matrix in bf16 and fp32.
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT"
cat "$OUT/versions.txt"
HF_SDPA_HYPOTHESIS_EXAMPLES=${EXAMPLES:-300} timeout 280 python3 -m pytest -q -n 8 -p no:cacheprovider -rs \
  --hypothesis-show-statistics tests/test_validation.py > "$OUT/tests_validation_gpu.txt" 2>&1
tail -n 3 "$OUT/tests_validation_gpu.txt"
timeout 150 python3 -m pytest -q -n 6 -p no:cacheprovider -rs tests/test_threads_compile.py tests/test_trace.py \
  tests/test_registry.py > "$OUT/tests_threads_compile_trace_registry_gpu.txt" 2>&1
tail -n 2 "$OUT/tests_threads_compile_trace_registry_gpu.txt"
for dt in bfloat16 float32; do
  HF_SDPA_TEST_DTYPE=$dt timeout 100 python3 -m pytest -q -n 6 -p no:cacheprovider -rs tests/test_models.py \
    > "$OUT/tests_models_gpu_$dt.txt" 2>&1
  tail -n 1 "$OUT/tests_models_gpu_$dt.txt"
done
(cd "$OUT" && tar czf ../results.tgz . && rm -rf ./* && mv ../results.tgz .)
