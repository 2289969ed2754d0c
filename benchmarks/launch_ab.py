"""Triton's binder against the direct relaunch (kernels/launch.py), interleaved in one process.

Three modes: binder (every launch through `kernel[grid](...)`), runner (the direct relaunch through the compiled
kernel's `[grid]` runner, which builds launch metadata for the hooks: a no-op hook is set, as the relaunch ran
before session 37) and direct (the relaunch as it runs with no hook set: `CompiledKernel.run` without metadata).
Host speed drifts by 2x between and within device calls (benchmarks/NOTES.md entry 11), so the modes alternate round
by round on the same inputs, with sdpa_cudnn as a last column on the same host. Per round and mode: host_us, the
host time of a call (20 calls, no waiting), and stream_us, the time per call of 20 calls queued back to back and
waited for (what a training loop sees: the larger of host and GPU time). Writes launch_ab.json and launch_ab.md.
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton import knobs

from hf_sdpa.kernels import attention, ops

LAUNCHERS = [launcher for launcher in (ops.FORWARD, ops.DQ, ops.DKDV, ops.DECODE, ops.DELTA, ops.HOPPER_FWD,
                                       ops.HOPPER_DKDV, ops.HOPPER_DQ) if launcher is not None]
MODES = ("binder", "runner", "direct")
CALLS = 20


def cases():
    """label -> (a call of ours, the same call through sdpa_cudnn)."""
    def make(b, h, hk, sq, skv, train):
        q = torch.randn(b, h, sq, 128, device="cuda", dtype=torch.bfloat16, requires_grad=train)
        k, v = (torch.randn(b, hk, skv, 128, device="cuda", dtype=torch.bfloat16, requires_grad=train)
                for _ in range(2))
        grad = torch.randn_like(q)

        def ours():
            return attention(q, k, v, causal=True)

        def cudnn():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=sq > 1, enable_gqa=True)
        if not train:
            return ours, cudnn

        def step(forward):
            def run():
                q.grad = k.grad = v.grad = None
                forward().backward(grad)
            return run
        return step(ours), step(cudnn)
    yield "decode 4k (b1, GQA 32/8)", make(1, 32, 8, 1, 4096, False)
    yield "prefill 512 (b1, GQA 32/8)", make(1, 32, 8, 512, 512, False)
    yield "forward 512 (b32, GQA 32/8)", make(32, 32, 8, 512, 512, False)
    yield "train 2k (b4, GQA 8/2)", make(4, 8, 2, 2048, 2048, True)
    yield "train 512 (b32, GQA 32/8)", make(32, 32, 8, 512, 512, True)


def _no_hook(metadata):
    pass


def use(mode: str):
    """Every launcher in this mode (see the module's docstring)."""
    for launcher in LAUNCHERS:
        launcher.direct = mode != "binder"
    if mode == "runner":
        knobs.runtime.launch_enter_hook.add(_no_hook)
    else:
        knobs.runtime.launch_enter_hook.remove(_no_hook)


def measure(fn):
    torch.cuda.synchronize()
    host = 0.0
    start = time.perf_counter()
    for _ in range(CALLS):
        t = time.perf_counter()
        fn()
        host += time.perf_counter() - t
    torch.cuda.synchronize()
    return host / CALLS * 1e6, (time.perf_counter() - start) / CALLS * 1e6


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/local")
    p.add_argument("--rounds", type=int, default=25)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for label, (ours, cudnn) in cases():
        grad_mode = torch.no_grad() if label.split()[0] != "train" else torch.enable_grad()
        with grad_mode:
            samples = {mode: [] for mode in MODES + ("sdpa_cudnn",)}
            for mode in MODES:  # compile and warm every path
                use(mode)
                for _ in range(5):
                    ours()
            for _ in range(5):
                cudnn()
            for r in range(a.rounds):
                for mode in (MODES if r % 2 else MODES[::-1]) + ("sdpa_cudnn",):
                    if mode in MODES:
                        use(mode)
                    samples[mode].append(measure(cudnn if mode == "sdpa_cudnn" else ours))
        row = dict(case=label)
        for mode, values in samples.items():
            row[f"{mode}_host_us"] = statistics.median(v[0] for v in values)
            row[f"{mode}_stream_us"] = statistics.median(v[1] for v in values)
        for other in ("binder", "runner"):
            row[f"host_direct_over_{other}"] = statistics.median(d[0] / o[0] for d, o in zip(samples["direct"],
                                                                                         samples[other]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    use("direct")
    with open(os.path.join(a.out, "launch_ab.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), rounds=a.rounds, calls=CALLS, rows=rows), f, indent=1)
    lines = [f"# Triton's binder against the direct relaunch: {torch.cuda.get_device_name()}", "",
             f"Medians of {a.rounds} interleaved rounds of {CALLS} calls; us per call; ratios paired by round.", "",
             "| case | host: binder | host: runner | host: direct | direct / binder | direct / runner "
             "| host: sdpa_cudnn | stream: binder | stream: runner | stream: direct | stream: sdpa_cudnn |",
             "|---" * 11 + "|"]
    for r in rows:
        lines.append(f"| {r['case']} | " + " | ".join(f"{r[f'{m}_host_us']:.0f}" for m in MODES) +
                     f" | {r['host_direct_over_binder']:.2f} | {r['host_direct_over_runner']:.3f} | "
                     f"{r['sdpa_cudnn_host_us']:.0f} | " +
                     " | ".join(f"{r[f'{m}_stream_us']:.0f}" for m in MODES + ("sdpa_cudnn",)) + " |")
    with open(os.path.join(a.out, "launch_ab.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
