"""The functions Transformers calls: fn(module, query, key, value, attention_mask, dropout, scaling, **kwargs).

They map what a model hands over (see shared notes on Transformers' attention contract) onto a pinned torch
backend or our Triton kernel, and return (out of shape (B, Sq, Hq, D), None).
"""
import torch
from transformers.masking_utils import causal_mask_function, flash_attention_mask

from . import pinned
from .errors import AttentionRefused
from .implementations import IMPLEMENTATIONS, refusal
from .inputs import AttentionInput
from .kernels import attention

# What neither kind of implementation computes; each is refused rather than silently ignored.
_REFUSED_KWARGS = {
    "position_bias": "an additive position bias (T5-style). Use eager or sdpa",
    "s_aux": "attention sinks (gpt-oss). Use eager",
}


def _refuse_kwargs(name, kwargs, extra=None):
    refused = dict(_REFUSED_KWARGS, **(extra or {}))
    for key, why in refused.items():
        if kwargs.get(key) is not None:
            raise AttentionRefused(f"{name} does not support {why}.")


def pinned_attention_function(name: str):
    backend = IMPLEMENTATIONS[name].backend

    @torch.compiler.disable  # a graph break, not a trace through the lock and torch's backend switches
    def forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
        _refuse_kwargs(name, kwargs, {"softcap": "logit softcapping (torch SDPA has none). Use triton_attention or eager"})
        causal, key, value = pinned.transformers_causal_flag(module, query, key, value, attention_mask, is_causal)

        def refuse(reasons):
            inp = AttentionInput(query, key, value, causal=causal, dropout=dropout, scale=scaling,
                                 dense_mask=attention_mask)
            raise refusal(name, inp, reasons)

        out = pinned.run(backend, query, key, value, attention_mask, dropout, causal, scaling, refuse)
        return out.transpose(1, 2).contiguous(), None

    forward.__name__ = f"{name}_attention_forward"
    forward.__doc__ = f"Transformers attention function running only {backend.name}, or refusing."
    return forward


def _last_key_hidden(mask_function, q_offset, q_length, kv_offset, kv_length) -> bool:
    """True when the last query may not see the last key: the empty tail of a static cache (causal layers)."""
    if not (isinstance(q_offset, int) and isinstance(kv_offset, int)) or kv_offset + kv_length <= q_offset + q_length:
        return False
    last_q, last_k = torch.tensor(q_offset + q_length - 1), torch.tensor(kv_offset + kv_length - 1)
    return not bool(mask_function(torch.tensor(0), torch.tensor(0), last_q, last_k))


def triton_attention_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0,
                          mask_function=causal_mask_function, attention_mask=None, local_size=None, device=None,
                          **kwargs):
    """The 2-D key padding mask (or None), as flash_attention_mask gives it, with a static cache's empty slots.

    With a static cache the mask covers only the tokens seen so far, shorter than the cache (Transformers drops
    an all-True mask: then it is made here). For one query (a decode step) the empty slots are masked: the mask
    is padded to the cache's length, so that its shape, and the shapes a compiled decode step sees, stay fixed
    (torch.compile and CUDA graphs record the step once). For several queries, whose causal diagonal must end at
    the last seen token, and for a sliding-window layer whose cache is longer than its window, the attention
    function reads just the seen prefix of the cache instead (FA2's rule).
    """
    if attention_mask is not None and torch.compiler.is_compiling():
        # flash_attention_mask drops a mask that is all True: a data-dependent branch, which would break the graph.
        # An all-True mask costs the kernel almost nothing (one key range per row).
        mask = attention_mask[:, -kv_length:]
    else:
        mask = flash_attention_mask(batch_size, q_length, kv_length, q_offset, kv_offset,
                                    mask_function=mask_function, attention_mask=attention_mask, **kwargs)
    empty_tail = _last_key_hidden(mask_function, q_offset, q_length, kv_offset, kv_length)
    # A static cache's layers give their offsets as tensors (so that a compiled step keeps its shapes)
    static = isinstance(q_offset, torch.Tensor) or isinstance(kv_offset, torch.Tensor)
    one_query = q_length == 1 and (local_size is None or kv_length <= local_size)  # any window spans the cache
    if mask is None and (empty_tail or static) and device is not None:
        if one_query:  # the slots of the tokens seen so far, without asking the device how many there are
            slots = torch.arange(kv_length, device=device) + kv_offset
            # contiguous like the padded masks: a compiled step guards on the mask's strides
            return (slots < q_offset + q_length).expand(batch_size, kv_length).contiguous()
        mask = torch.ones(batch_size, int(q_offset + q_length - kv_offset), dtype=torch.bool, device=device)
    if mask is not None and mask.shape[1] < kv_length and one_query:
        return torch.nn.functional.pad(mask.bool(), (0, kv_length - mask.shape[1]))
    if empty_tail and (mask is None or (q_length > 1 and mask.shape[1] >= kv_length)):
        raise AttentionRefused(
            "triton_attention aligns causal attention to the last key, so it cannot run queries against a static "
            "cache's empty slots unless the mask covers just the tokens seen so far (generate() passes such a "
            "mask). Pass that attention_mask, or use the default dynamic cache "
            "(generate(..., cache_implementation='dynamic')).")
    return mask


def triton_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                             sliding_window=None, softcap=None, position_ids=None, cu_seq_lens_q=None,
                             cu_seq_lens_k=None, **kwargs):
    """Transformers attention function for our Triton kernel: padding as a key range, packing from position ids.
    Traceable: under torch.compile the kernels are custom ops inside the graph (see kernels/library.py)."""
    _refuse_kwargs("triton_attention", kwargs)
    if attention_mask is not None and attention_mask.dim() != 2:
        raise AttentionRefused(
            f"triton_attention takes a 2-D key padding mask, not a {attention_mask.dim()}-D mask (a model that "
            "builds its own 4-D mask, or triton_attention registered without its mask function). "
            "Use sdpa_math or eager for this model.")
    if attention_mask is not None and attention_mask.shape[1] < key.shape[2]:
        # A static cache: the mask covers the tokens seen so far; the cache past them is empty (views, no copy).
        key, value = key[:, :, :attention_mask.shape[1]], value[:, :, :attention_mask.shape[1]]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    q_len, kv_len = query.shape[2], key.shape[2]
    packed = dict()
    if attention_mask is None and causal and q_len == kv_len and q_len > 1:
        if cu_seq_lens_q is not None:
            if cu_seq_lens_k is not None and not (cu_seq_lens_k is cu_seq_lens_q or
                                                  cu_seq_lens_k.equal(cu_seq_lens_q)):
                raise AttentionRefused("triton_attention needs cu_seq_lens_q == cu_seq_lens_k for packed rows.")
            packed["cu_seqlens"] = cu_seq_lens_q
        elif position_ids is not None:
            packed["position_ids"] = position_ids
    if sliding_window is not None and not causal:
        raise AttentionRefused("triton_attention supports sliding windows on causal layers only. Use sdpa_math.")
    out = attention(query, key, value, causal=causal, scale=scaling, key_padding_mask=attention_mask,
                    window=sliding_window, softcap=softcap, dropout_p=dropout, **packed)
    return out.transpose(1, 2), None
