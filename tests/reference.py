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
