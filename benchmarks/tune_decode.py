"""Sweeps the split-KV decode path's launch configuration: key block, warps, stages, programs per SM and
whether K/V are read through TMA descriptors.

    python benchmarks/tune_decode.py --out DIR [--batches 1,8] [--kv 16384,65536]

GQA 32/8, head size 128, bf16, q_len 1; times each configuration inside a CUDA graph (GPU time only, see
timing.py) and reports KV bytes read per second next to a device-to-device copy. Timing only: a configuration
adopted in kernels/config.py must then pass the GPU test suite. Writes tune_decode.json.
"""
import argparse
import itertools
import json
import os

import torch

from hf_sdpa.kernels import attention, ops
from hf_sdpa.kernels.config import LaunchConfig
from timing import graph_ms

BLOCK_N = (32, 64, 128)
WARPS = (4,)  # 4 warps won at batch 1, kv 64k (session 4); 8 left out to fit one device call
STAGES = (2, 3, 4)
PER_SM = (1, 2, 4)
TMA = (False, True)  # K/V through pointers or TMA descriptors (sm90+)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/local")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--kv", default="16384,65536")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    original_config, original_splits = ops.decode_config, ops.decode_splits
    rows = []
    with torch.no_grad():
        for b, kv in itertools.product(map(int, a.batches.split(",")), map(int, a.kv.split(","))):
            q = torch.randn(b, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
            k, v = (torch.randn(b, 8, kv, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            kv_bytes = 2 * k.numel() * k.element_size()
            src = torch.empty(kv_bytes, dtype=torch.uint8, device="cuda")
            dst = torch.empty_like(src)
            row = dict(batch=b, kv_len=kv, copy_gbs=kv_bytes / graph_ms(lambda: dst.copy_(src)) / 1e6,
                       current_gbs=kv_bytes / graph_ms(lambda: attention(q, k, v, causal=True)) / 1e6, configs=[])
            for block_n, warps, stages, per_sm, desc in itertools.product(BLOCK_N, WARPS, STAGES, PER_SM, TMA):
                ops.decode_config = lambda block_d, fp32, rows, n=block_n, w=warps, s=stages, t=desc: LaunchConfig(
                    max(16, 1 << (rows - 1).bit_length()), n, w, s, tma=t)
                ops.decode_splits = lambda programs, kv_len, bn, sms, f=per_sm: max(
                    1, min(max(1, kv_len // (4 * bn)), -(-f * sms // programs)))
                ops._DECODE_PLANS.clear()  # each candidate planned anew (ops keeps a plan per case)
                try:
                    ms = graph_ms(lambda: attention(q, k, v, causal=True))
                    row["configs"].append(dict(block_n=block_n, warps=warps, stages=stages, per_sm=per_sm,
                                               tma=desc, gbs=kv_bytes / ms / 1e6))
                except Exception as exc:  # out of shared memory: not a candidate
                    row["configs"].append(dict(block_n=block_n, warps=warps, stages=stages, per_sm=per_sm,
                                               tma=desc, error=type(exc).__name__))
                finally:
                    ops.decode_config, ops.decode_splits = original_config, original_splits
                    ops._DECODE_PLANS.clear()
            best = max((c for c in row["configs"] if "gbs" in c), key=lambda c: c["gbs"])
            print(json.dumps(dict(batch=b, kv_len=kv, copy_gbs=row["copy_gbs"], current_gbs=row["current_gbs"],
                                  best=best)), flush=True)
            rows.append(row)
            with open(os.path.join(a.out, "tune_decode.json"), "w") as f:  # after each case: a timeout keeps them
                json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
