"""Which attention kernel actually ran, per call, for any implementation.

    with hf_sdpa.trace() as t:
        loss = model(**batch).loss
        loss.backward()
    print(t.format_summary())

While the block runs, every attention function in Transformers' registry (and each loaded model's
`eager_attention_forward`) is wrapped so that a call opens a scope (layer, implementation, shapes, mask), and
a TorchDispatchMode notes the aten ops dispatched inside it: a fused SDPA op names torch's backend
(`_scaled_dot_product_flash_attention`, `..._efficient_attention`, `..._cudnn_attention`,
`..._flash_attention_for_cpu`), plain matmuls and a softmax mean the math path, and our Triton launches
announce their kernel and block configuration. The dispatch mode is entered only for the length of a scope, so nothing
else is slowed down. The backward pass is timed between two identity autograd functions around each call (the
one on the output opens the scope, the one on the inputs closes it); our kernels announce their launches
there too, and torch's backward kernel is the backward op autograd pairs with the forward op seen. Direct calls of torch's
`scaled_dot_product_attention` and of `hf_sdpa.kernels.attention` are traced as "(called directly)". Time
is measured from scope to scope: CUDA events on the GPU, wall time on the CPU.

Under torch.compile: while the trace is active, the forward attention calls run eagerly between compiled
graphs (the dispatch mode breaks the graph there), so the trace shows the kernels the eager code picks; the
backward pass is compiled with the graph and is not seen. After the block the model compiles as before.
Trace an uncompiled step to see the backward. One trace at a time, from one thread: the open scope is
the trace's, not the thread's.
"""
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# The fused aten ops behind torch's SDPA backends, forward and backward.
FUSED = {
    "_scaled_dot_product_flash_attention": "FLASH_ATTENTION (FlashAttention-2 on CUDA)",
    "_scaled_dot_product_flash_attention_backward": "FLASH_ATTENTION (FlashAttention-2 on CUDA)",
    "_flash_attention_forward": "FLASH_ATTENTION (varlen)",
    "_flash_attention_backward": "FLASH_ATTENTION (varlen)",
    "_scaled_dot_product_flash_attention_for_cpu": "FLASH_ATTENTION (torch's CPU flash kernel)",
    "_scaled_dot_product_flash_attention_for_cpu_backward": "FLASH_ATTENTION (torch's CPU flash kernel)",
    "_scaled_dot_product_efficient_attention": "EFFICIENT_ATTENTION (memory-efficient, CUTLASS)",
    "_scaled_dot_product_efficient_attention_backward": "EFFICIENT_ATTENTION (memory-efficient, CUTLASS)",
    "_efficient_attention_forward": "EFFICIENT_ATTENTION (varlen)",
    "_efficient_attention_backward": "EFFICIENT_ATTENTION (varlen)",
    "_scaled_dot_product_cudnn_attention": "CUDNN_ATTENTION (cuDNN fused attention)",
    "_scaled_dot_product_cudnn_attention_backward": "CUDNN_ATTENTION (cuDNN fused attention)",
    "_scaled_dot_product_fused_attention_overrideable": "a device plugin's fused attention",
    "_scaled_dot_product_fused_attention_overrideable_backward": "a device plugin's fused attention",
}
MATMULS = {"bmm", "mm", "matmul", "baddbmm", "addmm", "einsum"}
SOFTMAXES = {"_softmax", "softmax", "_safe_softmax", "_softmax_backward_data"}


@dataclass
class Call:
    """One attention call, forward or backward."""
    implementation: str
    phase: str                      # "forward", "forward (decode)" (fewer queries than keys) or "backward"
    layer: Optional[int] = None
    module: str = ""
    query: tuple = ()
    key: tuple = ()
    dtype: str = ""
    mask: str = "none"
    ops: set = field(default_factory=set)
    launches: list = field(default_factory=list)  # our Triton kernels: "name(BLOCK_M=..., ...)"
    start: object = None            # a CUDA event or a perf_counter() reading
    end: object = None
    ms: Optional[float] = None
    device: Optional[torch.device] = None
    mode: Optional[TorchDispatchMode] = None  # watching the ops while the forward scope is open

    @property
    def kernel(self) -> str:
        fused = sorted(op for op in self.ops if op in FUSED)
        if fused:
            return " + ".join(fused)
        if self.launches:
            return " + ".join(dict.fromkeys(self.launches))  # in launch order, once each
        if self.ops & MATMULS and self.ops & SOFTMAXES:
            return "math (" + ", ".join(sorted(self.ops & (MATMULS | SOFTMAXES))) + ")"
        return "no attention kernel seen"

    def backward_twin(self) -> "Call":
        """The backward call of this forward call. Torch's backward ops are the ones autograd pairs with the
        forward op (each fused op has exactly one; the math path's matmuls and softmax have theirs)."""
        ops = {f"{op}_backward" for op in self.ops if f"{op}_backward" in FUSED}
        if not ops and self.ops & MATMULS:
            ops = {op for op in self.ops if op in MATMULS} | {"_softmax_backward_data"}
        return Call(self.implementation, "backward", self.layer, self.module, self.query, self.key, self.dtype,
                    self.mask, ops=ops if not self.launches else set())

    def as_dict(self) -> dict:
        return {"implementation": self.implementation, "phase": self.phase, "layer": self.layer,
                "module": self.module, "kernel": self.kernel, "backend": self.backend, "query": list(self.query),
                "key": list(self.key), "dtype": self.dtype, "mask": self.mask, "ms": self.ms}

    @property
    def backend(self) -> str:
        fused = [FUSED[op] for op in sorted(self.ops) if op in FUSED]
        if fused:
            return fused[0]
        if self.launches:
            return "hf_sdpa Triton kernels"
        return "math" if self.ops & MATMULS else "unknown"


def _describe_mask(mask) -> str:
    if mask is None:
        return "none"
    if isinstance(mask, torch.Tensor):
        return f"{mask.dim()}-D {str(mask.dtype).removeprefix('torch.')}"
    return type(mask).__name__  # e.g. a flex BlockMask


class _Ops(TorchDispatchMode):
    """Entered for the length of one scope: notes the aten ops the attention call dispatches."""

    def __init__(self, call):
        super().__init__()
        self.call = call

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.call.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


class _OpenBackward(torch.autograd.Function):
    """Identity on the attention output; its backward runs first, so it opens the backward scope."""

    @staticmethod
    def forward(ctx, trace, call, out):
        ctx.trace, ctx.call, ctx.device = trace, call, out.device
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        # Autograd resets dispatch modes between nodes, so torch's backward ops cannot be watched here;
        # launches of our kernels are still announced, and torch's follow from the forward op (below).
        ctx.trace._open(ctx.call.backward_twin(), ctx.device, observe_ops=False)
        return None, None, grad


class _CloseBackward(torch.autograd.Function):
    """Identity on query, key and value; its backward runs once their gradients exist, closing the scope."""

    @staticmethod
    def forward(ctx, trace, q, k, v):
        ctx.trace = trace
        return q.view_as(q), k.view_as(k), v.view_as(v)

    @staticmethod
    def backward(ctx, dq, dk, dv):
        ctx.trace._close()
        return None, dq, dk, dv


class Trace:
    """The context manager `hf_sdpa.trace()` returns; `calls` holds a `Call` per attention call."""

    def __init__(self):
        self.calls = []
        self._current = None
        self._restore = []

    # Scopes -----------------------------------------------------------------------------------------------
    def _stamp(self, device):
        if device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _open(self, call, device, observe_ops=True):
        call.start, call.device = self._stamp(device), device
        call.mode = _Ops(call) if observe_ops else None
        if call.mode is not None:
            call.mode.__enter__()
        self._current = call

    def _close(self):
        call, self._current = self._current, None
        if call is not None:
            if call.mode is not None:
                call.mode.__exit__(None, None, None)
            call.end = self._stamp(call.device)
            self.calls.append(call)

    def _run(self, call, function, query, key, value, *args, **kwargs):
        """function(query, key, value, ...) inside a forward scope, its backward inside a backward scope."""
        track_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        if track_grad:
            query, key, value = _CloseBackward.apply(self, query, key, value)
        self._open(call, query.device)
        try:
            result = function(query, key, value, *args, **kwargs)
        finally:
            self._close()
        out = result[0] if isinstance(result, tuple) else result
        if track_grad and out.requires_grad:
            out = _OpenBackward.apply(self, call, out)
            result = (out, *result[1:]) if isinstance(result, tuple) else out
        return result

    @staticmethod
    def _call(name, query, key, mask, module=None) -> Call:
        phase = "forward" if query.shape[-2] >= key.shape[-2] else "forward (decode)"
        return Call(name, phase, getattr(module, "layer_idx", None), type(module).__name__ if module else "",
                    tuple(query.shape), tuple(key.shape), str(query.dtype).removeprefix("torch."),
                    _describe_mask(mask))

    def _scoped(self, name, function):
        """A Transformers attention function (module, query, key, value, mask, ...) that traces its calls."""
        def attention(module, query, key, value, attention_mask, *args, **kwargs):
            return self._run(self._call(name, query, key, attention_mask, module),
                             lambda q, k, v: function(module, q, k, v, attention_mask, *args, **kwargs),
                             query, key, value)

        attention.__wrapped__ = function
        return attention

    def _scoped_sdpa(self, function):
        """torch's scaled_dot_product_attention, traced when called outside any attention function."""
        def scaled_dot_product_attention(query, key, value, attn_mask=None, *args, **kwargs):
            if self._current is not None:
                return function(query, key, value, attn_mask, *args, **kwargs)
            return self._run(self._call("(called directly)", query, key, attn_mask),
                             lambda q, k, v: function(q, k, v, attn_mask, *args, **kwargs), query, key, value)

        scaled_dot_product_attention.__wrapped__ = function
        return scaled_dot_product_attention

    def _launched(self, kernel, info):
        text = kernel + "(" + ", ".join(f"{k}={v}" for k, v in info.items()) + ")"
        if self._current is not None:
            self._current.launches.append(text)
        else:
            self.calls.append(Call("(called directly)", "backward" if "bwd" in kernel else "forward",
                                   launches=[text]))

    # Entering and leaving ----------------------------------------------------------------------------------
    def __enter__(self):
        from transformers import AttentionInterface
        from .kernels import ops as kernel_ops
        mapping = AttentionInterface._global_mapping
        for name, function in list(mapping.items()):
            mapping[name] = self._scoped(name, function)
            self._restore.append((mapping, name, function))
        for module_name, module in list(sys.modules.items()):
            function = getattr(module, "eager_attention_forward", None)
            if module_name.startswith("transformers.models.") and callable(function):
                module.eager_attention_forward = self._scoped("eager", function)
                self._restore.append((module.__dict__, "eager_attention_forward", function))
        functional = torch.nn.functional.__dict__
        self._restore.append((functional, "scaled_dot_product_attention", functional["scaled_dot_product_attention"]))
        functional["scaled_dot_product_attention"] = self._scoped_sdpa(functional["scaled_dot_product_attention"])
        kernel_ops.LAUNCH_HOOKS.append(self._launched)
        self._hooks = kernel_ops.LAUNCH_HOOKS
        return self

    def __exit__(self, *exc):
        self._hooks.remove(self._launched)
        for container, name, function in reversed(self._restore):
            container[name] = function
        self._restore.clear()
        self._current = None
        self.finish()
        return False

    def finish(self):
        """Turn the time stamps into milliseconds (waits for the GPU). Backward calls that ran after the
        block closed are not traced: run backward inside the block."""
        if any(isinstance(c.start, torch.cuda.Event) for c in self.calls):
            torch.cuda.synchronize()
        for c in self.calls:
            if c.ms is None and c.start is not None and c.end is not None:
                c.ms = c.start.elapsed_time(c.end) if isinstance(c.start, torch.cuda.Event) \
                    else 1e3 * (c.end - c.start)

    # Reports ------------------------------------------------------------------------------------------------
    def summary(self) -> list:
        """Per implementation, phase and kernel: calls, time (ms) and share of the traced attention time."""
        groups = defaultdict(lambda: {"calls": 0, "ms": 0.0})
        for c in self.calls:
            g = groups[(c.implementation, c.phase, c.kernel, c.backend)]
            g["calls"] += 1
            g["ms"] += c.ms or 0.0
        total = sum(g["ms"] for g in groups.values()) or 1.0
        return [{"implementation": i, "phase": p, "kernel": k, "backend": b, "calls": g["calls"],
                 "ms": g["ms"], "share": g["ms"] / total} for (i, p, k, b), g in groups.items()]

    def kernels(self, implementation: str | None = None) -> dict:
        """{phase: [kernels]} seen, for one implementation or all."""
        out = defaultdict(list)
        for c in self.calls:
            if (implementation is None or c.implementation == implementation) and c.kernel not in out[c.phase]:
                out[c.phase].append(c.kernel)
        return dict(out)

    def to_json(self) -> str:
        return json.dumps({"summary": self.summary(), "calls": [c.as_dict() for c in self.calls]}, indent=1)

    def format_summary(self) -> str:
        lines = ["| implementation | phase | kernel | backend | calls | ms | share |", "|---" * 7 + "|"]
        for r in self.summary():
            lines.append(f"| {r['implementation']} | {r['phase']} | {r['kernel']} | {r['backend']} | {r['calls']} "
                         f"| {r['ms']:.3f} | {100 * r['share']:.1f}% |")
        return "\n".join(lines)


def trace() -> Trace:
    """A context manager recording which attention kernel ran for every attention call inside it."""
    return Trace()
