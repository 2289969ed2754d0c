#!/usr/bin/env bash
# Issue 7, for a machine with 2 GPUs (nvidia-h200-x2; carry .whl from benchmarks/fetch_wheels.sh): the embedded
# model at about 100M parameters, seq 2048, packed rows, bf16, the same global batch (8) on one GPU, once more on
# one GPU (`again`: the run-to-run spread of bf16 training), on one GPU as 2 micro-batches of 4 (`accum`: DDP's
# split of the batch without a second GPU, the yardstick for DDP's gaps), on two with DDP and on two with FSDP; then the comparison itself on two GPUs. NVLink multicast stays off (KINDS.md), also
# in every launched process. MODEL, SEQ, STEPS, NAMES and CPU=1 (gloo, the CPU configs) allow a dry run here;
# RUNS picks steps (default: one again accum ddp fsdp compare), ONE a committed one-GPU run to scale against.
OUT=${OUT:-benchmarks/results/local}
R="$OUT/r"
source benchmarks/device_setup.sh "$R"
export HF_SDPA_CACHE=/tmp/hf_sdpa_cache NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >> "$R/setup.txt" 2>&1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv 2>&1
  python3 -c "import accelerate, torch; print('accelerate', accelerate.__version__, 'GPUs', torch.cuda.device_count())"
} >> "$R/versions.txt"
if [ "${CPU:-0}" = 1 ]; then DDP=recipes/configs/cpu_ddp.yaml; FSDP=recipes/configs/cpu_ddp.yaml
else DDP=recipes/configs/ddp.yaml; FSDP=recipes/configs/fsdp.yaml; fi
COMMON=(--model "${MODEL:-embedded:100m}" --seq-len "${SEQ:-2048}" --packing --steps "${STEPS:-60}" --lr 6e-4
        --warmup 10 --save-every 1000)
NAMES=${NAMES:-sdpa,sdpa_efficient,sdpa_cudnn,triton_attention}
# Each step packs what exists so far, so a call cut at its limit still brings back the finished steps; the
# comparison gets whatever is left of the call's 10 minutes.
pack() { rm -rf "$R"/*/*/checkpoints "$R"/*/*/model; (cd "$R" && tar czf ../results.tgz .); }
RUNS=" ${RUNS:-one again accum ddp fsdp compare} "
ONE=${ONE:-$R/one}
declare -A SPLIT=([one]="--batch-size 8" [again]="--batch-size 8" [accum]="--batch-size 4 --grad-accum 2")
for run in one again accum; do
  [[ $RUNS == *" $run "* ]] && { timeout ${STEP_TIMEOUT:-140} python3 recipes/finetune.py "${COMMON[@]}" --attn "$NAMES" \
    ${SPLIT[$run]} --output-dir "$R/$run" > "$R/${run}_log.txt" 2>&1; echo "$run (one GPU) rc=$? at ${SECONDS}s"; pack; }
done
[[ $RUNS == *" ddp "* ]] && { timeout ${STEP_TIMEOUT:-140} accelerate launch --config_file "$DDP" --num_processes 2 \
  recipes/finetune.py "${COMMON[@]}" --attn "$NAMES" --batch-size 4 --output-dir "$R/ddp" > "$R/ddp_log.txt" 2>&1
  echo "ddp rc=$? at ${SECONDS}s"; pack; }
[[ $RUNS == *" fsdp "* ]] && { timeout ${STEP_TIMEOUT:-140} accelerate launch --config_file "$FSDP" --num_processes 2 \
  recipes/finetune.py "${COMMON[@]}" --attn "$NAMES" --batch-size 4 --output-dir "$R/fsdp" > "$R/fsdp_log.txt" 2>&1
  echo "fsdp rc=$? at ${SECONDS}s"; }
python3 benchmarks/scaling.py one="$ONE" $(for r in again accum ddp fsdp; do [ -d "$R/$r" ] && echo "$r=$R/$r"; done) --out "$R" \
  > "$R/scaling_log.txt" 2>&1; pack
[[ $RUNS == *" compare "* ]] && { timeout $(( ${CALL_LIMIT:-580} - SECONDS )) accelerate launch --config_file "$DDP" \
  --num_processes 2 recipes/compare.py "${COMMON[@]}" --batch-size 4 --output-dir "$R/compare_2gpu" \
  > "$R/compare_2gpu_log.txt" 2>&1; echo "compare rc=$? at ${SECONDS}s"; pack; }
cat "$R/scaling.md"; rm -rf "$R"
