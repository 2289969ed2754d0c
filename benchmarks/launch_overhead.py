"""Where a short triton_attention call spends its time: the host (Python, argument binding) or the GPU.

For a decode step (q_len 1, GQA 32/8, d128, bf16) and a short prefill, compares
  - wall time per call with a synchronize after each (what a generate() loop sees),
  - do_bench's median (back-to-back calls: host-bound calls show their host time here),
  - a CUDA-graph replay of the same call (GPU time only),
and profiles the host side with cProfile. Writes launch_overhead.json and launch_overhead_profile.txt.
"""
import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from hf_sdpa.kernels import attention
from timing import graph_ms


def wall_us(fn, reps=200):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times)


def host_us(fn, reps=200):
    """Host time per call without waiting for the GPU (queue kept short by a sync every 20 calls)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    total = 0.0
    for i in range(reps):
        t = time.perf_counter()
        fn()
        total += time.perf_counter() - t
        if i % 20 == 19:
            torch.cuda.synchronize()
    return total / reps * 1e6


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/local")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rows = []
    profile_text = io.StringIO()
    with torch.no_grad():
        for label, b, sq, skv in (("decode 4k", 1, 1, 4096), ("decode 16k", 1, 1, 16384), ("decode 4k b8", 8, 1, 4096),
                                  ("prefill 512", 1, 512, 512)):
            q = torch.randn(b, 32, sq, 128, device="cuda", dtype=torch.bfloat16)
            k, v = (torch.randn(b, 8, skv, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            fns = {"triton_attention": lambda: attention(q, k, v, causal=True)}
            for name, backend in (("sdpa_fa2", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
                def ref(backend=backend):
                    with sdpa_kernel([backend]):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=sq > 1, enable_gqa=True)
                fns[name] = ref
            for name, fn in fns.items():
                row = dict(case=label, impl=name, wall_us=wall_us(fn), host_us=host_us(fn),
                           do_bench_us=do_bench(fn, warmup=10, rep=50, return_mode="median") * 1e3)
                try:
                    row["graph_us"] = graph_ms(fn) * 1e3
                except Exception as exc:
                    row["graph_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
                rows.append(row)
                print(json.dumps(row), flush=True)
            if label == "decode 4k":
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(500):
                    fns["triton_attention"]()
                prof.disable()
                torch.cuda.synchronize()
                pstats.Stats(prof, stream=profile_text).sort_stats("tottime").print_stats(30)
    with open(os.path.join(a.out, "launch_overhead.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)
    with open(os.path.join(a.out, "launch_overhead_profile.txt"), "w") as f:
        f.write(profile_text.getvalue())
    print(profile_text.getvalue()[:4000])


if __name__ == "__main__":
    main()
