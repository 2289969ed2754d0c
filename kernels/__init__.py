"""hf_sdpa.kernels: our FlashAttention in Triton (forward and backward), free of Transformers.

    from hf_sdpa.kernels import attention
    out = attention(q, k, v, causal=True, key_padding_mask=mask, window=4096, softcap=50.0)

Installed as ``hf_sdpa.kernels`` only. From a checkout's root this folder is also findable as a top-level
``kernels``, the name of Hugging Face's hub-kernels package that Transformers probes for; imported under
that name it stays empty and version-less, so Transformers does not take it for that package.
"""
if __name__ == "hf_sdpa.kernels":
    from .attention import MAX_HEAD_DIM, SUPPORTED_DTYPES, attention, check_inputs
    from .ops import dropout_keep_mask

    __all__ = ["attention", "check_inputs", "dropout_keep_mask", "MAX_HEAD_DIM", "SUPPORTED_DTYPES"]
