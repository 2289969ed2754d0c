"""Host time of a training call (forward and backward) on the CPU with every kernel launch stubbed, the Gluon paths
forced as on an H100/H200: Gluon descriptors built by their checking constructor against ops' unchecked ones,
alternating round by round in one process.

    TRITON_INTERPRET=1 python benchmarks/descriptor_host_ab.py [--rounds 8] [--calls 300]

Only our Python and torch's autograd run (no GPU, no Triton launcher), so the difference is the descriptors'
construction; the device's host runs the same Python (benchmarks/NOTES.md entry 19).
"""
import argparse
import statistics
import time

import torch

from hf_sdpa.kernels import attention, launch, ops


def stub_launches():
    """Every launcher a no-op, and the GPU checks answering as on Hopper, so ops takes its Gluon paths."""
    for name in ("FORWARD", "DQ", "DKDV", "DELTA", "HOPPER_FWD", "HOPPER_DKDV", "HOPPER_DQ"):
        setattr(ops, name, lambda grid, *args, **kwargs: None)
    ops._is_hopper = ops.has_tma = lambda device: True


def training_call(b=1, h=32, hk=8, s=2048, d=128):
    """forward + backward of a causal GQA call in the model's (B, S, H, D) layout, fp16."""
    q, k, v = (torch.randn(b, s, n, d, dtype=torch.float16).transpose(1, 2).requires_grad_() for n in (h, hk, hk))
    grad = torch.randn(b, h, s, d, dtype=torch.float16)
    return lambda: torch.autograd.grad(attention(q, k, v, causal=True), (q, k, v), grad)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--calls", type=int, default=300)
    a = p.parse_args()
    stub_launches()
    call = training_call()
    variants = {"checked": launch.GluonDescriptor, "unchecked": launch.unchecked_gluon_descriptor}
    times = {name: [] for name in variants}
    for _ in range(a.rounds):
        for name, build in variants.items():
            ops.unchecked_gluon_descriptor = build
            for _ in range(30):
                call()
            start = time.perf_counter()
            for _ in range(a.calls):
                call()
            times[name].append((time.perf_counter() - start) / a.calls * 1e6)
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.1f} us per training call, rounds "
              + " ".join(f"{v:.0f}" for v in values))


if __name__ == "__main__":
    main()
