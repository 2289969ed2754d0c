"""Decode speed: one generate() step (q_len 1 by default) against a long KV cache, GQA 32/8, head size 128, bf16.

Reports the KV bytes each implementation reads per second next to a device-to-device copy of the same bytes
measured in the same run (its read rate, bytes / time, and its total traffic, 2 x bytes / time), both per call
and inside a CUDA graph (benchmarks/timing.py). Writes decode.json and decode.md under --out.
"""
import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from hf_sdpa.kernels import attention
from timing import graph_ms, per_call_ms


def torch_backend(backend):
    def run(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/local")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--kv", default="4096,16384,65536")
    parser.add_argument("--q-len", type=int, default=1)
    parser.add_argument("--only", default=None,
                        help="comma-separated parts of the names to time (e.g. split-KV,sdpa_cudnn for an A/B)")
    args = parser.parse_args()
    h, hk, d, dtype = 32, 8, 128, torch.bfloat16
    contenders = {
        "triton_attention (split-KV)": lambda q, k, v: attention(q, k, v, causal=True, split_kv=True),
        "triton_attention (one block per head)": lambda q, k, v: attention(q, k, v, causal=True, split_kv=False),
        "sdpa_fa2": torch_backend(SDPBackend.FLASH_ATTENTION),
        "sdpa_cudnn": torch_backend(SDPBackend.CUDNN_ATTENTION),
        "sdpa_efficient": torch_backend(SDPBackend.EFFICIENT_ATTENTION),
    }
    if args.only:
        parts = args.only.split(",")
        contenders = {name: fn for name, fn in contenders.items() if any(part in name for part in parts)}
    rows = []
    with torch.no_grad():
        for b in map(int, args.batches.split(",")):
            for kv in map(int, args.kv.split(",")):
                q = torch.randn(b, h, args.q_len, d, device="cuda", dtype=dtype)
                k, v = (torch.randn(b, hk, kv, d, device="cuda", dtype=dtype) for _ in range(2))
                kv_bytes = 2 * k.numel() * k.element_size()
                src = torch.empty(kv_bytes, dtype=torch.uint8, device="cuda")
                dst = torch.empty_like(src)
                copy_ms = per_call_ms(lambda: dst.copy_(src))
                copy_graph_ms = graph_ms(lambda: dst.copy_(src))
                row = {"batch": b, "kv_len": kv, "q_len": args.q_len, "kv_bytes": kv_bytes,
                       "copy read GB/s": kv_bytes / copy_ms / 1e6, "copy total GB/s": 2 * kv_bytes / copy_ms / 1e6,
                       "copy read GB/s (graph)": kv_bytes / copy_graph_ms / 1e6}
                for name, fn in contenders.items():
                    try:
                        ms = per_call_ms(lambda: fn(q, k, v))
                        in_graph = graph_ms(lambda: fn(q, k, v))
                        row[name] = {"ms": ms, "GB/s": kv_bytes / ms / 1e6, "graph ms": in_graph,
                                     "graph GB/s": kv_bytes / in_graph / 1e6}
                    except RuntimeError as exc:
                        row[name] = {"error": str(exc).splitlines()[0][:120]}
                rows.append(row)
                print(json.dumps(row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name()
    (out / "decode.json").write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=1))
    lines = [f"# Decode: GQA {h}/{hk}, head size {d}, bf16, q_len {args.q_len}, {device}, torch {torch.__version__}",
             "", "KV bytes read per second (GB/s), per call (CUDA events around each call: host gaps included) and in "
             "a CUDA graph of 20 calls (GPU time only); the copy's read rate (total traffic is twice that) for scale.",
             "", "| batch | kv_len | copy read: per call / graph | " + " | ".join(contenders) + " |",
             "|---" * (3 + len(contenders)) + "|"]
    for r in rows:
        cells = [f"{r[n]['GB/s']:.0f} ({r[n]['ms']:.3f} ms) / {r[n]['graph GB/s']:.0f} ({r[n]['graph ms']:.3f} ms)"
                 if "GB/s" in r[n] else "error" for n in contenders]
        copy = f"{r['copy read GB/s']:.0f} / {r['copy read GB/s (graph)']:.0f}"
        lines.append(f"| {r['batch']} | {r['kv_len']} | {copy} | " + " | ".join(cells) + " |")
    (out / "decode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
