"""Host time of a training call (forward and backward) on the CPU with every kernel launch stubbed, the Gluon paths
forced as on an H100/H200, alternating round by round in one process: Gluon descriptors built by their checking
constructor against ops' unchecked ones (benchmarks/NOTES.md entry 19), then built for each kernel against kept from
one kernel to the next (the forward's Q, K and V for the dQ kernel, its Q and dO for the dK/dV kernel: entry 49).

    TRITON_INTERPRET=1 python benchmarks/descriptor_host_ab.py [--rounds 8] [--calls 300]

Only our Python and torch's autograd run (no GPU, no Triton launcher), so the difference is the descriptors'
construction; the device's host runs the same Python.
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
    ops.unchecked_gluon_descriptor = launch.unchecked_gluon_descriptor
    keeping = ops._gluon_descriptors
    built = {"built for each kernel": lambda tensors, rows, columns=None, kept=None: keeping(tensors, rows, columns),
             "kept for the next kernel": keeping}

    def keep(name):
        ops._gluon_descriptors = built[name]
    report("training call, ", interleaved({name: call for name in built}, a.rounds, a.calls, keep))


if __name__ == "__main__":
    main()
