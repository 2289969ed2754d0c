"""Host time of a call without gradients (a generate() prefill, evaluation) on the CPU with every kernel launch
stubbed, the Gluon paths forced as on an H100/H200: through the autograd Function (as before entry 49) against the
launcher called directly, alternating round by round in one process.

    TRITON_INTERPRET=1 python benchmarks/no_grad_host_ab.py [--rounds 10] [--calls 2000]

Only our Python and torch's allocations run (no GPU, no Triton launcher), so the difference is the Function's
apply; the device's host runs the same Python (benchmarks/NOTES.md entry 49).
"""
import importlib

import torch

from hf_sdpa.kernels import attention
from hf_sdpa.kernels.library import TritonAttention
from host_ab import arguments, interleaved, report, stub_launches


def prefill(b=8, h=32, hk=8, s=512, d=128):
    """A causal GQA prefill in the model's (B, S, H, D) layout, bf16 (the Gluon forward's route at head size 128)."""
    q = torch.randn(b, s, h, d, dtype=torch.bfloat16).transpose(1, 2)
    k, v = (torch.randn(b, s, hk, d, dtype=torch.bfloat16).transpose(1, 2) for _ in range(2))
    return lambda: attention(q, k, v, causal=True)


def main():
    a = arguments(rounds=10, calls=2000)
    stub_launches()
    attention_module = importlib.import_module("hf_sdpa.kernels.attention")  # the package exports the function
    routes = {"through the Function": lambda q, k, v, pattern: TritonAttention.apply(q, k, v, *pattern),
              "direct": attention_module.forward_only}

    def route(name):
        attention_module.forward_only = routes[name]
    with torch.no_grad():
        for d in (128, 64):
            call = prefill(d=d)
            report(f"prefill d{d}, ", interleaved({name: call for name in routes}, a.rounds, a.calls, route))


if __name__ == "__main__":
    main()
