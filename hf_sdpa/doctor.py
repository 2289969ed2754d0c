"""`hf-sdpa doctor`: what exists, what is switched on, and what actually runs, here and for one case."""
import platform
from dataclasses import dataclass
from typing import Optional

import torch

from .implementations import IMPLEMENTATIONS
from .inputs import AttentionInput

_SWITCHES = {
    "sdpa_math": "math_sdp_enabled",
    "sdpa_fa2": "flash_sdp_enabled",
    "sdpa_efficient": "mem_efficient_sdp_enabled",
    "sdpa_cudnn": "cudnn_sdp_enabled",
}


@dataclass
class Case:
    batch: int = 2
    heads: int = 8
    kv_heads: int = 8
    q_len: int = 128
    kv_len: int = 128
    head_dim: int = 64
    dtype: str = "auto"
    device: str = "auto"
    mask: str = "causal"  # none | causal | padding | sliding
    window: int = 64
    softcap: Optional[float] = None
    dropout: float = 0.0
    backward: bool = False

    def resolved(self):
        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        dtype = ("float16" if device.startswith("cuda") else "float32") if self.dtype == "auto" else self.dtype
        return device, getattr(torch, dtype)

    def build(self) -> AttentionInput:
        device, dtype = self.resolved()
        gen = torch.Generator(device="cpu").manual_seed(0)

        def rand(*shape):
            return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype).requires_grad_(self.backward)

        q = rand(self.batch, self.heads, self.q_len, self.head_dim)
        k = rand(self.batch, self.kv_heads, self.kv_len, self.head_dim)
        v = rand(self.batch, self.kv_heads, self.kv_len, self.head_dim)
        padding = None
        if self.mask == "padding":  # left padding: the first row keeps three quarters of its keys
            padding = torch.ones(self.batch, self.kv_len, dtype=torch.bool, device=device)
            padding[0, : self.kv_len // 4] = False
        return AttentionInput(q, k, v, padding=padding, causal=self.mask != "none",
                              window=self.window if self.mask == "sliding" else None, softcap=self.softcap,
                              dropout=self.dropout)


def versions():
    import transformers
    from . import __version__
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "python": platform.python_version(), "hf_sdpa": __version__, "torch": torch.__version__,
        "cuda (torch built with)": torch.version.cuda, "cudnn": torch.backends.cudnn.version()
        if torch.backends.cudnn.is_available() else None,
        "triton": triton_version, "transformers": transformers.__version__,
    }


def devices():
    devices = [{"device": "cpu", "name": platform.processor() or platform.machine()}]
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        devices.append({"device": f"cuda:{i}", "name": p.name, "capability": f"{p.major}.{p.minor}",
                        "memory_gib": round(p.total_memory / 2 ** 30, 1), "multiprocessors": p.multi_processor_count})
    return devices


def _flash_impl():
    from torch.nn import attention as A
    info = {}
    if hasattr(A, "list_flash_attention_impls"):
        info["available"] = list(A.list_flash_attention_impls())
        info["active"] = A.current_flash_attention_impl() or "FA2 (torch's built-in)"
    return info


def _built_in(name):
    if name == "sdpa_math":
        return True
    if name == "sdpa_fa2":
        return torch.backends.cuda.is_flash_attention_available() or "CPU flash kernel only"
    if name == "sdpa_efficient":
        return torch.cuda.is_available()
    if name == "sdpa_cudnn":
        return torch.backends.cudnn.is_available() and torch.cuda.is_available()
    try:
        import triton  # noqa: F401
        return True
    except ImportError:
        return False


def try_run(name: str, inp: AttentionInput, backward: bool):
    """('ran', None) or ('refused' | 'failed', message): runs the implementation for real."""
    from .errors import AttentionRefused
    try:
        out = IMPLEMENTATIONS[name].run(inp)
        if backward:
            out.float().sum().backward()
        if not torch.isfinite(out.float()).all():
            return "failed", "non-finite output"
        return "ran", None
    except AttentionRefused as exc:
        return "refused", str(exc)
    except Exception as exc:  # a backend that is built in but breaks here is exactly what the doctor reports
        return "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


def _with_launches(fn):
    """fn()'s result and the Triton kernels it launched, each with its launch configuration."""
    from .kernels import ops
    launches = []

    def hook(kernel, info):
        launches.append(" ".join([kernel] + [f"{key}={value}" for key, value in info.items()]))

    ops.LAUNCH_HOOKS.append(hook)
    try:
        return fn(), launches
    finally:
        ops.LAUNCH_HOOKS.remove(hook)


def _launch_configurations():
    from .kernels import autotune
    if not autotune.enabled():
        return "fixed table by head size, dtype and key length (HF_SDPA_AUTOTUNE=1 searches and caches per GPU)"
    where = autotune.cache_file(torch.device("cuda")) if torch.cuda.is_available() else "the interpreter's file"
    return f"autotuned (HF_SDPA_AUTOTUNE=1), cached in {where}"


def _launch_path():
    from .kernels import ops
    from .kernels.config import interpreting
    if interpreting():
        return "through Triton's interpreter (TRITON_INTERPRET=1)"
    if ops.FORWARD.direct:
        return ("a call whose arguments Triton has specialised before goes straight to the compiled kernel "
                "(HF_SDPA_TRITON_LAUNCH=1 sends every call through Triton's binder)")
    return "every call through Triton's binder (HF_SDPA_TRITON_LAUNCH=1)"


def report(case: Optional[Case] = None) -> dict:
    """The whole account as a dict (what --json prints)."""
    probe = Case(batch=1, heads=2, kv_heads=2, q_len=8, kv_len=8, head_dim=16, mask="causal", backward=True)
    impls = {}
    for name, impl in IMPLEMENTATIONS.items():
        switch = _SWITCHES.get(name)
        status, why = try_run(name, probe.build(), backward=True)
        impls[name] = {
            "runs": impl.runs,
            "torch switch": f"torch.backends.cuda.{switch}() = {getattr(torch.backends.cuda, switch)()}"
            if switch else "none (not a torch backend)",
            "built in": _built_in(name),
            f"runs here ({probe.resolved()[0]}, tiny causal input, forward+backward)": status == "ran",
            "why not": why,
        }
    out = {"versions": versions(), "devices": devices(), "flash attention implementation": _flash_impl(),
           "implementations": impls, "notes": _notes()}
    if case is not None:
        inp = case.build()
        verdicts = {}
        for name, impl in IMPLEMENTATIONS.items():
            reasons = impl.reasons(inp)
            if reasons:
                verdicts[name] = {"can run": False, "why not": reasons}
            else:
                (status, why), launches = _with_launches(lambda: try_run(name, case.build(), case.backward))
                verdicts[name] = {"can run": status == "ran", "why not": [why] if why else []}
                if launches:
                    verdicts[name]["kernels"] = launches
        out["case"] = {"input": inp.describe() + (", forward+backward" if case.backward else ", forward"),
                       "implementations": verdicts, "triton_attention launch configurations": _launch_configurations(),
                       "triton_attention launches": _launch_path()}
    return out


def _notes():
    notes = ["torch.backends.cuda.*_sdp_enabled() are switches that allow a backend; they say nothing about "
             "whether it exists or can run here. 'runs here' above is measured."]
    if not torch.cuda.is_available():
        notes += ["No CUDA device: MATH and torch's CPU flash kernel (sdpa_fa2) run on the CPU; EFFICIENT and "
                  "CUDNN need CUDA, whatever their switches say; triton_attention needs a GPU (on the CPU only "
                  "under TRITON_INTERPRET=1, for tests)."]
    return notes


def format_report(rep: dict) -> str:
    lines = ["hf-sdpa doctor", "", "Versions:"]
    lines += [f"  {k}: {v}" for k, v in rep["versions"].items()]
    lines += ["", "Devices:"] + ["  " + ", ".join(f"{k}={v}" for k, v in d.items()) for d in rep["devices"]]
    if rep["flash attention implementation"]:
        lines += ["", "torch FLASH_ATTENTION backend: " + ", ".join(
            f"{k}: {v}" for k, v in rep["flash attention implementation"].items())]
    lines += ["", "Implementations:"]
    for name, info in rep["implementations"].items():
        runs_key = next(k for k in info if k.startswith("runs here"))
        lines.append(f"  {name:17s} {'RUNS' if info[runs_key] else 'does not run'} here")
        lines.append(f"      {info['runs']}")
        lines.append(f"      switch: {info['torch switch']}; built in: {info['built in']}")
        if info["why not"]:
            lines += ["      why not: " + line for line in info["why not"].splitlines()[:4]]
    lines += ["", "Notes:"] + [f"  - {n}" for n in rep["notes"]]
    if "case" in rep:
        lines += ["", f"Case: {rep['case']['input']}"]
        for name, verdict in rep["case"]["implementations"].items():
            lines.append(f"  {name:17s} {'can run' if verdict['can run'] else 'cannot run'}")
            for why in verdict["why not"]:
                for line in why.splitlines()[:6]:
                    lines.append(f"      {line}")
            lines += [f"      kernel: {launch}" for launch in verdict.get("kernels", [])]
        lines.append("  triton_attention launch configurations: "
                     + rep["case"]["triton_attention launch configurations"])
        lines.append("  triton_attention launches: " + rep["case"]["triton_attention launches"])
    return "\n".join(lines)
