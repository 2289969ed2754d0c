"""Where a short triton_attention call spends its time: the host (Python, argument binding) or the GPU.

For a decode step (q_len 1, GQA 32/8, d128, bf16) and a short prefill, compares
  - wall time per call with a synchronize after each (what a generate() loop sees),
  - do_bench's median (back-to-back calls: host-bound calls show their host time here),
  - a CUDA-graph replay of the same call (GPU time only),
and profiles the host side with cProfile. Then the same for a training call (forward + backward, issue 7's
per-GPU attention: batch 4, GQA 8/2, d128, 2k tokens). Writes launch_overhead.json, launch_overhead_profile.txt
and launch_overhead_train_profile.txt.
"""
import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import time
import warnings

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


def calls(q, k, v, is_causal: bool) -> dict:
    """name -> a call of that implementation on q, k, v (ours aligns causal attention to the last key, so one
    query is causal either way)."""
    fns = {"triton_attention": lambda: attention(q, k, v, causal=True)}
    for name, backend in (("sdpa_fa2", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
        def ref(backend=backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True)
        fns[name] = ref
    return fns


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
            fns = calls(q, k, v, is_causal=sq > 1)
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
    train_text = io.StringIO()
    q = torch.randn(4, 8, 2048, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(4, 2, 2048, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    grad = torch.randn_like(q)
    train = calls(q, k, v, is_causal=True)
    for name, forward in train.items():
        def step(forward=forward):
            q.grad = k.grad = v.grad = None
            forward().backward(grad)
        try:
            row = dict(case="train 2k b4", impl=name, wall_us=wall_us(step), host_us=host_us(step),
                       do_bench_us=do_bench(step, warmup=10, rep=50, return_mode="median") * 1e3)
        except RuntimeError as exc:
            row = dict(case="train 2k b4", impl=name, error=str(exc)[:160])
        rows.append(row)
        print(json.dumps(row), flush=True)
        if name == "triton_attention":
            with torch.no_grad():
                forward_only = dict(case="train 2k b4, forward without autograd", impl=name, host_us=host_us(forward))
            rows.append(forward_only)
            with warnings.catch_warnings(record=True) as caught:  # a host-device sync in the step would show here
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                step()
                torch.cuda.set_sync_debug_mode("default")
            rows.append(dict(case="train 2k b4: syncs in one step", impl=name,
                             syncs=[str(w.message)[:200] for w in caught]))
            print(json.dumps(rows[-2:]), flush=True)
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(200):
                step()
            prof.disable()
            torch.cuda.synchronize()
            pstats.Stats(prof, stream=train_text).sort_stats("tottime").print_stats(40)
            pstats.Stats(prof, stream=train_text).sort_stats("cumulative").print_stats(40)
    with open(os.path.join(a.out, "launch_overhead_train_profile.txt"), "w") as f:
        f.write(train_text.getvalue())
    with open(os.path.join(a.out, "launch_overhead.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)
    with open(os.path.join(a.out, "launch_overhead_profile.txt"), "w") as f:
        f.write(profile_text.getvalue())
    print(profile_text.getvalue()[:4000])


if __name__ == "__main__":
    main()
