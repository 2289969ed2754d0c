"""Launch configurations chosen by the loops' reach against ones chosen by the key length, interleaved.

    python benchmarks/reach_ab.py --out DIR [--cases d128-gqa-s4096-causal-b4-w1024,d128-gqa-s8192-causal-b1-doc1024]

kernels/config.py picks small tiles for short key loops (at most SHORT_KV keys). With a sliding window or packed
documents a row sees at most `window` keys (or its document's) and a key at most `window` rows (or its
document's), however long the sequence, so ops asks the table for config.key_reach(...) keys (benchmarks/NOTES.md
entry 12). The 'length' mode asks it for the key length instead, as before that change. The modes alternate round
by round (their order alternating too), since back-to-back timings of one configuration drift by 4-8% within a
sweep. Per case: forward+backward medians, and the median, lowest and highest of the per-round ratios
reach / length. Writes reach_ab.json and reach_ab.md. (Named window_ab.py before packed documents counted.)
"""
import argparse
import json
import os
import statistics

import torch

from hf_sdpa.kernels import ops
from tune import case_runs, parse_case, time_ms

DEFAULT_CASES = ("d128-gqa-s4096-causal-b4-w1024,d256-gqa-s4096-causal-b4-w1024,d128-gqa-s8192-causal-b1-doc1024,"
                 "d256-gqa-s8192-causal-b1-doc1024,d128-gqa-s8192-causal-b1-doc512")


def timed(run, grads, mode):
    """run's median time, the table asked for the key length ('length') or for the loops' reach ('reach')."""
    original = ops.key_reach
    if mode == "length":
        ops.key_reach = lambda kv_len, block_d, *bounds: kv_len
    try:
        return time_ms(run, grads, rep=100)
    finally:
        ops.key_reach = original


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/local")
    p.add_argument("--cases", default=DEFAULT_CASES)
    p.add_argument("--rounds", type=int, default=8)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    results = []
    for name in a.cases.split(","):
        case = parse_case(name)
        _, fwd_bwd, grads, _ = case_runs(case)
        times = {"length": [], "reach": []}
        for r in range(a.rounds):
            for mode in (("length", "reach") if r % 2 == 0 else ("reach", "length")):
                times[mode].append(timed(fwd_bwd, grads, mode))
        ratios = [n / t for n, t in zip(times["reach"], times["length"])]
        results.append(dict(case=name, times_ms=times, length_ms=statistics.median(times["length"]),
                            reach_ms=statistics.median(times["reach"]), ratio=statistics.median(ratios),
                            ratio_low=min(ratios), ratio_high=max(ratios)))
        print(json.dumps(results[-1]), flush=True)
        torch.cuda.empty_cache()
    device = torch.cuda.get_device_name()
    with open(os.path.join(a.out, "reach_ab.json"), "w") as f:
        json.dump(dict(device=device, rounds=a.rounds, results=results), f, indent=1)
    lines = [f"# Configurations by key length or by the loops' reach: {device}", "",
             f"bf16, forward+backward, medians of {a.rounds} interleaved rounds (ms); ratio = reach / length per "
             "round: median (lowest - highest).", "", "| case | length | reach | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['length_ms']:.3f} | {r['reach_ms']:.3f} | {r['ratio']:.3f} "
              f"({r['ratio_low']:.3f} - {r['ratio_high']:.3f}) |" for r in results]
    with open(os.path.join(a.out, "reach_ab.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
