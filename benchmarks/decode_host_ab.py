"""Host time of an eager decode call (attention() with one query against a cache, as generate() makes it in every
layer) on the CPU with the kernel launch stubbed: its launch planned once per case (ops._DECODE_PLANS, as ops runs
it) against planned at every call (as before), alternating round by round in one process.

    TRITON_INTERPRET=1 python benchmarks/decode_host_ab.py [--rounds 10] [--calls 2000]

Only our Python and torch's allocations run (no GPU, no Triton launcher), so the difference is the planning; the
device's host runs the same Python (benchmarks/NOTES.md entry 21).
"""
import torch

from hf_sdpa.kernels import attention, ops
from host_ab import arguments, interleaved, report, stub_launches


def decode_call(padded: bool, b=8, h=32, hk=8, kv=600, d=64):
    """One decode step's attention of the e2e benchmark's 0.85B Llama (batch 8, GQA 32/8, head size 64), fp16,
    q in the model's (B, S, H, D) layout, with or without a left-padded row."""
    q = torch.randn(b, 1, h, d, dtype=torch.float16).transpose(1, 2)
    k, v = (torch.randn(b, hk, kv, d, dtype=torch.float16) for _ in range(2))
    mask = None
    if padded:
        mask = torch.ones(b, kv, dtype=torch.bool)
        mask[0, :5] = False
    return lambda: attention(q, k, v, causal=True, key_padding_mask=mask)


def main():
    a = arguments(rounds=10, calls=2000)
    stub_launches()
    with torch.no_grad():
        for padded in (False, True):
            call = decode_call(padded)

            def replanned():
                ops._DECODE_PLANS.clear()
                call()
            report("padded, " if padded else "no mask, ",
                   interleaved({"planned every call": replanned, "planned once": call}, a.rounds, a.calls))


if __name__ == "__main__":
    main()
