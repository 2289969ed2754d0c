"""The Gluon dK/dV kernel (kernels/hopper_backward.py) against backward.py's and torch's cuDNN and FA2, interleaved.

    python benchmarks/hopper_bwd_ab.py --out DIR [--cases d128-gqa-s4096-causal,...] [--tiles 128:64x3,128:dq128x2]

Per case (tune.py's case names; with padding, a window, softcap or documents no torch backend is timed): first
each Gluon variant's gradients against backward.py's (the largest difference over the largest magnitude, per
gradient; a variant that did not run the Gluon kernel or differs by more than bf16 rounding is not timed), then
the backward alone (one forward kept, its graph retained) and forward+backward, the variants taking turns round by
round as in hopper_ab.py. Every variant runs ops' default forward, so the differences are the dK/dV pass's.
Variants: 'triton' (backward.py), 'gluon' (ops.HOPPER_BACKWARD_TILES, with backward.py's dQ kernel), 'hdq' (the
same with the Gluon dQ kernel, ops.HOPPER_DQ_TILES, where it compiles), 'gluon_dq' (the dK/dV kernel writing dQ
too, ops.HOPPER_FUSED_DQ, where it does), one per --tiles entry (head size:query block x ring stages of the dK/dV
kernel, 'gluon_64x3'; head size:dq key block x ring stages of the Gluon dQ kernel, 'hdq_128x2'), 'sdpa_cudnn',
'sdpa_fa2'. Medians in ms and, for unmasked cases, TFLOP/s (FlashAttention's
count: backward 2.5x the forward's 4*b*h*s*s*d, halved when causal); --profile adds each variant's kernel times
of one backward call, --host each variant's host time of a forward+backward call (issued without waiting for the
GPU). Writes hopper_bwd_ab.json and .md.
"""
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from hf_sdpa.kernels import ops
from hf_sdpa.kernels.attention import attention
from hopper_ab import TORCH, ab_arguments, flops, interleaved, run_cases, runs, summarize, timing_table
from tune import case_masks, case_runs, masked, parse_case, time_ms

DEFAULT_CASES = ("d128-gqa-s4096-causal,d128-mha-s8192-causal,d128-mha-s8192-full,d128-gqa-s16384-causal,"
                 "d128-gqa-s2048-causal,d64-mha-s8192-causal,d64-gqa-s4096-full,d64-gqa-s2048-causal,"
                 "d128-gqa-s4096-causal-b2-bshd,d128-mha-s512-causal-b32,d64-mha-s512-causal-b32,"
                 "d128-gqa-s4096-causal-b4-pad,d128-gqa-s4096-causal-b4-w1024,d128-gqa-s4096-causal-b4-cap50,"
                 "d128-gqa-s8192-causal-b1-doc1024")


@contextlib.contextmanager
def variant(name, d):
    """ops as the variant runs: the Gluon dK/dV kernel on (wherever its scope holds the input) or off, writing dQ
    too (gluon_dq) or not, dQ by the Gluon dQ kernel (hdq) or backward.py's, and the tiles for head size d of the
    dK/dV kernel (gluon_64x3: query block x ring stages) or of the dQ kernel (hdq_128x2: key block x stages)."""
    saved = (ops.HOPPER_BACKWARD, dict(ops.HOPPER_BACKWARD_TILES), ops.hopper_backward_pays, ops.HOPPER_FUSED_DQ,
             ops.hopper_fused_dq_pays, ops.HOPPER_GLUON_DQ, dict(ops.HOPPER_DQ_TILES))
    ops.HOPPER_BACKWARD = name.startswith(("gluon", "hdq"))
    ops.HOPPER_FUSED_DQ = name == "gluon_dq"
    ops.HOPPER_GLUON_DQ = name.startswith("hdq")
    ops.hopper_backward_pays = ops.hopper_fused_dq_pays = lambda *args: True
    kind, _, tiles = name.partition("_")
    if kind in ("gluon", "hdq") and tiles and name != "gluon_dq":
        table = ops.HOPPER_DQ_TILES if name.startswith("hdq") else ops.HOPPER_BACKWARD_TILES
        table[d] = tuple(map(int, tiles.split("x")))
    try:
        yield
    finally:
        (ops.HOPPER_BACKWARD, ops.HOPPER_BACKWARD_TILES, ops.hopper_backward_pays, ops.HOPPER_FUSED_DQ,
         ops.hopper_fused_dq_pays, ops.HOPPER_GLUON_DQ, ops.HOPPER_DQ_TILES) = saved


def variant_kernels(name) -> set:
    """The Gluon kernels that a variant must run to be timed."""
    kernels = {"attention_bwd_dkdv_hopper_kernel"}
    if name.startswith("hdq"):
        kernels.add("attention_bwd_dq_hopper_kernel")
    return kernels


def gradients(fwd_bwd, leaves):
    for t in leaves:
        t.grad = None
    fwd_bwd()
    return [t.grad.float() for t in leaves]


def check(case, fwd_bwd, leaves, names):
    """Each Gluon variant's kernel and, per gradient, its largest difference from backward.py's over the largest
    magnitude."""
    with variant("triton", case["d"]):
        ours = gradients(fwd_bwd, leaves)
    checks = {}
    for name in names:
        ran = []
        ops.LAUNCH_HOOKS.append(lambda kernel, info: ran.append(kernel))
        try:
            with variant(name, case["d"]):
                grads = gradients(fwd_bwd, leaves)
        finally:
            ops.LAUNCH_HOOKS.pop()
        checks[name] = dict(kernel=",".join(sorted(variant_kernels(name))) if variant_kernels(name) <= set(ran)
                            else None,
                            **{g: ((a - b).abs().max() / b.abs().max()).item()
                                          for g, a, b in zip(("dq", "dk", "dv"), grads, ours)})
    return checks


def correct(c):
    return c["kernel"] is not None and max(c["dq"], c["dk"], c["dv"]) <= 2e-2


def backward_only(forward, case, name, q, k, v, dout):
    """The backward alone: one forward whose graph is kept, its gradients taken again at each call."""
    if name in TORCH:
        with sdpa_kernel([TORCH[name]]):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=case["causal"], enable_gqa=True)
    else:
        out = forward()
    return lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)


def kernel_times(fn, calls=5):
    """GPU time per call of each kernel that fn launches (torch.profiler), in ms, the longest first."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    times = {}
    for e in prof.key_averages():
        if e.device_type.name == "CUDA" and e.device_time_total > 0:
            times[e.key[:60]] = e.device_time_total / 1e3 / calls
    return dict(sorted(times.items(), key=lambda kv: -kv[1])[:6])


def host_ms(fn, leaves, calls=20, repeats=5) -> float:
    """The host's time of one call when it need not wait for the GPU (median over repeats): calls issued back to
    back after a synchronisation, the launch queue holding them, timed to the last one's return. Against the
    GPU's time per call it tells which of the two sets a call's pace."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            for t in leaves:
                t.grad = None
            fn()
        times.append((time.perf_counter() - start) / calls * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def measure(case_name, extra_tiles, rounds, profiled, host):
    case = parse_case(case_name)
    fwd, fwd_bwd, (q, k, v), dout = case_runs(case)
    masks = case_masks(case)

    def forward():
        return attention(q, k, v, causal=case["causal"], **masks)
    gluons = ["gluon"] + ["hdq"] * (case["d"] in ops.HOPPER_DQ_TILES)
    gluons += ["gluon_dq"] * (case["d"] in ops.HOPPER_FUSED_DQ_HEAD_SIZES)
    gluons += [f"hdq_{tiles[2:]}" if tiles.startswith("dq") else f"gluon_{tiles}" for d, tiles in extra_tiles
               if int(d) == case["d"]]
    result = dict(case=case_name, checks=check(case, fwd_bwd, (q, k, v), gluons), bwd_ms={}, fwd_bwd_ms={})
    names = ["triton"] + [g for g in gluons if correct(result["checks"][g])]
    names += [] if masked(case) else list(TORCH)
    def timed(name):
        _, fb = runs(name, case, fwd, fwd_bwd, q, k, v, dout)
        with variant(name, case["d"]):
            return (time_ms(backward_only(forward, case, name, q, k, v, dout), (q, k, v), rep=60),
                    time_ms(fb, (q, k, v), rep=60))
    times = interleaved(names, rounds, timed)
    if profiled:  # where the backward's time goes, per variant
        result["kernels_ms"] = {}
        for name in names:
            with variant(name, case["d"]):
                result["kernels_ms"][name] = kernel_times(backward_only(forward, case, name, q, k, v, dout))
    if host:  # what the host takes per forward+backward call, per variant
        result["host_fwd_bwd_ms"] = {}
        for name in names:
            _, fb = runs(name, case, fwd, fwd_bwd, q, k, v, dout)
            with variant(name, case["d"]):
                result["host_fwd_bwd_ms"][name] = host_ms(fb, (q, k, v))
    if rounds:
        f_flop, fb_flop = flops(case)
        summarize(result, times, "bwd", fb_flop - f_flop, fb_flop)
    return result


def markdown(results, device, rounds):
    lines = timing_table(results, f"The Gluon dK/dV kernel against backward.py, cuDNN and FA2: {device}", rounds,
                         "bwd")
    hosted = [r for r in results if r.get("host_fwd_bwd_ms")]
    if hosted:
        lines += ["", "Host time per forward+backward call (ms, 20 calls issued without waiting for the GPU):", ""]
        lines += [f"- {r['case']}: " + ", ".join(f"{n} {ms:.3f}" for n, ms in r["host_fwd_bwd_ms"].items())
                  for r in hosted]
    profiled = [r for r in results if r.get("kernels_ms")]
    if profiled:
        lines += ["", "Kernel time per backward call (ms, torch.profiler):", ""]
        lines += [f"- {r['case']} {name}: " + ", ".join(f"{k} {ms:.3f}" for k, ms in times.items())
                  for r in profiled for name, times in r["kernels_ms"].items()]
    lines += ["", "Checks: each Gluon variant's gradients against backward.py's, the largest difference over the "
              "largest magnitude.", ""]
    lines += [f"- {r['case']} {name}: {c['kernel']}, dq {c['dq']:.1e}, dk {c['dk']:.1e}, dv {c['dv']:.1e}"
              for r in results for name, c in r["checks"].items()]
    return "\n".join(lines) + "\n"


def main():
    p = ab_arguments(DEFAULT_CASES, "query")
    p.add_argument("--profile", action="store_true", help="each variant's kernel times of one backward call")
    p.add_argument("--host", action="store_true", help="each variant's host time of a forward+backward call")
    a = p.parse_args()
    run_cases(a, lambda case_name, extra: measure(case_name, extra, a.rounds, a.profile, a.host), "hopper_bwd_ab",
              markdown)


if __name__ == "__main__":
    main()
