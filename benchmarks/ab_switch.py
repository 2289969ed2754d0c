"""A/B of kernel switches (names in hf_sdpa.kernels.ops.AB_SWITCHES: forms of the kernels' code under test) on
attention_bench.py's cases, next to sdpa_cudnn: forward and forward+backward with the switch on and off, taking
turns in one run.

    python benchmarks/ab_switch.py FOLD_SCALE,RANGE_MASK,HEADS_INNER --out DIR [--head-dims 64,128] [--seqs 512]

The cases: dense GQA shapes, the e2e model's attention shape contiguous and in the model's (B, S, H, D) layout,
and attention_bench's masked cases. Per switch, ab_<SWITCH>.json with a row per case: milliseconds on and off
(medians of triton.testing.do_bench), the on/off speed-up, and on/cudnn. Which form stays is decided from it
(benchmarks/NOTES.md); the switch goes.
"""
import argparse
import json
import os

import torch

from attention_bench import TOKENS, case_key, masked_cases, measure
from hf_sdpa.kernels import ops


def cases(head_dims, seqs, masked):
    for d in head_dims:
        for causal in (True, False):
            for s in seqs:
                yield "dense", dict(b=max(1, TOKENS // s), h=32, hk=8, s=s, d=d, causal=causal)
    e2e = dict(b=2, h=32, hk=8, s=4096, d=64, causal=True)  # the e2e model's attention (benchmarks/e2e_bench.py)
    yield "e2e shape", e2e
    yield "e2e shape, model layout", dict(e2e, layout="bshd")
    if masked:
        yield from masked_cases()


def ab_row(switch, label, case):
    times = {}
    default = ops.AB_SWITCHES[switch]
    for value in (True, False, True, False):  # twice each, alternating: the faster run of each counts
        ops.AB_SWITCHES[switch] = value
        r = measure("triton_attention", **case)
        for key in ("fwd_ms", "fwd_bwd_ms"):
            times.setdefault((value, key), []).append(r[key])
    ops.AB_SWITCHES[switch] = default
    cudnn = measure("sdpa_cudnn", **case)
    row = dict(case=case_key(dict(r, label=label)))
    for key in ("fwd_ms", "fwd_bwd_ms"):
        on, off = min(times[(True, key)]), min(times[(False, key)])
        row.update({f"on_{key}": on, f"off_{key}": off, f"on/off_{key}": off / on})
        if key in cudnn:
            row[f"on/cudnn_{key}"] = cudnn[key] / on
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("switches", help=f"comma-separated names of {sorted(ops.AB_SWITCHES)}")
    parser.add_argument("--head-dims", default="64,128,256")
    parser.add_argument("--seqs", default="512,4096")
    parser.add_argument("--no-masked", action="store_true", help="skip the padded, window and softcap cases")
    parser.add_argument("--out", default="benchmarks/results/local")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for switch in args.switches.split(","):
        if switch not in ops.AB_SWITCHES:
            raise SystemExit(f"{switch!r} is not a switch; the switches are {sorted(ops.AB_SWITCHES)}")
        rows = []
        for label, case in cases([int(d) for d in args.head_dims.split(",")],
                                 [int(s) for s in args.seqs.split(",")], not args.no_masked):
            rows.append(ab_row(switch, label, case))
            print(switch, json.dumps(rows[-1]), flush=True)
            with open(os.path.join(args.out, f"ab_{switch}.json"), "w") as f:
                json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, switch=switch,
                               rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
