"""Attention as a plain composition of matmul and softmax, in any precision, for kernel tests."""
import torch


def pattern_mask(b, sq, skv, *, causal=False, padding=None, window=None, doc_start=None, device="cpu"):
    """(B, 1, SQ, SKV) bool: True where row i attends key j (causal aligned bottom right)."""
    rows = torch.arange(sq, device=device)[:, None] + (skv - sq)
    cols = torch.arange(skv, device=device)[None, :]
    keep = torch.ones(b, 1, sq, skv, dtype=torch.bool, device=device)
    if causal:
        keep &= cols <= rows
    if window is not None:
        keep &= cols > rows - window
    if padding is not None:
        keep &= padding.bool()[:, None, None, :]
    if doc_start is not None:
        keep &= cols[None, None] >= doc_start.long()[:, None, :, None]
    return keep


def attention_ref(q, k, v, keep, *, scale=None, softcap=None, dropout_keep=None, dropout_p=0.0, dtype=None):
    """The math composition in `dtype` (default float64). Rows with no key give zeros."""
    dtype = dtype or torch.float64
    q, k, v = (t.to(dtype) for t in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    s = (q @ k.transpose(-1, -2)) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s.float() if dtype != torch.float64 else s, -1).to(dtype)
    p = torch.where(keep.any(-1, keepdim=True), p, 0.0)  # a row with no key: zeros (NaN inputs still propagate)
    if dropout_keep is not None:
        p = p * dropout_keep.to(dtype) / (1 - dropout_p)
    return p @ v


# A rounding epsilon per dtype (relative to the largest exact value), added to the 2x bound below.
EPS = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_within(name, ours, exact, same_precision, dtype):
    """FlashAttention's convention: our error against the float64 result at most 2x the error of the math
    composition in the same precision, plus a rounding epsilon. NaN must appear exactly where it does in exact."""
    assert torch.equal(torch.isnan(ours), torch.isnan(exact)), f"{name}: NaN pattern differs from the reference"
    finite = ~torch.isnan(exact)
    if not finite.any():
        return
    err = (ours.double() - exact)[finite].abs().max().item()
    base = (same_precision.double() - exact)[finite].abs().max().item()
    eps = EPS[dtype] * max(1.0, exact[finite].abs().max().item())
    assert err <= 2 * base + eps, f"{name}: error {err:.3g} > 2 x {base:.3g} (math in {dtype}) + {eps:.2g}"
