"""The TMA descriptors' encoding kept between launches (launch.DESCRIPTOR_CACHE) against encoded at every launch, on
the GPU: the host's time per call (calls issued without waiting for the GPU) and do_bench's time per call, the two
modes taking turns round by round.

    python benchmarks/encoding_cache_ab.py --out DIR [--rounds 7]

Calls: forward+backward of a d128 GQA 2k causal row (the Gluon forward, dK/dV and dQ kernels: 13 descriptors), of
d128 MHA 512 full at batch 8 (host-bound), and a decode step (d128 GQA 32/8, 4096 cached keys: 2 descriptors).
"""
import argparse
import json
import os
import statistics

import torch
from triton.backends.nvidia import driver as nvidia

from hf_sdpa.kernels import attention, launch
from hopper_bwd_ab import host_ms
from tune import time_ms


def training_call(b, h, hk, s, causal):
    q, k, v = (torch.randn(b, s, n, 128, dtype=torch.bfloat16, device="cuda").transpose(1, 2).requires_grad_()
               for n in (h, hk, hk))
    grad = torch.randn(b, h, s, 128, dtype=torch.bfloat16, device="cuda")
    return (lambda: attention(q, k, v, causal=causal).backward(grad)), (q, k, v)


def decode_call(b=1, h=32, hk=8, kv=4096):
    q = torch.randn(b, 1, h, 128, dtype=torch.bfloat16, device="cuda").transpose(1, 2)
    k, v = (torch.randn(b, hk, kv, 128, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    return (lambda: attention(q, k, v, causal=True)), ()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/local")
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args()
    calls = {"train d128 gqa 2k causal b1": training_call(1, 32, 8, 2048, True),
             "train d128 mha 512 full b8": training_call(8, 32, 32, 512, False),
             "decode d128 gqa 4k b1": decode_call()}
    results = {}
    for name, (fn, leaves) in calls.items():
        times = {mode: dict(host_us=[], gpu_us=[]) for mode in ("encoded each launch", "kept")}
        for r in range(a.rounds):
            for mode in (list(times) if r % 2 else list(times)[::-1]):
                launch.DESCRIPTOR_CACHE = mode == "kept"
                times[mode]["host_us"].append(host_ms(fn, leaves) * 1e3)
                times[mode]["gpu_us"].append(time_ms(fn, leaves) * 1e3)
        results[name] = {mode: {k: statistics.median(v) for k, v in t.items()} for mode, t in times.items()}
        print(name, json.dumps(results[name]), flush=True)
    kept = len(nvidia.make_tensordesc_arg.cache)
    lines = [f"# TMA descriptors' encoding kept between launches: {torch.cuda.get_device_name()}", "",
             f"Medians of {a.rounds} rounds, the modes taking turns; host: the host's time per call with calls issued "
             "without waiting for the GPU; do_bench: the time per call as the benchmarks measure it. Encodings "
             f"kept at the end: {kept}.", "",
             "| call | host, encoded each launch (us) | host, kept (us) | do_bench, encoded each launch (us) | "
             "do_bench, kept (us) |", "|---|---|---|---|---|"]
    for name, r in results.items():
        e, k = r["encoded each launch"], r["kept"]
        lines.append(f"| {name} | {e['host_us']:.0f} | {k['host_us']:.0f} | {e['gpu_us']:.0f} | {k['gpu_us']:.0f} |")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "encoding_cache_ab.json"), "w") as f:
        json.dump(dict(results=results, kept=kept), f, indent=1)
    with open(os.path.join(a.out, "encoding_cache_ab.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
