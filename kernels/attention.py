"""The plain-tensor API of our Triton FlashAttention: validation, mask conversion, dispatch to autograd."""
import math
import weakref
from typing import NamedTuple, Optional

import torch

from ..errors import AttentionRefused
from .config import DECODE_MAX_QUERIES, DECODE_MAX_ROWS, DECODE_MIN_KEYS, interpreting
from .autocast import autocast_inputs
from .library import TritonAttention, decode, forward_only
from .ops import Pattern

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
_ALTERNATIVES = "sdpa_math (any device) or sdpa_fa2 (the CPU flash kernel, or FlashAttention-2 on CUDA)"


def _refuse(why: str, what_next: str = ""):
    raise AttentionRefused(f"triton_attention: {why}" + (f" {what_next}" if what_next else ""))


def check_inputs(q, k, v, *, causal=False, key_padding_mask=None, position_ids=None, cu_seqlens=None,
                 window=None, softcap=None, dropout_p=0.0):
    """Raises AttentionRefused with the reason and a way forward if the kernel cannot take this input."""
    tensors = isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)
    if not tensors or q.dim() != 4 or k.dim() != 4 or v.dim() != 4:  # no generator: every call passes here
        _refuse("query, key and value must be 4-D tensors (batch, heads, seq, head_dim).")
    if not (q.device == k.device == v.device):
        _refuse(f"query, key and value are on different devices ({q.device}, {k.device}, {v.device}).",
                "Move them to one device.")
    if q.device.type == "cpu" and not interpreting():
        _refuse("runs on CUDA GPUs; on the CPU only under Triton's interpreter (TRITON_INTERPRET=1, for tests).",
                f"On this device use {_ALTERNATIVES}.")
    if q.device.type not in ("cuda", "cpu"):
        _refuse(f"has no kernel for device type '{q.device.type}'.", f"Use {_ALTERNATIVES}.")
    if not (q.dtype == k.dtype == v.dtype):
        _refuse(f"query, key and value have different dtypes ({q.dtype}, {k.dtype}, {v.dtype}).",
                "Cast them to one dtype.")
    if q.dtype not in SUPPORTED_DTYPES:
        _refuse(f"supports float16, bfloat16 and float32, not {q.dtype}.", "Use sdpa_math for float64.")
    B, H, SQ, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
        _refuse(f"key {tuple(k.shape)} and value {tuple(v.shape)} must be (batch, kv_heads, kv_len, head_dim) "
                f"matching query {tuple(q.shape)}.")
    if D < 1 or D > MAX_HEAD_DIM:
        _refuse(f"supports head sizes 1 to {MAX_HEAD_DIM}, not {D}.", "Use sdpa_math.")
    HK = k.shape[1]
    if HK == 0 or H % HK != 0:
        _refuse(f"query heads ({H}) must be a multiple of key/value heads ({HK}).")
    if key_padding_mask is not None:
        if key_padding_mask.shape != (B, k.shape[2]) or key_padding_mask.dtype not in (torch.bool, torch.int64,
                                                                                        torch.int32, torch.int8):
            _refuse(f"key_padding_mask must be a 2-D (batch, kv_len) = {(B, k.shape[2])} bool tensor (True = attend), "
                    f"got {tuple(key_padding_mask.shape)} {key_padding_mask.dtype}.",
                    "A 4-D or float mask is not supported: use sdpa_math or eager.")
        if key_padding_mask.device != q.device:
            _refuse("key_padding_mask is on another device than the query.")
    if window is not None:
        if not causal:
            _refuse("a sliding window is supported with causal attention only.", "Use sdpa_math or eager.")
        if int(window) < 1:
            _refuse(f"window must be a positive number of keys, got {window}.")
    if softcap is not None and not softcap > 0:
        _refuse(f"softcap must be positive, got {softcap}.")
    if not 0.0 <= dropout_p < 1.0:
        _refuse(f"dropout_p must be in [0, 1), got {dropout_p}.")
    if dropout_p > 0 and SQ * k.shape[2] >= 2 ** 31:
        _refuse("dropout needs q_len * kv_len < 2**31 (its random counter is 32-bit).")
    if position_ids is not None or cu_seqlens is not None:
        if position_ids is not None and cu_seqlens is not None:
            _refuse("give either position_ids or cu_seqlens for packed sequences, not both.")
        if not causal or SQ != k.shape[2]:
            _refuse("packed sequences need causal attention with q_len == kv_len.")
        if cu_seqlens is not None and B != 1:
            _refuse("cu_seqlens describes one packed row: batch must be 1.")
        if position_ids is not None and (position_ids.dim() != 2 or position_ids.shape[1] != SQ
                                         or position_ids.shape[0] not in (1, B)):
            _refuse(f"position_ids must be (batch or 1, q_len), got {tuple(position_ids.shape)}.")


def _key_range(mask: torch.Tensor):
    """Per row: the first and one-past-last attended key, and whether the attended keys have gaps. No host sync."""
    m = mask.to(torch.bool)
    skv = m.shape[1]
    idx = torch.arange(skv, device=m.device, dtype=torch.int32)
    lo = torch.where(m, idx, skv).amin(1)
    hi = torch.where(m, idx + 1, 0).amax(1)
    holes = m.sum(1, dtype=torch.int32) != (hi - lo).clamp_min(0)
    lo = torch.minimum(lo, hi)  # a row with no key at all: the empty range [0, 0)
    return lo.to(torch.int32).contiguous(), hi.to(torch.int32).contiguous(), holes.to(torch.int8).contiguous()


_LAST = {}  # kind -> (weak reference to a tensor, its version, the other arguments, the conversion of them)


def _tracing(t: torch.Tensor) -> bool:
    """Under torch.compile or CUDA graph capture: values cannot be read on the host."""
    return torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing())


def _converted_once(kind: str, t: torch.Tensor, convert, *args):
    """convert(t, *args), kept while t lives unchanged (its version counts in-place writes) with the same args.

    A model hands one mask and one position_ids tensor to all its layers: one conversion per forward instead of
    one per layer, a dozen small launches of host time each. Not kept for inference tensors (no version), under
    torch.compile (the graph has the conversion) or while a CUDA graph is captured (the same).
    """
    if _tracing(t) or t.is_inference():
        return convert(t, *args)
    ref, version, key, result = _LAST.get(kind, (lambda: None, -1, None, None))
    if ref() is t and t._version == version and key == args:
        return result
    result = convert(t, *args)
    _LAST[kind] = (weakref.ref(t), t._version, args, result)
    return result


def _padding_pattern(mask: torch.Tensor):
    """(kv_lo, kv_hi, holes, key_keep) for a padding mask, as the kernels take it."""
    return _converted_once("padding", mask, lambda m: (*_key_range(m), m.to(torch.int8).contiguous()))


class Documents(NamedTuple):
    """Packed documents as the kernels take them. bounds (B, 2, S) int32: per token its document's first index
    ([:, 0]) and one past its last ([:, 1]), which the dK/dV pass reads to know which rows see a whole key block.
    longest: the longest document's length, where the values were read (see _documents), else None."""
    bounds: torch.Tensor
    longest: Optional[int]


def _documents(new_doc: torch.Tensor, training: bool) -> Optional[Documents]:
    """(B, S) bool marking each document's first token -> its Documents.

    None in training when every row is one document: Transformers hands every model's arange positions to every
    attention call, and the backward pays for the per-element document test, the forward does not (NOTES entry
    10). Reading values costs a device sync, so it happens only where a backward follows (gradients enabled), and
    not under torch.compile or while a CUDA graph is captured; there the longest document is not known either (it
    bounds the kernels' loops as a window does, config.key_reach). The callers keep the result per tensor, so a
    model's forward syncs once (twice with packed documents), not once per layer."""
    read = training and not _tracing(new_doc)
    if read and not new_doc[:, 1:].any():
        return None
    seq = new_doc.shape[1]
    idx = torch.arange(seq, device=new_doc.device).expand_as(new_doc)
    start = torch.where(new_doc, idx, 0).cummax(1).values
    last = torch.cat([new_doc[:, 1:], torch.ones_like(new_doc[:, :1])], 1)  # the next token starts a document
    end = torch.where(last, idx + 1, seq).flip(1).cummin(1).values.flip(1)
    bounds = torch.stack([start, end], 1).to(torch.int32).contiguous()
    return Documents(bounds, int((end - start).max()) if read else None)


def documents_from_position_ids(position_ids: torch.Tensor, batch: int, device) -> Optional[Documents]:
    """A document starts wherever the position does not follow the previous one (Transformers' packing rule)."""
    def convert(position_ids, batch, device, training):
        pos = position_ids.to(device).expand(batch, -1)
        step = torch.ones_like(pos[:, :1], dtype=torch.bool)
        return _documents(torch.cat([step, (pos[:, 1:] - pos[:, :-1]) != 1], 1), training)
    return _converted_once("position_ids", position_ids, convert, batch, torch.device(device),
                           torch.is_grad_enabled())


def documents_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int, device) -> Optional[Documents]:
    def convert(cu_seqlens, total, device, training):
        cu_seqlens = cu_seqlens.to(device)
        new_doc = torch.zeros(1, total, dtype=torch.bool, device=cu_seqlens.device)
        starts = cu_seqlens[:-1].long()
        new_doc[0, starts[starts < total]] = True
        new_doc[0, 0] = True
        return _documents(new_doc, training)
    return _converted_once("cu_seqlens", cu_seqlens, convert, total, torch.device(device), torch.is_grad_enabled())


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              scale: Optional[float] = None, key_padding_mask: Optional[torch.Tensor] = None,
              position_ids: Optional[torch.Tensor] = None, cu_seqlens: Optional[torch.Tensor] = None,
              window: Optional[int] = None, softcap: Optional[float] = None, dropout_p: float = 0.0,
              seed: Optional[int] = None, split_kv: Optional[bool] = None) -> torch.Tensor:
    """Scaled dot-product attention with FlashAttention's memory use, forward and backward.

    q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, kv_len, head_dim), heads a multiple of kv_heads
    (GQA/MQA, read in place). Any strides with a contiguous head dim; the result is a (batch, heads, q_len,
    head_dim) view of a (batch, q_len, heads, head_dim) buffer.

    Under torch.autocast, q, k and v are cast to the autocast dtype first, as for F.scaled_dot_product_attention.
    causal: row i sees keys j <= i + kv_len - q_len (bottom-right aligned: decode and chunked prefill).
    key_padding_mask: (batch, kv_len), True = attend. A row that sees no key returns zeros.
    position_ids / cu_seqlens: packed documents (causal, q_len == kv_len); attention never crosses a document.
    window: keys within `window` positions of the diagonal (Mistral / Gemma / Qwen2 sliding window).
    softcap: scores become softcap * tanh(scores / softcap) (Gemma2). scale defaults to head_dim ** -0.5.
    dropout_p, seed: dropout on the probabilities; the same seed gives the same pattern (see dropout_keep_mask).
    split_kv: the split-KV decode path (few queries, a long cache, no gradient); None chooses it when it pays.
    """
    q, k, v = autocast_inputs(q, k, v)
    check_inputs(q, k, v, causal=causal, key_padding_mask=key_padding_mask, position_ids=position_ids,
                 cu_seqlens=cu_seqlens, window=window, softcap=softcap, dropout_p=dropout_p)
    B, H, SQ, D = q.shape
    SKV = k.shape[2]
    if q.numel() == 0:
        return q.clone()
    if SKV == 0:
        return torch.zeros_like(q)
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(D)
    if scale < 0:  # the forward takes the row max of unscaled scores, so the sign goes into q (autograd flips dQ)
        q, scale = -q, -scale
    elif scale == 0:  # zero scores through zero queries: the kernels' masked -inf times a zero scale would be NaN
        q, scale = q * 0.0, 1.0
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if key_padding_mask is not None:
        kv_lo, kv_hi, holes, key_keep = _padding_pattern(key_padding_mask)
    else:
        kv_lo = kv_hi = holes = key_keep = None
    documents = None
    if position_ids is not None:
        documents = documents_from_position_ids(position_ids, B, q.device)
    elif cu_seqlens is not None:
        documents = documents_from_cu_seqlens(cu_seqlens, SQ, q.device)
    if dropout_p > 0 and seed is None:
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,)).item())
    pattern = Pattern(kv_lo=kv_lo, kv_hi=kv_hi, key_keep=key_keep, holes=holes,
                      documents=None if documents is None else documents.bounds,
                      causal=bool(causal), window=None if window is None else int(window),
                      softcap=None if softcap is None else float(softcap),
                      scale=scale, dropout_p=float(dropout_p), seed=int(seed or 0),
                      longest_document=None if documents is None else documents.longest)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    lacks = _decode_lacks(q, k, grad, dropout_p, documents)
    if split_kv and lacks:
        _refuse(f"split_kv=True needs {lacks}.", "Leave split_kv=None to choose automatically.")
    if split_kv or (split_kv is None and not lacks and SKV >= DECODE_MIN_KEYS):
        return decode(q, k, v, pattern)
    if grad:
        return TritonAttention.apply(q, k, v, *pattern)
    return forward_only(q, k, v, pattern)


def _decode_lacks(q, k, grad: bool, dropout_p, documents) -> Optional[str]:
    """What the split-KV decode path would need that this input lacks; None when it can run it. grad: whether the
    call wants a gradient."""
    sq, group = q.shape[2], q.shape[1] // k.shape[1]
    if grad:
        return "no gradient (it has no backward pass)"
    if sq > DECODE_MAX_QUERIES or sq * group > DECODE_MAX_ROWS:
        return f"q_len <= {DECODE_MAX_QUERIES} and q_len * GQA group <= {DECODE_MAX_ROWS}"
    if dropout_p > 0 or documents is not None:
        return "no dropout and no packed documents"
    return None
