"""Host time of a training call (forward and backward) on the CPU with every kernel launch stubbed, the Gluon paths
forced as on an H100/H200: Gluon descriptors built by their checking constructor against ops' unchecked ones,
alternating round by round in one process.

    TRITON_INTERPRET=1 python benchmarks/descriptor_host_ab.py [--rounds 8] [--calls 300]

Only our Python and torch's autograd run (no GPU, no Triton launcher), so the difference is the descriptors'
construction; the device's host runs the same Python (benchmarks/NOTES.md entry 19).
"""
import torch

from hf_sdpa.kernels import attention, launch, ops
from host_ab import arguments, interleaved, report, stub_launches


def training_call(b=1, h=32, hk=8, s=2048, d=128):
    """forward + backward of a causal GQA call in the model's (B, S, H, D) layout, fp16."""
    q, k, v = (torch.randn(b, s, n, d, dtype=torch.float16).transpose(1, 2).requires_grad_() for n in (h, hk, hk))
    grad = torch.randn(b, h, s, d, dtype=torch.float16)
    return lambda: torch.autograd.grad(attention(q, k, v, causal=True), (q, k, v), grad)


def main():
    a = arguments(rounds=8, calls=300)
    stub_launches()
    call = training_call()
    builds = {"checked": launch.GluonDescriptor, "unchecked": launch.unchecked_gluon_descriptor}

    def before(name):
        ops.unchecked_gluon_descriptor = builds[name]
    report("training call, ", interleaved({name: call for name in builds}, a.rounds, a.calls, before))


if __name__ == "__main__":
    main()
