"""Shared memory of every launch configuration the table gives, on GPUs older than the Hopper it was tuned on, and
the configuration the launcher falls back to where it does not fit (kernels/ops.py `_fitting`, config.smaller).

Compiled on a machine without a GPU (Triton ships ptxas) for sm80 (sm86 and sm89 build the same tiles) and sm75.
Limits per thread block: an A100 (sm80) 163 KB, an A10, A40, L4 or consumer GPU (sm86, sm89) 99 KB, a T4 (sm75,
no asynchronous copies, so its pipelines take more) 64 KB; Hopper has 227 KB.

    python benchmarks/shared_memory.py [--json]     # Markdown table, or JSON rows (tests/test_older_gpus.py)
"""
import argparse
import json

from sass_loops import compile_for_gpu

from hf_sdpa.kernels import config

# GPU class -> (the compute capability compiled for, the bytes of shared memory a thread block may use)
LIMITS = {"A100": (80, 166912), "A10/L4": (80, 101376), "T4": (75, 65536)}
HEAD_SIZES = (64, 128, 256)


def table_cases():
    """(kernel, head size, dtype, the table's configuration) for each case the table tells apart, once each."""
    seen = set()
    for dtype in ("bf16", "fp32"):
        fp32 = dtype == "fp32"
        for d in HEAD_SIZES:
            for kv_len in (config.SHORT_KV, 4 * config.SHORT_KV):
                for kernel, choose in (("forward", config.forward_config), ("dkdv", config.dkdv_config),
                                       ("dq", config.dq_config)):
                    seen.add((kernel, d, dtype, choose(d, fp32, kv_len)))
            for rows in (16, config.DECODE_MAX_ROWS):
                seen.add(("decode", d, dtype, config.decode_config(d, fp32, rows)))
    return sorted(seen, key=lambda c: (c[0], c[1], c[2], str(c[3])))


def shared_bytes(kernel: str, d: int, dtype: str, cfg: config.LaunchConfig, capability: int, cache={}) -> int:
    key = (kernel, d, dtype, cfg, capability)
    if key not in cache:
        compiled = compile_for_gpu(kernel, cfg.num_warps, cfg.num_stages, capability=capability, dtype=dtype,
                                   HEAD_DIM=d, BLOCK_D=d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, TMA=False,
                                   DOT_PRECISION="tf32")
        cache[key] = compiled.metadata.shared
    return cache[key]


def fit(kernel: str, d: int, dtype: str, cfg: config.LaunchConfig, capability: int, limit: int):
    """The configuration the launcher ends with under this limit and its shared memory (None: nothing fits)."""
    while cfg is not None:
        used = shared_bytes(kernel, d, dtype, cfg, capability)
        if used <= limit:
            return cfg, used
        cfg = config.smaller(cfg, keep_block_m=kernel == "decode")
    return None, None


def rows():
    out = []
    for kernel, d, dtype, cfg in table_cases():
        row = dict(kernel=kernel, head_size=d, dtype=dtype, table=cfg.__dict__,
                   shared=shared_bytes(kernel, d, dtype, cfg, capability=80))
        for gpu, (capability, limit) in LIMITS.items():
            runs, used = fit(kernel, d, dtype, cfg, capability, limit)
            row[gpu] = None if runs is None else dict(config=runs.__dict__, shared=used, same=runs == cfg)
        out.append(row)
    return out


def markdown(rows_: list) -> str:
    def short(c):
        stages = c["num_stages"]
        return f"{c['block_m']}x{c['block_n']}, {c['num_warps']} warps, {stages} stage{'s' if stages > 1 else ''}"
    lines = ["| kernel | head size | dtype | table's configuration | shared KB (sm80) | "
             + " | ".join(f"{gpu} ({limit // 1024} KB)" for gpu, (_, limit) in LIMITS.items()) + " |",
             "|---" * (5 + len(LIMITS)) + "|"]
    for r in rows_:
        cells = []
        for gpu in LIMITS:
            f = r[gpu]
            cells.append("does not fit" if f is None else "fits" if f["same"] else
                         f"falls back to {short(f['config'])} ({f['shared'] / 1024:.0f} KB)")
        lines.append(f"| {r['kernel']} | {r['head_size']} | {r['dtype']} | {short(r['table'])} | "
                     f"{r['shared'] / 1024:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = rows()
    print(json.dumps(result) if args.json else markdown(result))


if __name__ == "__main__":
    main()
