"""Throwaway (session 15): kernel times of the fused-dQ variants, the reductions on or replaced by a tiny store."""
import os, sys
sys.path.insert(0, "benchmarks")
import torch
from hf_sdpa.kernels import ops
from hopper_bwd_ab import backward_only, kernel_times, variant
from tune import case_masks, case_runs, parse_case
from hf_sdpa.kernels.attention import attention
for name in sys.argv[1].split(","):
    case = parse_case(name)
    fwd, fwd_bwd, (q, k, v), dout = case_runs(case)
    masks = case_masks(case)
    for var in ("gluon", "gluon_dq"):
        with variant(var, case["d"]):
            t = kernel_times(backward_only(lambda: attention(q, k, v, causal=case["causal"], **masks), case, var, q, k, v, dout), calls=10)
        print(name, var, "PROBE_NO_REDUCE=" + os.environ.get("PROBE_NO_REDUCE", "0"), {k[:40]: round(v, 3) for k, v in t.items()}, flush=True)
