"""triton_attention against torch's backends and compiled flex_attention, in one run on one GPU.

Median times (triton.testing.do_bench) and TFLOP/s with the FlashAttention FLOP count: forward
4*b*h*sq*sk*d (halved when causal), backward 2.5x forward; masked cases count only the valid work.
Writes bench.json, bench.md and bench.png to --out.

    python benchmarks/attention_bench.py --out results/ [--quick]
"""
import argparse
import json
import os

import torch
from triton.testing import do_bench

import hf_sdpa
from hf_sdpa import IMPLEMENTATIONS, AttentionInput, AttentionRefused
from hf_sdpa.kernels import attention

TOKENS = 16384
SDPA = ["sdpa_fa2", "sdpa_cudnn", "sdpa_efficient", "sdpa_math"]


def valid_pairs(lengths, seq, causal, window=None):
    """Attended (query, key) pairs summed over the batch, for left-padded rows of the given lengths."""
    total = 0
    for n in lengths:
        if not causal:
            total += n * n
        elif window is None:
            total += n * (n + 1) // 2
        else:
            w = min(window, n)
            total += w * (w + 1) // 2 + (n - w) * w
    return total


def flex_runner(q, k, v, causal, pad, window, softcap):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    b, h, s, _ = q.shape
    kv_lo = None if pad is None else (~pad).sum(1)

    def mask_mod(bi, hi, qi, ki):
        keep = ki <= qi if causal else ki >= 0
        if window is not None:
            keep = keep & (ki > qi - window)
        if kv_lo is not None:
            keep = keep & (ki >= kv_lo[bi])
        return keep

    def capped(score, bi, hi, qi, ki):
        return softcap * torch.tanh(score / softcap)

    score_mod = capped if softcap is not None else None
    block_mask = create_block_mask(mask_mod, b if pad is not None else None, None, s, s, device=q.device)
    fn = torch.compile(flex_attention)
    return lambda: fn(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=k.shape[1] != q.shape[1])


def runner(name, q, k, v, causal, pad, window, softcap):
    if name == "flex_attention":
        return flex_runner(q, k, v, causal, pad, window, softcap)
    if name == "triton_attention":
        return lambda: attention(q, k, v, causal=causal, key_padding_mask=pad, window=window, softcap=softcap)
    inp = AttentionInput(q, k, v, padding=pad, causal=causal, window=window, softcap=softcap)
    mask, _ = inp.sdpa_form()
    inp = AttentionInput(q, k, v, causal=causal, softcap=softcap, dense_mask=mask) if mask is not None else inp
    IMPLEMENTATIONS[name].run(inp)  # raises AttentionRefused if it cannot
    return lambda: IMPLEMENTATIONS[name].run(inp)


def make_input(shape, layout, gen):
    """A bf16 (B, H, S, D) leaf needing gradients, stored as such (bhsd) or as a view of a (B, S, H, D) tensor
    (bshd and its variants), as a Transformers model's projections hand it over."""
    b, h, s, d = shape
    if layout == "bhsd":
        return torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    t = torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    return t.transpose(1, 2).requires_grad_()


def measure(name, b, h, hk, s, d, causal, pad=None, window=None, softcap=None, lengths=None, layout="bhsd"):
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (make_input((b, heads, s, d), layout, gen) for heads in (h, hk, hk))
    pairs = valid_pairs(lengths or [s] * b, s, causal, window)
    fwd_flop = 4 * h * d * pairs
    row = dict(impl=name, batch=b, heads=h, kv_heads=hk, seq=s, head_dim=d, causal=causal,
               padded=pad is not None, window=window, softcap=softcap)
    try:
        fn = runner(name, q, k, v, causal, pad, window, softcap)
        out = fn()
        dout = torch.randn_like(out)
        fwd_ms = do_bench(fn, warmup=25, rep=100, return_mode="median")

        def fwd_bwd():
            fn().backward(dout)
        fb_ms = do_bench(fwd_bwd, warmup=25, rep=100, grad_to_none=[q, k, v], return_mode="median")
        row.update(fwd_ms=fwd_ms, fwd_bwd_ms=fb_ms, fwd_tflops=fwd_flop / fwd_ms / 1e9,
                   fwd_bwd_tflops=3.5 * fwd_flop / fb_ms / 1e9)
    except AttentionRefused as exc:
        row.update(status="refused", why=str(exc).splitlines()[1:3])
    except Exception as exc:  # out of memory or a backend failing on this shape: report, go on
        row.update(status="failed", why=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    finally:
        del q, k, v
        torch.cuda.empty_cache()
    return row


def standard_cases(quick, dims, seqs=None):
    seqs = seqs or ([512, 2048, 8192] if quick else [512, 2048, 8192, 16384])
    dims = [128] if quick else dims
    for d in dims:
        for causal in (True, False):
            for hk in (32, 8):
                for s in seqs:
                    yield dict(b=max(1, TOKENS // s), h=32, hk=hk, s=s, d=d, causal=causal)


def masked_cases():
    lengths = [4096, 3000, 2048, 1200]
    pad = torch.zeros(4, 4096, dtype=torch.bool, device="cuda")
    for i, n in enumerate(lengths):
        pad[i, 4096 - n:] = True
    base = dict(b=4, h=32, hk=8, s=4096, d=128, causal=True)
    yield "unmasked", base  # our dense speed on the same shape, the masked cases' yardstick
    yield "padded", dict(base, pad=pad, lengths=lengths)
    yield "window 1024", dict(base, window=1024)
    yield "softcap 50", dict(base, softcap=50.0)


def to_markdown(rows, device, versions):
    lines = [f"# Attention benchmark: {device}", "", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
             "", "bf16. TFLOP/s with the FlashAttention FLOP count (masked cases: valid work only); "
             "medians of triton.testing.do_bench.", "",
             "| case | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        case = case_key(r)
        if "fwd_ms" in r:
            lines.append(f"| {case} | {r['impl']} | {r['fwd_ms']:.3f} | {r['fwd_tflops']:.0f} | {r['fwd_bwd_ms']:.3f} "
                         f"| {r['fwd_bwd_tflops']:.0f} |")
        else:
            lines.append(f"| {case} | {r['impl']} | {r['status']} | | | |")
    return "\n".join(lines) + "\n" + ratio_table(rows)


def case_key(r):
    return (f"{r.get('label') or 'dense'} b{r['batch']} h{r['heads']}/{r['kv_heads']} s{r['seq']} d{r['head_dim']}"
            f" {'causal' if r['causal'] else 'full'}")


def ratio_table(rows):
    """triton_attention's speed-up (their time / ours) over each other implementation that ran the case."""
    others = ["sdpa_fa2", "sdpa_cudnn", "sdpa_efficient", "flex_attention"]
    lines = ["", "## triton_attention's speed-up (other's time / ours; > 1 means faster), forward / forward+backward",
             "",
             "| case | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
    by_case = {}
    for r in rows:
        by_case.setdefault(case_key(r), {})[r["impl"]] = r
    for case, impls in by_case.items():
        ours = impls.get("triton_attention")
        if not ours or "fwd_ms" not in ours:
            continue
        cells = []
        for name in others:
            o = impls.get(name)
            if o is None:
                cells.append("")
            elif "fwd_ms" not in o:
                cells.append(o.get("status", ""))
            else:
                cells.append(f"{o['fwd_ms'] / ours['fwd_ms']:.2f} / {o['fwd_bwd_ms'] / ours['fwd_bwd_ms']:.2f}")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + against_unmasked(rows)


def against_unmasked(rows):
    """Each masked case's TFLOP/s on its valid work over triton_attention's unmasked speed on the same shape."""
    ours = [r for r in rows if r["impl"] == "triton_attention" and r.get("label") and "fwd_ms" in r]
    base = next((r for r in ours if r["label"] == "unmasked"), None)
    if base is None:
        return ""
    lines = ["", "## Masked cases against triton_attention's unmasked speed on the same shape (valid work only)", "",
             "| case | forward / forward+backward |", "|---|---|"]
    for r in ours:
        if r is not base:
            lines.append(f"| {case_key(r)} | {r['fwd_tflops'] / base['fwd_tflops']:.2f} / "
                         f"{r['fwd_bwd_tflops'] / base['fwd_bwd_tflops']:.2f} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in zip(axes, ("fwd_tflops", "fwd_bwd_tflops"), ("forward", "forward+backward")):
        for impl in sorted({r["impl"] for r in rows}):
            pts = sorted((r["seq"], r[key]) for r in rows if r["impl"] == impl and key in r and not r.get("label")
                         and r["head_dim"] == 128 and r["causal"] and r["kv_heads"] == 8)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length (16k tokens per batch)")
        ax.set_ylabel("TFLOP/s")
        ax.set_title(f"bf16, d128, causal, GQA 32/8: {title}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--head-dims", default="64,128,256")
    parser.add_argument("--seqs", help="comma-separated sequence lengths instead of the standard ones")
    parser.add_argument("--impls", help="comma-separated implementations instead of all")
    parser.add_argument("--no-masked", action="store_true", help="skip the padded, window and softcap cases")
    parser.add_argument("--render", metavar="BENCH_JSON", help="only rewrite bench.md and bench.png from a bench.json")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        write_reports(saved["rows"], saved["device"], saved["versions"], args.out)
        return
    import transformers
    import triton
    device = torch.cuda.get_device_name()
    versions = dict(torch=torch.__version__, triton=triton.__version__, transformers=transformers.__version__,
                    hf_sdpa=hf_sdpa.__version__, cuda=torch.version.cuda)
    impls = ["triton_attention"] + SDPA + ([] if args.no_flex else ["flex_attention"])
    if args.impls:
        impls = [name for name in impls if name in args.impls.split(",")]
    rows = []

    def record(row):  # bench.json after every row: a call cut short by its time limit keeps what it measured
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(os.path.join(args.out, "bench.json"), "w") as f:
            json.dump(dict(device=device, versions=versions, rows=rows), f, indent=1)
    seqs = [int(s) for s in args.seqs.split(",")] if args.seqs else None
    for case in standard_cases(args.quick, [int(d) for d in args.head_dims.split(",")], seqs):
        for impl in impls:
            # math materialises the scores; flex compiles per shape, so it runs the plotted series only
            flex_series = case["d"] == 128 and case["causal"] and case["hk"] == 8
            if impl == "sdpa_math" and case["s"] > 2048 or impl == "flex_attention" and not flex_series:
                continue
            record(measure(impl, **case))
    for label, case in ([] if args.no_masked else masked_cases()):
        for impl in impls:
            if impl == "sdpa_math":
                continue
            record(dict(measure(impl, **case), label=label))
    write_reports(rows, device, versions, args.out)
    print(to_markdown(rows, device, versions))


def write_reports(rows, device, versions, out):
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(to_markdown(rows, device, versions) + "\n")
    plot(rows, os.path.join(out, "bench.png"))


if __name__ == "__main__":
    main()
