"""Torch's SDPA backends, each pinned: run exactly one backend or refuse with torch's own reasons.

torch.nn.attention.sdpa_kernel flips process-global switches, so every pinned call holds one lock
while it sets the switches, asks torch's dispatcher which backend it would take
(torch._fused_sdp_choice, the function scaled_dot_product_attention itself consults), and launches.
The backward pass needs no lock: autograd replays the backward op of the backend the forward ran.
"""
import contextlib
import threading
import warnings
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .kernels.autocast import autocast_inputs

_LOCK = threading.RLock()

CUDA_ONLY = {SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION}


@dataclass
class Dispatch:
    """Whether a backend takes an input, how (GQA in place, or with the repeated K/V given here), and torch's
    reasons if not."""
    ok: bool
    enable_gqa: bool = False
    repeated_kv: Optional[tuple] = None
    reasons: List[str] = field(default_factory=list)


@contextlib.contextmanager
def _only(backend):
    """The lock, with torch's switches allowing only `backend`: one context for the question and the call."""
    with _LOCK, sdpa_kernel([backend]):
        yield


def _ask_torch(backend, q, k, v, mask, dropout, is_causal, scale, enable_gqa):
    """(taken, reasons) from torch's dispatcher. Call inside _only(backend)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        error = None
        try:
            taken = torch._fused_sdp_choice(q, k, v, mask, dropout, is_causal, scale=scale,
                                            enable_gqa=enable_gqa) == backend.value
        except RuntimeError as exc:
            taken, error = False, str(exc).split("\n")[0]
    reasons = ["torch: " + str(w.message).split(" (Triggered internally")[0].strip() for w in caught]
    # "X has been runtime disabled" concerns the backends our single-backend context switched off
    reasons = [r for r in reasons if r != "torch: " and not r.endswith("not used because:")
               and "runtime disabled" not in r]
    if not taken and not reasons and error:
        reasons = ["torch: " + error]
    return taken, reasons


def repeat_heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n, s, d).reshape(b, h * n, s, d)


def input_problems(q, k, v, mask, dropout) -> List[str]:
    """What makes an input invalid for every torch backend, each with what to do. Checked before torch is
    asked, so that a bad input gets the package's error, not a RuntimeError from deep inside a kernel."""
    if not all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (q, k, v)):
        return ["query, key and value must be 4-D tensors (batch, heads, seq, head_dim)."]
    problems = []
    if not q.device == k.device == v.device:
        problems.append(f"query, key and value are on different devices ({q.device}, {k.device}, {v.device}): "
                        "move them to one device.")
    if not q.dtype == k.dtype == v.dtype:
        problems.append(f"query, key and value have different dtypes ({q.dtype}, {k.dtype}, {v.dtype}): cast them "
                        "to one dtype (under torch.autocast this is done for you).")
    if not all(t.dtype.is_floating_point for t in (q, k, v)):
        problems.append(f"attention needs floating-point tensors, not {q.dtype}.")
    B, H, SQ, D = q.shape
    if k.shape[0] != B or v.shape[:3] != k.shape[:3] or k.shape[3] != D:
        problems.append(f"key {tuple(k.shape)} and value {tuple(v.shape)} must be (batch, kv_heads, kv_len, "
                        f"head_dim) matching query {tuple(q.shape)} (value may have another head_dim).")
    elif k.shape[1] == 0 or H % k.shape[1]:
        problems.append(f"query heads ({H}) must be a multiple of key/value heads ({k.shape[1]}).")
    if mask is not None:
        target = (B, H, SQ, k.shape[2])
        if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
            problems.append(f"the mask must be bool (True = attend) or float (added to the scores), not "
                            f"{mask.dtype}.")
        if mask.dim() > 4 or any(m not in (1, t) for m, t in zip(mask.shape[::-1], target[::-1])):
            problems.append(f"the mask {tuple(mask.shape)} does not broadcast to (batch, heads, q_len, kv_len) "
                            f"= {target}.")
        if mask.device != q.device:
            problems.append(f"the mask is on {mask.device}, the query on {q.device}: move it.")
    if not 0.0 <= dropout < 1.0:
        problems.append(f"dropout must be in [0, 1), got {dropout}.")
    return problems


def choose(backend, q, k, v, mask, dropout, is_causal, scale) -> Dispatch:
    """How `backend` can run this input: GQA in place first, else with repeated K/V, else refused. Under
    autocast, torch's SDPA casts its inputs to the autocast dtype before it chooses: so do we."""
    q, k, v, mask = autocast_inputs(q, k, v, mask)
    problems = input_problems(q, k, v, mask, dropout)
    if problems:
        return Dispatch(False, reasons=problems)
    with _only(backend):
        return _dispatch(backend, q, k, v, mask, dropout, is_causal, scale)


def _dispatch(backend, q, k, v, mask, dropout, is_causal, scale) -> Dispatch:
    """choose() for inputs already cast and validated. Call inside _only(backend)."""
    if backend in CUDA_ONLY and q.device.type != "cuda":
        return Dispatch(False, reasons=[f"{backend.name} has kernels for CUDA devices only; this input is on "
                                        f"{q.device.type}."])
    n_rep = q.shape[1] // k.shape[1] if k.shape[1] else 1
    taken, reasons = _ask_torch(backend, q, k, v, mask, dropout, is_causal, scale, n_rep > 1)
    if taken:
        return Dispatch(True, enable_gqa=n_rep > 1)
    if n_rep > 1:
        kr, vr = repeat_heads(k, n_rep), repeat_heads(v, n_rep)
        taken_rep, reasons_rep = _ask_torch(backend, q, kr, vr, mask, dropout, is_causal, scale, False)
        if taken_rep:
            return Dispatch(True, repeated_kv=(kr, vr))
        reasons = reasons + [r for r in reasons_rep if r not in reasons]
    return Dispatch(False, reasons=reasons or ["torch gave no reason"])


def run(backend, q, k, v, mask, dropout, is_causal, scale, refuse) -> torch.Tensor:
    """Runs `backend` or calls refuse(reasons) (which raises). Returns (B, H, Sq, Dv).

    Empty inputs give an empty result, and queries with no key at all zeros, without asking a kernel."""
    q, k, v, mask = autocast_inputs(q, k, v, mask)
    problems = input_problems(q, k, v, mask, dropout)
    if problems:
        refuse(problems)
    if 0 in (q.shape[0], q.shape[2], k.shape[2]):
        return q.new_zeros(q.shape[:3] + v.shape[3:])
    if backend == SDPBackend.FLASH_ATTENTION and mask is not None:
        mask, is_causal = _plain_mask_as_flag(mask, q.shape[2], k.shape[2], is_causal)
    with _only(backend):
        how = _dispatch(backend, q, k, v, mask, dropout, is_causal, scale)
        if not how.ok:
            refuse(how.reasons)
        if how.repeated_kv is not None:
            k, v = how.repeated_kv
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                             scale=scale, enable_gqa=how.enable_gqa)
    if mask is not None and backend == SDPBackend.CUDNN_ATTENTION:
        # cuDNN returns garbage for a query that sees no key (H100, cuDNN 9.19); the reference gives zeros
        out = out.masked_fill(_rows_without_keys(mask), 0.0)
    return out


def _rows_without_keys(mask: torch.Tensor) -> torch.Tensor:
    """(..., q_len, 1) True where a query row attends no key under a bool or additive float mask."""
    keep = mask if mask.dtype == torch.bool else mask > float("-inf")
    return ~keep.any(-1, keepdim=True)


def _plain_mask_as_flag(mask, q_len, kv_len, is_causal):
    """FlashAttention-2 takes no mask, but Transformers hands over a 4-D mask whenever it cannot skip it (under
    torch.compile, for one): a bool mask that is all True, or exactly top-left causal, becomes the flag."""
    if mask.dtype != torch.bool or is_causal:
        return mask, is_causal
    if bool(mask.all()):
        return None, False
    if q_len == kv_len and bool((mask == torch.ones(q_len, kv_len, dtype=torch.bool, device=mask.device).tril()).all()):
        return None, True
    return mask, is_causal


def transformers_causal_flag(module, query, key, value, attention_mask, is_causal: Optional[bool]):
    """Transformers' own rule for SDPA's top-left `is_causal`, with the static-cache crop it implies."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = bool(q_len > 1 and attention_mask is None and causal)
    if causal and kv_len > q_len:  # prefill into an empty static cache: the keys past q_len are unused
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    return causal, key, value
