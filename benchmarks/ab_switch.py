"""A/B of a kernel switch in hf_sdpa.kernels.ops (a module constant passed to the kernels), next to sdpa_cudnn.

    python benchmarks/ab_switch.py FOLD_SCALE --out DIR [--cases d128-gqa-s4096-causal,...]

Per case (tune.py's names): the forward alone with the switch on and off, and sdpa_cudnn, medians of
triton.testing.do_bench in one run, and the largest difference between the two outputs. Writes ab_<SWITCH>.json.
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from hf_sdpa.kernels import attention, ops
from tune import make_input, parse_case, time_ms

DEFAULT_CASES = ("d64-mha-s2048-causal,d64-mha-s8192-full,d128-gqa-s4096-causal,d128-mha-s2048-causal,"
                 "d128-mha-s8192-full,d128-gqa-s16384-causal,d128-gqa-s512-causal,d256-mha-s8192-causal")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("switch")
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--out", default="benchmarks/results/local")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for case in map(parse_case, args.cases.split(",")):
        g = torch.Generator(device="cuda").manual_seed(0)
        q = make_input((case["b"], 32, case["s"], case["d"]), case["layout"], g).detach()
        k, v = (make_input((case["b"], case["hk"], case["s"], case["d"]), case["layout"], g).detach()
                for _ in range(2))
        row = dict(case=case["name"])
        outs = {}
        for value in (True, False):
            setattr(ops, args.switch, value)
            outs[value] = attention(q, k, v, causal=case["causal"])
            row[f"{args.switch}={value} ms"] = time_ms(lambda: attention(q, k, v, causal=case["causal"]))
        setattr(ops, args.switch, True)
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            row["sdpa_cudnn ms"] = time_ms(lambda: F.scaled_dot_product_attention(
                q, k, v, is_causal=case["causal"], enable_gqa=case["hk"] != 32))
        row["max_diff"] = (outs[True].float() - outs[False].float()).abs().max().item()
        row["on/off speedup"] = row[f"{args.switch}=False ms"] / row[f"{args.switch}=True ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(os.path.join(args.out, f"ab_{args.switch}.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
