#!/usr/bin/env bash
# Issue 7, for a machine with 2 GPUs (nvidia-h200-x2): the embedded model at about 100M parameters, seq 2048,
# packed rows, bf16, the same global batch (8) on one GPU, on two with DDP and on two with FSDP; then the
# comparison itself on two GPUs. NVLink multicast stays off (KINDS.md), also in every launched process.
set -uo pipefail
OUT=${OUT:-benchmarks/results/local}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_SDPA_CACHE=/tmp/hf_sdpa_cache
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-deps .whl/*.whl > "$OUT/setup.txt" 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . >> "$OUT/setup.txt" 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/versions.txt" 2>&1
python3 -c "import torch, triton, transformers, accelerate; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" >> "$OUT/versions.txt" 2>&1
NAMES=${NAMES:-sdpa,sdpa_efficient,sdpa_cudnn,triton_attention}
COMMON="--model embedded:100m --seq-len 2048 --packing --steps ${STEPS:-60} --lr 6e-4 --warmup 10 --save-every 1000 --attn $NAMES"
timeout 200 python3 recipes/finetune.py $COMMON --batch-size 8 --output-dir "$OUT/one" > "$OUT/one_log.txt" 2>&1
timeout 200 accelerate launch --config_file recipes/configs/ddp.yaml --num_processes 2 recipes/finetune.py $COMMON \
  --batch-size 4 --output-dir "$OUT/ddp" > "$OUT/ddp_log.txt" 2>&1
timeout 200 accelerate launch --config_file recipes/configs/fsdp.yaml --num_processes 2 recipes/finetune.py $COMMON \
  --batch-size 4 --output-dir "$OUT/fsdp" > "$OUT/fsdp_log.txt" 2>&1
python3 benchmarks/scaling.py one="$OUT/one" ddp="$OUT/ddp" fsdp="$OUT/fsdp" --out "$OUT" > /dev/null 2>&1
timeout 300 accelerate launch --config_file recipes/configs/ddp.yaml --num_processes 2 recipes/compare.py \
  --model embedded:100m --seq-len 2048 --packing --batch-size 4 --steps ${STEPS:-60} --lr 6e-4 --save-every 1000 \
  --output-dir "$OUT/compare_2gpu" > "$OUT/compare_2gpu_log.txt" 2>&1
rm -rf "$OUT"/{one,ddp,fsdp,compare_2gpu}/*/checkpoints "$OUT"/{one,ddp,fsdp,compare_2gpu}/*/model
cat "$OUT/scaling.md"
(cd "$OUT" && tar czf ../results.tgz . && rm -rf ./* && mv ../results.tgz .)
