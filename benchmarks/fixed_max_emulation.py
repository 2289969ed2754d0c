"""The softcap forward's fixed maximum emulated in PyTorch on the CPU (benchmarks/NOTES.md entry 42): P in float32
against the row's running maximum or softcap's fixed one, P V taking P rounded to bfloat16, the row sums taking P
as computed (rounded) or truncated to bfloat16 first (what the kernels do); then a float64 backward from that O and
LSE (dS rounded to bfloat16 before dQ's matmul). Prints dQ's worst error over the kernel tests' bound (2x the math
path's error in bfloat16 plus the rounding epsilon; above 1 fails) on the tests' one-key rows (one_key_inputs) and
capped scores (capped_inputs, head size 256).

    python benchmarks/fixed_max_emulation.py > benchmarks/results/cpu/fixed_max_emulation.txt
"""
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import test_kernels  # noqa: E402
from reference import EPS, attention_ref, pattern_mask  # noqa: E402

MODES = ("running", "fixed, P summed as computed", "fixed, P truncated first")


def forward_then_dq(q, k, v, keep, cap, mode, dout):
    """dQ from the emulated forward's O and LSE (log2 units), as the kernels' backward computes it."""
    q, k, v = (t.double() for t in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scale = q.shape[-1] ** -0.5
    t = torch.tanh((q @ k.transpose(-1, -2)) * scale / cap)
    s = (cap / math.log(2) * t).masked_fill(~keep, float("-inf"))
    if mode == MODES[0]:
        m = s.amax(-1, keepdim=True)
    else:
        m = torch.full_like(s[..., :1], max(0.0, cap / math.log(2) - 64))
    p = torch.exp2(s - m).float()
    if mode == MODES[2]:
        p = (p.view(torch.int32) & -65536).view(torch.float32)
    row_sum = p.double().sum(-1, keepdim=True)
    o = ((p.to(torch.bfloat16).double() @ v) / row_sum).to(torch.bfloat16).double()
    p_again = torch.exp2(s - (m + torch.log2(row_sum)))
    delta = (dout.double() * o).sum(-1, keepdim=True)
    ds = p_again * (dout.double() @ v.transpose(-1, -2) - delta) * (1 - t * t)
    return (ds.to(torch.bfloat16).double() @ k) * scale


def ratios(q, k, v, cap):
    """dQ's worst error over the tests' bound per mode, causal."""
    b, _, s, _ = q.shape
    keep = pattern_mask(b, s, s, causal=True)
    exact = attention_ref(q, k, v, keep, softcap=cap)
    low = attention_ref(q, k, v, keep, softcap=cap, dtype=torch.bfloat16)
    dout = torch.randn(exact.shape).to(torch.bfloat16)
    (dq_exact,) = torch.autograd.grad(exact, (q,), dout.double())
    (dq_low,) = torch.autograd.grad(low, (q,), dout)
    base = (dq_low.double() - dq_exact).abs().max().item()
    bound = 2 * base + EPS[torch.bfloat16] * max(1.0, dq_exact.abs().max().item())
    return [(forward_then_dq(q.detach(), k.detach(), v.detach(), keep, cap, mode, dout) - dq_exact).abs().max().item()
            / bound for mode in MODES]


def main():
    test_kernels.DEVICE = "cpu"
    print("inputs | cap | seed | " + " | ".join(MODES))
    for name, make, cap in [("one_key_inputs d128", lambda: test_kernels.one_key_inputs(
                                 2, 4, 2, 600, 128, 50.0, torch.bfloat16), 50.0),
                            ("capped_inputs d256", lambda: test_kernels.capped_inputs(
                                 2, 4, 2, 600, 256, torch.bfloat16), 50.0),
                            ("capped_inputs d256", lambda: test_kernels.capped_inputs(
                                 2, 4, 2, 600, 256, torch.bfloat16), 63.0)]:
        for seed in range(4):
            torch.manual_seed(seed)
            print(f"{name} | {cap:g} | {seed} | " + " | ".join(f"{r:.2f}" for r in ratios(*make(), cap)), flush=True)


if __name__ == "__main__":
    main()
