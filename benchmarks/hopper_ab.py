"""The Gluon forward (kernels/hopper_forward.py) against forward.py and torch's cuDNN and FA2 backends, interleaved.

    python benchmarks/hopper_ab.py --out DIR [--cases d128-mha-s8192-causal,...] [--tiles 128:128x2,128:64x2]
        [--per-tile] [--fixed-turns]

Per case (tune.py's case names; with padding, a window, softcap or documents no torch
backend is timed): first each variant's largest
difference from forward.py's output and, unmasked, from the float32 math result on the case's first batch and
heads (a wrong kernel is reported, not timed), then the forward alone and forward+backward, the variants taking
turns round by round (their order rotating, every other round reversed: the GPU's speed drifts by 4-8% within a
sweep). Variants: 'triton' (forward.py), 'gluon' (ops.HOPPER_FORWARD_TILES, persistent, its tiles drawn) and one
per --tiles entry (head size:key block x ring stages), with --per-tile 'gluon_per_tile' (one program per tile), with
--fixed-turns 'gluon_fixed_turns' (persistent, tile t to program t mod programs), 'sdpa_cudnn', 'sdpa_fa2'; --rounds
0 runs the checks only. Medians in ms, and for unmasked cases TFLOP/s (FlashAttention's count: forward 4*b*h*s*s*d,
halved when causal; backward 2.5x forward).
Writes hopper_ab.json and hopper_ab.md. This decided which head sizes ops.HOPPER_FORWARD_TILES sends to the Gluon
forward (benchmarks/NOTES.md entry 14); a head size left out runs only as a --tiles variant.
"""
import argparse
import contextlib
import json
import os
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from hf_sdpa.kernels import ops
from tune import case_runs, masked, parse_case, time_ms

DEFAULT_CASES = ("d128-mha-s8192-causal,d128-mha-s8192-full,d128-gqa-s16384-causal,d128-gqa-s2048-causal,"
                 "d64-mha-s8192-causal,d64-gqa-s4096-full,d128-gqa-s4096-causal-b2-bshd,d256-gqa-s8192-causal,"
                 "d256-mha-s2048-full,d128-gqa-s4096-causal-b4-pad,d128-gqa-s4096-causal-b4-w1024,"
                 "d128-gqa-s4096-causal-b4-cap50,d128-gqa-s8192-causal-b1-doc1024")
TORCH = {"sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_fa2": SDPBackend.FLASH_ATTENTION}
PER_TILE = "gluon_per_tile"  # the Gluon forward with one program per tile (ops.HOPPER_PERSISTENT off)
FIXED_TURNS = "gluon_fixed_turns"  # persistent, its tiles in fixed turns (ops.HOPPER_DYNAMIC off)


@contextlib.contextmanager
def variant(name, d):
    """ops as the variant runs: the Gluon forward on (at every key length, persistent but for PER_TILE, its tiles
    drawn but for FIXED_TURNS) or off, and its tiles for head size d."""
    saved = (ops.HOPPER_FORWARD, dict(ops.HOPPER_FORWARD_TILES), ops.HOPPER_FORWARD_MIN_KEYS, ops.HOPPER_PERSISTENT,
             ops.HOPPER_DYNAMIC)
    ops.HOPPER_FORWARD = name.startswith("gluon")
    ops.HOPPER_FORWARD_MIN_KEYS = {}
    ops.HOPPER_PERSISTENT = name != PER_TILE
    ops.HOPPER_DYNAMIC = name != FIXED_TURNS
    if name.startswith("gluon_") and name not in (PER_TILE, FIXED_TURNS):
        block_n, stages = map(int, name.removeprefix("gluon_").split("x"))
        ops.HOPPER_FORWARD_TILES[d] = (block_n, stages)
    try:
        yield
    finally:
        (ops.HOPPER_FORWARD, ops.HOPPER_FORWARD_TILES, ops.HOPPER_FORWARD_MIN_KEYS, ops.HOPPER_PERSISTENT,
         ops.HOPPER_DYNAMIC) = saved


def runs(name, case, fwd, fwd_bwd, q, k, v, dout):
    """(forward, forward+backward) of one variant."""
    if name not in TORCH:
        return fwd, fwd_bwd

    def torch_fwd():
        with sdpa_kernel([TORCH[name]]), torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, is_causal=case["causal"], enable_gqa=True)

    def torch_fwd_bwd():
        with sdpa_kernel([TORCH[name]]):
            F.scaled_dot_product_attention(q, k, v, is_causal=case["causal"], enable_gqa=True).backward(dout)
    return torch_fwd, torch_fwd_bwd


def check(case, fwd, q, k, v, names):
    """Each Gluon variant's largest difference from forward.py and, for unmasked cases, from the float32 math
    result (first batch, first two query heads)."""
    with variant("triton", case["d"]):
        ours = fwd()
    exact = None
    if not masked(case):
        kv_heads = 2 if q.shape[1] == k.shape[1] else 1  # query heads 0 and 1 read key/value head 0 under GQA
        with sdpa_kernel([SDPBackend.MATH]), torch.no_grad():
            exact = F.scaled_dot_product_attention(q[:1, :2].float(), k[:1, :kv_heads].float(),
                                                   v[:1, :kv_heads].float(), is_causal=case["causal"],
                                                   enable_gqa=True)
    diffs = {}
    for name in names:
        ran = []
        ops.LAUNCH_HOOKS.append(lambda kernel, info: ran.append(kernel))
        try:
            with variant(name, case["d"]):
                out = fwd()
        finally:
            ops.LAUNCH_HOOKS.pop()
        diffs[name] = dict(kernel=ran[0] if ran else None, vs_triton=(out.float() - ours.float()).abs().max().item())
        if exact is not None:
            diffs[name].update(vs_math=(out[:1, :2].float() - exact).abs().max().item(),
                               triton_vs_math=(ours[:1, :2].float() - exact).abs().max().item())
    return diffs


def correct(c):
    """A variant that ran the Gluon kernel and is as close to float32 math as forward.py is (or, for masked cases,
    as close to forward.py as bf16 rounding allows)."""
    if c["kernel"] != "attention_fwd_hopper_kernel":
        return False
    if "vs_math" in c:
        return c["vs_math"] <= 4 * c["triton_vs_math"] + 1e-2
    return c["vs_triton"] <= 3e-2


def flops(case):
    fwd = 4 * case["b"] * 32 * case["s"] * case["s"] * case["d"] / (2 if case["causal"] else 1)
    return fwd, 3.5 * fwd


def measure(case_name, extra_tiles, rounds, per_tile=False, fixed_turns=False):
    """One case: the checks, then (rounds > 0) the timings of the variants that passed them and torch's."""
    case = parse_case(case_name)
    fwd, fwd_bwd, (q, k, v), dout = case_runs(case)
    gluons = ["gluon"] + [f"gluon_{tiles}" for d, tiles in extra_tiles if int(d) == case["d"]]
    gluons += [PER_TILE] * per_tile + [FIXED_TURNS] * fixed_turns
    result = dict(case=case_name, checks=check(case, fwd, q, k, v, gluons), fwd_ms={}, fwd_bwd_ms={})
    names = ["triton"] + [g for g in gluons if correct(result["checks"][g])]
    names += [] if masked(case) else list(TORCH)  # sdpa_fa2 refuses masks, sdpa_cudnn takes them as a bias
    def timed(name):
        f, fb = runs(name, case, fwd, fwd_bwd, q, k, v, dout)
        with variant(name, case["d"]):
            return time_ms(f, rep=60), time_ms(fb, (q, k, v), rep=60)
    if rounds:
        f_flop, fb_flop = flops(case)
        summarize(result, interleaved(names, rounds, timed), "fwd", f_flop, fb_flop)
    return result


def interleaved(names, rounds, timed):
    """Per name, the two lists of times that timed(name) returns once a round, the names taking turns (the order
    rotated each round and reversed every other one, so that no name always follows the same one)."""
    times = {n: ([], []) for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in (order if r % 2 == 0 else order[::-1]):
            for kept, ms in zip(times[name], timed(name)):
                kept.append(ms)
    return times


def summarize(result, times, first: str, first_flop: float, fb_flop: float):
    """The medians of interleaved()'s times into result (first: "fwd" or "bwd", the pass timed besides
    forward+backward) and their TFLOP/s."""
    for name, (first_ms, fb_ms) in times.items():
        result[f"{first}_ms"][name] = statistics.median(first_ms)
        result["fwd_bwd_ms"][name] = statistics.median(fb_ms)
    result[f"{first}_tflops"] = {n: first_flop / ms / 1e9 for n, ms in result[f"{first}_ms"].items()}
    result["fwd_bwd_tflops"] = {n: fb_flop / ms / 1e9 for n, ms in result["fwd_bwd_ms"].items()}


def cell(result, name, first: str = "fwd"):
    """first / forward+backward: TFLOP/s, or ms for masked cases (their FLOP count is not the dense one)."""
    if name not in result[f"{first}_ms"]:
        return "-"
    if masked(parse_case(result["case"])):
        return f"{result[f'{first}_ms'][name]:.3f} / {result['fwd_bwd_ms'][name]:.3f}"
    return f"{result[f'{first}_tflops'][name]:.0f} / {result['fwd_bwd_tflops'][name]:.0f}"


def timing_table(results, title: str, rounds: int, first: str = "fwd") -> list:
    """A Markdown title and table: one row per timed case, one column per variant any case timed, ours first."""
    timed = [r for r in results if r[f"{first}_ms"]]
    names = []
    for r in timed:
        names += [n for n in r[f"{first}_ms"] if n not in names]
    passes = {"fwd": "forward", "bwd": "backward"}[first]
    lines = [f"# {title}", "", f"bf16, medians of {rounds} interleaved rounds; {passes} / forward+backward in TFLOP/s "
             "(masked cases: ms).", "", "| case | " + " | ".join(names) + " |", "|---" * (1 + len(names)) + "|"]
    return lines + [f"| {r['case']} | " + " | ".join(cell(r, n, first) for n in names) + " |" for r in timed]


def save(out: str, stem: str, results, rounds: int, text: str):
    """stem.json (every number) and stem.md (text) in out, and text printed."""
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), rounds=rounds, results=results), f, indent=1)
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(text)
    print(text)


def markdown(results, device, rounds):
    lines = timing_table(results, f"The Gluon forward against forward.py, cuDNN and FA2: {device}", rounds)
    lines += ["", "Checks (largest absolute difference): each Gluon variant against forward.py, and for unmasked "
              "cases against float32 math next to forward.py's.", ""]
    lines += [f"- {r['case']} {name}: {c['kernel']}, {c['vs_triton']:.2e} vs forward.py"
              + (f", {c['vs_math']:.2e} vs math (forward.py {c['triton_vs_math']:.2e})" if "vs_math" in c else "")
              for r in results for name, c in r["checks"].items()]
    return "\n".join(lines) + "\n"


def ab_arguments(default_cases: str, tile_kind: str) -> argparse.ArgumentParser:
    """The options every A/B of a Gluon kernel takes (tile_kind: what a tile's block counts, as in its help)."""
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/local")
    p.add_argument("--cases", default=default_cases)
    p.add_argument("--tiles", default="", help=f"extra Gluon tiles, head size:{tile_kind} block x stages, "
                   "comma-separated")
    p.add_argument("--rounds", type=int, default=5)
    return p


def run_cases(a, measure_case, stem: str, markdown_of):
    """measure_case(case name, extra tiles) per case of a.cases, each result printed as it comes; then save()."""
    os.makedirs(a.out, exist_ok=True)
    extra = [t.split(":") for t in a.tiles.split(",") if t]
    results = []
    for case_name in a.cases.split(","):
        results.append(measure_case(case_name, extra))
        print(json.dumps(results[-1]), flush=True)
        torch.cuda.empty_cache()
    save(a.out, stem, results, a.rounds, markdown_of(results, torch.cuda.get_device_name(), a.rounds))


def main():
    p = ab_arguments(DEFAULT_CASES, "key")
    p.add_argument("--per-tile", action="store_true", help=f"also {PER_TILE}: one program per tile, not persistent")
    p.add_argument("--fixed-turns", action="store_true",
                   help=f"also {FIXED_TURNS}: persistent, tile t to program t mod programs")
    a = p.parse_args()
    run_cases(a, lambda case_name, extra: measure(case_name, extra, a.rounds, a.per_tile, a.fixed_turns),
              "hopper_ab", markdown)


if __name__ == "__main__":
    main()
