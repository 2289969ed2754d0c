"""Sweeps the launch configurations of the three passes for given shapes, next to sdpa_fa2 and sdpa_cudnn.

    python benchmarks/tune.py --out DIR [--cases d256-mha-s8192-causal,d64-gqa-s4096-causal-b2-bshd,...]

Per case, the candidates of kernels/config.py (the table's choice first, with and without TMA on Hopper): the forward
configurations timed on the forward alone, then the dK/dV configurations (with the current dQ one) and the dQ
configurations (with the best dK/dV one) timed on forward+backward (--passes forward: the forward only; --passes
table: the table's configurations alone, to compare cases rather than configurations; --configs: these candidates
instead of kernels/config.py's; --heads-inner on/off forces how the dK/dV pass walks a GQA group's heads,
config.dkdv_heads_inner). Medians of triton.testing.do_bench over --rounds rounds, the candidates in another order
each round; a configuration that does not compile or run is recorded with its error; max_diff is each forward
variant's largest difference from the table's output. A case name may add a batch size (b2; else 16k tokens per
batch), a mask (pad: left-padded rows of s, 3/4 s, s/2 and 3/10 s tokens, taking turns; w1024: a sliding window of
1024 keys; cap50: logit softcap 50; doc1024: packed documents of 1024 tokens, the positions restarting every 1024;
masked cases time no torch backend, since sdpa_fa2 refuses them and sdpa_cudnn takes them as a dense bias) and a
layout: bshd hands the kernels (B, H, S, D) views of (B, S, H, D) tensors, as a Transformers model's projections do
(rows H * D apart), and bshdcopy does the same but gives the backward contiguous copies of Q and dO (the copies' time
counted), to tell whether that layout costs the dK/dV pass.
Timing only: a configuration adopted in kernels/config.py must then pass the GPU test suite. Writes tune.json and
tune.md.
"""
import argparse
import contextlib
import json
import os
import statistics
from dataclasses import astuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from attention_bench import make_input
from hf_sdpa.kernels import attention, library, ops
from hf_sdpa.kernels.config import LaunchConfig, candidates, key_reach

DEFAULT_CASES = ("d64-mha-s512-causal,d128-gqa-s1024-causal,d128-gqa-s2048-causal,d64-gqa-s8192-causal,"
                 "d128-mha-s8192-full,d256-mha-s8192-causal,d256-gqa-s8192-full,d256-mha-s2048-full,"
                 "d256-gqa-s512-causal")


LAYOUTS = ("bhsd", "bshd", "bshdcopy")


def parse_case(name):
    d, heads, s, mode, *extra = name.split("-")
    s = int(s[1:])
    case = dict(name=name, d=int(d[1:]), hk=32 if heads == "mha" else 8, s=s, b=max(1, 16384 // s),
                causal=mode == "causal", layout="bhsd", pad=False, window=None, softcap=None, documents=None)
    for part in extra:
        if part in LAYOUTS:
            case["layout"] = part
        elif part.startswith("b") and part[1:].isdigit():
            case["b"] = int(part[1:])
        elif part == "pad":
            case["pad"] = True
        elif part.startswith("w") and part[1:].isdigit():
            case["window"] = int(part[1:])
        elif part.startswith("cap") and part[3:].isdigit():
            case["softcap"] = float(part[3:])
        elif part.startswith("doc") and part[3:].isdigit():
            case["documents"] = int(part[3:])
        else:
            raise SystemExit(f"case {name}: {part!r} is neither a batch size (b2), a mask (pad, w1024, cap50, "
                             f"doc1024) nor a layout {LAYOUTS}")
    return case


def masked(case):
    """Whether the case hides keys or transforms scores (padding, window, softcap, documents)."""
    return bool(case["pad"] or case["window"] or case["softcap"] or case["documents"])


def left_padding(b, s):
    """A key padding mask (True = a real token) whose rows keep s, 3/4 s, s/2 and 3/10 s tokens, taking turns."""
    lengths = [(s, s * 3 // 4, s // 2, s * 3 // 10)[i % 4] for i in range(b)]
    return torch.arange(s, device="cuda")[None, :] >= s - torch.tensor(lengths, device="cuda")[:, None]


@contextlib.contextmanager
def contiguous_backward(enabled):
    """While enabled, the backward launcher gets contiguous copies of Q and dO."""
    original = library.run_backward
    if enabled:
        library.run_backward = lambda q, k, v, out, lse, do, p: original(q.contiguous(), k, v, out, lse,
                                                                         do.contiguous(), p)
    try:
        yield
    finally:
        library.run_backward = original


def time_ms(fn, grads=(), rep=60):
    return do_bench(fn, warmup=10, rep=rep, grad_to_none=list(grads), return_mode="median")


@contextlib.contextmanager
def pinned(pass_name, config):
    """ops asks kernels/config.py's pass_name for this configuration (a tuple) while inside."""
    original = getattr(ops, pass_name)
    setattr(ops, pass_name, lambda *args, cfg=LaunchConfig(*config): cfg)
    try:
        yield
    finally:
        setattr(ops, pass_name, original)


def sweep(pass_name, current, candidates, run, grads, rounds):
    """Runs each candidate once (one that does not compile or run is recorded with its error; where run returns a
    tensor, its largest difference from the first one's), then times those that ran in `rounds` rounds, each
    round starting at another candidate and every other one in reverse order: the GPU's speed drifts by 4-8% over
    a sweep (benchmarks/NOTES.md entry 12), which would otherwise favour whichever ran at the fast end. ms is the
    median of a candidate's rounds."""
    rows, first_out = [], None
    current = astuple(current)
    for c in [current] + [astuple(c) for c in candidates if astuple(c) != current]:
        try:
            with pinned(pass_name, c):
                out = run()
                torch.cuda.synchronize()
        except Exception as exc:  # out of shared memory or registers: not a candidate
            rows.append(dict(config=c, error=f"{type(exc).__name__}: {str(exc)[:120]}"))
            continue
        row = dict(config=c, rounds_ms=[])
        if isinstance(out, torch.Tensor):
            first_out = out if first_out is None else first_out
            row["max_diff"] = (out.float() - first_out.float()).abs().max().item()
        rows.append(row)
    ran = [r for r in rows if "rounds_ms" in r]
    for i in range(rounds if ran else 0):
        order = ran[i % len(ran):] + ran[:i % len(ran)]
        for row in (order if i % 2 == 0 else order[::-1]):
            with pinned(pass_name, row["config"]):
                row["rounds_ms"].append(time_ms(run, grads, rep=max(20, 90 // rounds)))
    for row in ran:
        row["ms"] = statistics.median(row["rounds_ms"])
    return rows


def best(rows):
    ok = [r for r in rows if "ms" in r]
    return min(ok, key=lambda r: r["ms"]) if ok else None


def case_masks(case):
    """attention()'s mask arguments of the case."""
    return dict(key_padding_mask=left_padding(case["b"], case["s"]) if case["pad"] else None,
                window=case["window"], softcap=case["softcap"],
                position_ids=(torch.arange(case["s"], device="cuda") % case["documents"])[None]
                if case["documents"] else None)


def case_runs(case):
    """The case's inputs as two calls, the forward alone and forward+backward, and the leaves with gradients."""
    g = torch.Generator(device="cuda").manual_seed(0)
    shape_q = (case["b"], 32, case["s"], case["d"])
    shape_kv = (case["b"], case["hk"], case["s"], case["d"])
    q, k, v = (make_input(shape, case["layout"], g) for shape in (shape_q, shape_kv, shape_kv))
    dout = make_input(shape_q, case["layout"], g).detach()
    causal = case["causal"]
    masks = case_masks(case)

    def fwd():
        with torch.no_grad():
            return attention(q, k, v, causal=causal, **masks)

    def fwd_bwd():
        attention(q, k, v, causal=causal, **masks).backward(dout)
    return fwd, fwd_bwd, (q, k, v), dout


def loop_keys(case):
    """The key length ops asks the table for in this case (the window or the documents may bound it)."""
    return key_reach(case["s"], case["d"], case["window"], case["documents"])


def parse_configs(text):
    """--configs: comma-separated BMxBNxWARPSxSTAGES, then t for TMA and :R for a cap of R registers per thread
    (64x128x4x2t:168)."""
    configs = []
    for item in text.split(","):
        shape, _, registers = item.partition(":")
        configs.append(LaunchConfig(*map(int, shape.rstrip("t").split("x")), tma=shape.endswith("t"),
                                    max_registers=int(registers) if registers else None))
    return configs


def tune_case(case, passes, rounds, configs=None):
    fwd, fwd_bwd, (q, k, v), dout = case_runs(case)
    causal = case["causal"]
    result = dict(case)
    for name, backend in (() if masked(case) else
                          (("sdpa_fa2", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION))):
        def ref():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        with torch.no_grad():
            result[f"{name}_fwd_ms"] = time_ms(ref)
        result[f"{name}_fwd_bwd_ms"] = time_ms(lambda: ref().backward(dout), (q, k, v))
    d, s, tma = case["d"], loop_keys(case), ops.has_tma(q.device)

    def others(pass_name):
        if passes == "table":
            return []
        return configs or candidates(pass_name, d, False, tma)
    table = ops.forward_config(d, False, s, tma, causal)
    result["forward"] = sweep("forward_config", table, others("forward"), fwd, (), rounds)
    if passes == "forward":
        return result
    grads = (q, k, v)
    gqa = case["hk"] < 32
    with contiguous_backward(case["layout"] == "bshdcopy"):
        backward_sweeps(result, case, fwd_bwd, grads, tma, gqa, others, rounds)
    return result


def backward_sweeps(result, case, fwd_bwd, grads, tma, gqa, others, rounds):
    """The dK/dV configurations with the table's dQ one, then the dQ ones with the best dK/dV one."""
    d, s = case["d"], loop_keys(case)
    result["dkdv"] = sweep("dkdv_config", ops.dkdv_config(d, False, s, tma, gqa), others("dkdv"), fwd_bwd, grads,
                           rounds)
    chosen = best(result["dkdv"])
    with pinned("dkdv_config", chosen["config"]) if chosen else contextlib.nullcontext():
        result["dq"] = sweep("dq_config", ops.dq_config(d, False, s, tma, gqa), others("dq"), fwd_bwd, grads,
                             rounds)


def summary_line(r):
    def ms(key):
        return f"{r[key]:.3f}" if key in r else "-"
    bf, cur_f = best(r["forward"]), r["forward"][0].get("ms")
    if "dkdv" not in r:
        return (f"| {r['name']} | {ms('sdpa_fa2_fwd_ms')} | {ms('sdpa_cudnn_fwd_ms')} | {cur_f:.3f} | "
                f"{bf['ms']:.3f} {tuple(bf['config'])} | | | | |")
    bk, bq = best(r["dkdv"]), best(r["dq"])
    cur_b = r["dkdv"][0].get("ms")
    return (f"| {r['name']} | {ms('sdpa_fa2_fwd_ms')} | {ms('sdpa_cudnn_fwd_ms')} | {cur_f:.3f} | "
            f"{bf['ms']:.3f} {tuple(bf['config'])} | {ms('sdpa_fa2_fwd_bwd_ms')} | {ms('sdpa_cudnn_fwd_bwd_ms')} | "
            f"{cur_b:.3f} | {bq['ms']:.3f} dkdv {tuple(bk['config'])} dq {tuple(bq['config'])} |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/local")
    p.add_argument("--cases", default=DEFAULT_CASES)
    p.add_argument("--passes", choices=("all", "forward", "table"), default="all")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds per candidate, in changing orders")
    p.add_argument("--heads-inner", choices=("table", "on", "off"), default="table",
                   help="how the dK/dV pass walks a GQA group's heads: as config.dkdv_heads_inner says, or forced")
    p.add_argument("--configs", default=None, type=parse_configs,
                   help="the candidates of every pass swept instead of config.CANDIDATES: BMxBNxWARPSxSTAGES[t][:R], "
                        "comma-separated, t for TMA, R a cap on registers (forward only), e.g. "
                        "64x64x4x3t,64x128x4x2t:168")
    a = p.parse_args()
    if a.heads_inner != "table":
        ops.dkdv_heads_inner = lambda block_d, group, on=a.heads_inner == "on": on and group > 1
    os.makedirs(a.out, exist_ok=True)
    results = []
    for name in a.cases.split(","):
        results.append(tune_case(parse_case(name), a.passes, a.rounds, a.configs))
        print(json.dumps(results[-1]), flush=True)
        torch.cuda.empty_cache()
    with open(os.path.join(a.out, "tune.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), heads_inner=a.heads_inner, results=results), f, indent=1)
    lines = [f"# Launch configuration sweep: {torch.cuda.get_device_name()}", "",
             "bf16, 32 query heads, 16k tokens per batch unless the case names a batch (b2), the layout and mask the "
             f"case names (see the docstring); ms medians of {a.rounds} rounds, the candidates in changing orders. "
             "'current' is the first candidate (the table in kernels/config.py at the time of the run); configs are "
             f"(block_m, block_n, warps, stages, TMA, register cap); dK/dV heads inner: {a.heads_inner}.", "",
             "| case | fa2 fwd | cudnn fwd | current fwd | best fwd | fa2 fwd+bwd | cudnn fwd+bwd | current fwd+bwd "
             "| best fwd+bwd |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [summary_line(r) for r in results]
    with open(os.path.join(a.out, "tune.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
