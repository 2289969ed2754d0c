"""One forward call of a case, for Nsight Compute: the call runs between cudaProfilerStart and cudaProfilerStop, after
warm-up calls (compiling, tuning and the launch plan stay out of the profile).

    ncu --profile-from-start off --set full -o REPORT python benchmarks/ncu_profile.py --case d128-mha-s512-causal \
        --variant gluon

Variants are hopper_ab.py's ('triton': forward.py, 'gluon': the Gluon forward, persistent with drawn tiles, ...,
'sdpa_cudnn', 'sdpa_fa2'); cases are tune.py's names. benchmarks/gpu_ncu.sh profiles a list of them and prints what
the reports say (benchmarks/NOTES.md entry 28 reads them).
"""
import argparse

import torch

from hopper_ab import runs, variant
from tune import case_runs, parse_case


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--case", required=True)
    p.add_argument("--variant", default="gluon")
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args()
    case = parse_case(a.case)
    fwd, fwd_bwd, (q, k, v), dout = case_runs(case)
    call, _ = runs(a.variant, case, fwd, fwd_bwd, q, k, v, dout)
    with variant(a.variant, case["d"]):
        for _ in range(a.warmup):
            call()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        call()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
