"""The catalogue of hf_sdpa's attention implementations, and how each says whether it can run an input."""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from torch.nn.attention import SDPBackend

from . import pinned
from .errors import AttentionRefused
from .inputs import AttentionInput


_NO_DENSE_MASK = ("it takes a 2-D key padding mask (padding=...), not a 4-D mask; use sdpa_math or eager for an "
                  "arbitrary mask.")


@dataclass(frozen=True)
class Implementation:
    name: str
    runs: str                      # what executes
    backend: Optional[SDPBackend]  # the torch backend it pins, None for our own kernel
    devices: str
    dtypes: str
    head_sizes: str
    masks: str
    gqa: str
    dropout: str
    backward: str
    extras: str

    def reasons(self, inp: AttentionInput) -> List[str]:
        """Why this implementation cannot run `inp` ([] when it can)."""
        if self.backend is None:
            from .kernels import check_inputs
            if inp.dense_mask is not None:
                return [_NO_DENSE_MASK]
            try:
                check_inputs(inp.query, inp.key, inp.value, causal=inp.causal, key_padding_mask=inp.padding,
                             window=inp.window, softcap=inp.softcap, dropout_p=inp.dropout)
            except AttentionRefused as exc:
                return [str(exc).removeprefix(f"{self.name}: ")]
            return []
        if inp.softcap is not None:
            return ["torch's scaled_dot_product_attention has no logit softcapping."]
        if inp.pattern_problems():
            return inp.pattern_problems()
        mask, is_causal = inp.sdpa_form()
        return pinned.choose(self.backend, inp.query, inp.key, inp.value, mask, inp.dropout, is_causal,
                             inp.scale).reasons

    def run(self, inp: AttentionInput):
        """Attention over `inp`, (B, Hq, Sq, D), or AttentionRefused."""
        if self.backend is None:
            from .kernels import attention
            if inp.dense_mask is not None:
                raise refusal(self.name, inp, [_NO_DENSE_MASK])
            try:
                return attention(inp.query, inp.key, inp.value, causal=inp.causal, scale=inp.scale,
                                 key_padding_mask=inp.padding, window=inp.window, softcap=inp.softcap,
                                 dropout_p=inp.dropout)
            except AttentionRefused as exc:
                raise refusal(self.name, inp, [str(exc).removeprefix(f"{self.name}: ")]) from None
        if inp.softcap is not None or inp.pattern_problems():
            raise refusal(self.name, inp, self.reasons(inp))

        def refuse(reasons):
            raise refusal(self.name, inp, reasons)

        mask, is_causal = inp.sdpa_form()
        return pinned.run(self.backend, inp.query, inp.key, inp.value, mask, inp.dropout, is_causal, inp.scale,
                          refuse)


def _sdpa(name, backend, runs, devices, dtypes, head_sizes, masks, gqa, dropout):
    return Implementation(name=name, runs=runs, backend=backend, devices=devices, dtypes=dtypes,
                          head_sizes=head_sizes, masks=masks, gqa=gqa, dropout=dropout,
                          backward="yes (torch's backward op of the same backend)",
                          extras="no softcap; sliding windows only through the 4-D mask")


IMPLEMENTATIONS: Dict[str, Implementation] = {impl.name: impl for impl in [
    _sdpa("sdpa_math", SDPBackend.MATH,
          "torch SDPBackend.MATH: the reference composition of matmul, softmax and matmul",
          "any", "any floating dtype (float64 too)", "any", "any 4-D bool or float mask", "native (enable_gqa)",
          "yes"),
    _sdpa("sdpa_fa2", SDPBackend.FLASH_ATTENTION,
          "torch SDPBackend.FLASH_ATTENTION: FlashAttention-2 (Tri Dao) on CUDA, a tiled flash-style kernel on CPU",
          "CUDA (sm80+), CPU", "CUDA: float16, bfloat16; CPU: float32, float64, bfloat16, float16",
          "CUDA: up to 256, multiple of 8; CPU: any",
          "CUDA: none (causal only, top-left aligned); CPU: 4-D bool or float mask",
          "native (enable_gqa)", "CUDA: yes; CPU: no"),
    _sdpa("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION,
          "torch SDPBackend.EFFICIENT_ATTENTION: xFormers' memory-efficient kernel (CUTLASS; Rabe and Staats)",
          "CUDA", "float16, bfloat16, float32", "up to 128 on sm80+ for training (measured: 256 refused)",
          "4-D bool or float mask (as an additive bias)", "K/V repeated (enable_gqa is refused)", "yes"),
    _sdpa("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION,
          "torch SDPBackend.CUDNN_ATTENTION: cuDNN's fused flash attention",
          "CUDA (sm80+, best on sm90)", "float16, bfloat16", "up to 128 (256 on recent cuDNN for sm90)",
          "4-D bool or float mask (as a bias)", "native where cuDNN takes it, else K/V repeated", "yes"),
    Implementation(
        name="triton_attention", backend=None,
        runs="hf_sdpa.kernels: our FlashAttention-2-style Triton kernels (forward, dQ, dK/dV)",
        devices="CUDA (any GPU Triton supports); CPU only under TRITON_INTERPRET=1 (tests)",
        dtypes="float16, bfloat16, float32 (exact fp32 dots unless torch allows tf32)",
        head_sizes="1 to 256 (padded inside the kernel)",
        masks="2-D key padding mask (left, right or with gaps), packed documents; no 4-D or float masks",
        gqa="native: K/V read in place", dropout="yes, seeded (Philox)",
        backward="yes (deterministic: no atomics)",
        extras="bottom-right causal (decode, chunked prefill), sliding windows, logit softcap, any scale"),
]}

TORCH_NAMES = [name for name, impl in IMPLEMENTATIONS.items() if impl.backend is not None]


def can_run(inp: AttentionInput, exclude: str = "") -> List[str]:
    return [name for name, impl in IMPLEMENTATIONS.items() if name != exclude and not impl.reasons(inp)]


def refusal(name: str, inp: AttentionInput, reasons: List[str]) -> AttentionRefused:
    others = can_run(inp, exclude=name)
    lines = [f"{name} cannot run this input: {inp.describe()}.",
             "Why:"]
    lines += [f"  - {r}" for r in reasons]
    lines.append("Implementations that can run it here: " + ", ".join(others + ["eager"]) + ".")
    return AttentionRefused("\n".join(lines))


def implementation_functions() -> Dict[str, Callable]:
    """name -> the attention function Transformers calls."""
    from .adapters import pinned_attention_function, triton_attention_forward
    functions = {name: pinned_attention_function(name) for name in TORCH_NAMES}
    functions["triton_attention"] = triton_attention_forward
    return functions
