"""The kernels compile for Hopper (sm90) with TMA descriptors and the hardware tanh, on a machine without a GPU.

Triton compiles to PTX without a device (ptxas ships with it), so CI catches a TMA or inline-asm construct that the
interpreter accepts but the GPU compiler rejects. The compile runs in a subprocess without TRITON_INTERPRET (under
the interpreter the kernels are not compilable objects). Running them is left to the GPU suite.
"""
import os
import subprocess
import sys

import pytest

FLOATS = {"qk_scale", "sm_scale", "softcap", "dropout_p"}
POINTERS = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*bf16", "DO": "*bf16", "DQ": "*bf16", "DK": "*bf16",
            "DV": "*bf16", "Lse": "*fp32", "Delta": "*fp32", "KvLo": "*i32", "KvHi": "*i32", "Holes": "*i8",
            "KeyKeep": "*i8", "DocStart": "*i32", "OPart": "*fp32", "LsePart": "*fp32", "Arrived": "*i32"}
KERNELS = {"forward": ("forward", "attention_fwd_kernel", ("K", "V")),
           "dkdv": ("backward", "attention_bwd_dkdv_kernel", ("Q", "DO")),
           "dq": ("backward", "attention_bwd_dq_kernel", ("K", "V")),
           "decode": ("decode", "attention_decode_kernel", ("K", "V"))}


def hopper_ptx(name: str) -> str:
    """PTX of one kernel for sm90, its streamed pointer arguments passed as (1, 1, 64, 128) descriptors."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hf_sdpa.kernels.tiles import SOFTCAP_HW_TANH
    module, kernel_name, streamed = KERNELS[name]
    kernel = getattr(importlib.import_module(f"hf_sdpa.kernels.{module}"), kernel_name)
    flags = dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_M=64, BLOCK_N=64, CAUSAL=True, HAS_PADDING=True,
                 HAS_WINDOW=True, HAS_HOLES=False, HAS_DOC=False, SOFTCAP=SOFTCAP_HW_TANH.value, DROPOUT=False,
                 DOT_PRECISION="tf32", TMA=True)
    signature = {}
    for p in kernel.params:
        if p.is_constexpr:
            signature[p.name] = "constexpr"
        elif p.name in streamed:
            signature[p.name] = "tensordesc<bf16[1,1,64,128]>"
        else:
            signature[p.name] = POINTERS.get(p.name) or ("fp32" if p.name in FLOATS else "i32")
    source = ASTSource(kernel, signature, constexprs={p.name: flags[p.name] for p in kernel.params if p.is_constexpr})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=3)).asm["ptx"]


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernels_compile_for_hopper_with_tma_and_hardware_tanh(name):
    env = dict(os.environ, TRITON_INTERPRET="0")
    run = subprocess.run([sys.executable, __file__, name], env=env, capture_output=True, text=True, timeout=600)
    if run.returncode != 0 and "ptxas" in run.stderr.lower():
        pytest.skip(f"this Triton cannot assemble for sm90 here: {run.stderr[-300:]}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cp.async.bulk.tensor" in run.stdout  # the streamed tiles come through the copy engine
    assert "tanh.approx.f32" in run.stdout
    if name == "decode":  # the last chunk to arrive merges: the count orders the chunks' stores, reads skip L1
        assert "atom.global.gpu.acq_rel.add" in run.stdout and "ld.global.cg" in run.stdout


if __name__ == "__main__":
    print(hopper_ptx(sys.argv[1]))
