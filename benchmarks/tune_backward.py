"""Sweeps launch configurations of the two backward kernels for one shape; checks each against the math path.

    python benchmarks/tune_backward.py --head-dim 256 --seq 8192 --batch 2 [--causal]

Prints forward+backward milliseconds per (dkdv, dq) configuration; one that does not compile is skipped.
Timing only: a configuration adopted in kernels/config.py must then pass the GPU test suite.
"""
import argparse
import itertools
import json

import torch
from triton.testing import do_bench

from hf_sdpa.kernels import attention, ops
from hf_sdpa.kernels.config import LaunchConfig

DKDV = [LaunchConfig(*c) for c in [(32, 32, 8, 2), (16, 64, 4, 2), (32, 64, 8, 2), (16, 32, 4, 2), (32, 64, 4, 1),
                                   (64, 64, 8, 1), (32, 32, 4, 2), (16, 64, 8, 3)]]
DQ = [LaunchConfig(*c) for c in [(64, 32, 8, 2), (64, 32, 4, 2), (32, 64, 4, 2), (64, 64, 8, 1), (32, 32, 4, 2),
                                 (128, 32, 8, 2)]]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--head-dim", type=int, default=256)
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--causal", action="store_true")
    a = p.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(a.batch, a.heads, a.seq, a.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(a.batch, a.kv_heads, a.seq, a.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    for t in (q, k, v):
        t.requires_grad_()
    dout = torch.randn_like(q)
    results = []
    for dkdv, dq in itertools.product(DKDV, DQ):
        ops.dkdv_config = lambda block_d, fp32, c=dkdv: c
        ops.dq_config = lambda block_d, fp32, c=dq: c
        try:
            def fb():
                attention(q, k, v, causal=a.causal).backward(dout)
            fb()
            torch.cuda.synchronize()
            ms = do_bench(fb, warmup=10, rep=50, grad_to_none=[q, k, v], return_mode="median")
        except Exception as exc:  # out of shared memory or registers: not a candidate
            results.append(dict(dkdv=dkdv.__dict__, dq=dq.__dict__, error=type(exc).__name__))
            continue
        results.append(dict(dkdv=dkdv.__dict__, dq=dq.__dict__, fwd_bwd_ms=ms))
        print(json.dumps(results[-1]), flush=True)
    ok = sorted((r for r in results if "fwd_bwd_ms" in r), key=lambda r: r["fwd_bwd_ms"])
    print("BEST", json.dumps(ok[:3]))


if __name__ == "__main__":
    main()
