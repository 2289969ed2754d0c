"""The launchers as torch.library custom ops, and the autograd Function that ties the passes together.

Under torch.compile, Dynamo cannot trace into a Triton launcher that picks its configuration and allocates its
scratch buffers in Python; as custom ops (with fake implementations that give the outputs' shapes and strides)
our kernels stay inside the compiled graph instead of breaking it, and CUDA graphs (mode="reduce-overhead",
generate() with a static cache) capture their launches. Called eagerly, the launchers run directly: a custom
op's dispatch would add host time to every call, and an eager decode step is bound by host time.
"""
import torch
from torch import Tensor

from .ops import Pattern, run_backward, run_decode, run_forward


def _out_like(q: Tensor) -> Tensor:
    """The (B, H, SQ, D) view of a (B, SQ, H, D) buffer that the forward and decode launchers return."""
    B, H, SQ, D = q.shape
    return q.new_empty(B, SQ, H, D).transpose(1, 2)


# The attention pattern (the fields of ops.Pattern), as the ops' schemas spell it.
_PATTERN = ("Tensor? kv_lo, Tensor? kv_hi, Tensor? key_keep, Tensor? holes, Tensor? documents, bool causal, "
            "int? window, float? softcap, float scale, float dropout_p, int seed, int? longest_document")


@torch.library.custom_op("hf_sdpa::attention_forward", mutates_args=(),
                         schema=f"(Tensor q, Tensor k, Tensor v, {_PATTERN}) -> (Tensor, Tensor)")
def _forward_op(q, k, v, *pattern):
    return run_forward(q, k, v, Pattern(*pattern))


@_forward_op.register_fake
def _(q, k, v, *pattern):
    return _out_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("hf_sdpa::attention_backward", mutates_args=(),
                         schema=f"(Tensor do, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, {_PATTERN}) "
                                "-> (Tensor, Tensor, Tensor)")
def _backward_op(do, q, k, v, out, lse, *pattern):
    return run_backward(q, k, v, out, lse, do, Pattern(*pattern))


@_backward_op.register_fake
def _(do, q, k, v, out, lse, *pattern):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@torch.library.custom_op("hf_sdpa::attention_decode", mutates_args=(),
                         schema=f"(Tensor q, Tensor k, Tensor v, {_PATTERN}) -> Tensor")
def _decode_op(q, k, v, *pattern):
    return run_decode(q, k, v, Pattern(*pattern))


@_decode_op.register_fake
def _(q, k, v, *pattern):
    return _out_like(q)


def decode(q: Tensor, k: Tensor, v: Tensor, pattern: Pattern) -> Tensor:
    """The split-KV decode pass (no gradient)."""
    if torch.compiler.is_compiling():
        return _decode_op(q, k, v, *pattern)
    return run_decode(q, k, v, pattern)


def forward_only(q: Tensor, k: Tensor, v: Tensor, pattern: Pattern) -> Tensor:
    """The forward pass where no gradient is wanted (inference, evaluation, a generate() prefill): called eagerly,
    the launcher runs without the autograd Function, whose apply took a quarter to a third of such a call's host
    time (on the CI machine's CPU with the launches stubbed: benchmarks/NOTES.md entry 49)."""
    if torch.compiler.is_compiling():
        return TritonAttention.apply(q, k, v, *pattern)
    return run_forward(q, k, v, pattern)[0]


class TritonAttention(torch.autograd.Function):
    """Forward and backward passes; the pattern comes flat (*Pattern) so that Dynamo can trace the call."""

    @staticmethod
    def forward(ctx, q, k, v, *pattern):
        # the Gluon kernels' descriptors of q, k and v, kept for the backward (ops._gluon_descriptors)
        ctx.kept = None if torch.compiler.is_compiling() else {}
        if ctx.kept is None:
            out, lse = _forward_op(q, k, v, *pattern)
        else:
            out, lse = run_forward(q, k, v, Pattern(*pattern), ctx.kept)
        ctx.save_for_backward(q, k, v, out, lse, *pattern[:5])
        ctx.scalars = pattern[5:]
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, *tensors = ctx.saved_tensors
        pattern = (*tensors, *ctx.scalars)
        if do.stride(-1) != 1:
            do = do.contiguous()
        if torch.compiler.is_compiling():
            dq, dk, dv = _backward_op(do, q, k, v, out, lse, *pattern)
        else:
            kept, ctx.kept = ctx.kept, None  # released with the saved tensors (a second backward builds its own)
            dq, dk, dv = run_backward(q, k, v, out, lse, do, Pattern(*pattern), kept)
        return (dq, dk, dv) + (None,) * len(pattern)
