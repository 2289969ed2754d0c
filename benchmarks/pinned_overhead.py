"""Host time of one call of each pinned name against torch's own scaled_dot_product_attention.

A decode-shaped call (q_len 1, GQA, a short cache) whose kernel time is small, so what is measured is the
Python around it: the lock, torch's backend switches, the question to torch's dispatcher. On the CPU the
pinned names that run there (sdpa_math, sdpa_fa2: torch's CPU flash kernel); on a GPU all four. Medians of
five batches of calls; writes pinned_overhead.json.

    python benchmarks/pinned_overhead.py --out benchmarks/results/cpu
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from hf_sdpa import pinned
from hf_sdpa.implementations import IMPLEMENTATIONS


def per_call_us(fn, calls, device):
    for _ in range(calls // 10):
        fn()
    batches = []
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        batches.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(batches)


def refuse(reasons):
    raise RuntimeError(reasons)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--out", default="benchmarks/results/local")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q = torch.randn(1, 8, 1, 64, device=device, dtype=dtype)
    k, v = (torch.randn(1, 2, 128, 64, device=device, dtype=dtype) for _ in range(2))
    rows = {"sdpa (torch directly)": per_call_us(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                                                 args.calls, device)}
    names = ["sdpa_math", "sdpa_fa2"] + (["sdpa_efficient", "sdpa_cudnn"] if device == "cuda" else [])
    for name in names:
        backend = IMPLEMENTATIONS[name].backend
        rows[name] = per_call_us(lambda: pinned.run(backend, q, k, v, None, 0.0, False, None, refuse), args.calls,
                                 device)
    for name, us in rows.items():
        print(f"{name:24s} {us:7.1f} us per call")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "pinned_overhead.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__,
                       us_per_call=rows), f, indent=1)


if __name__ == "__main__":
    main()
