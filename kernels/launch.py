"""Launching a Triton kernel again without Triton's argument binder: host time of short calls.

`kernel[grid](*args, **kwargs)` binds every argument, specialises each one, turns the specialisation and the options
into a cache key and looks the compiled kernel up before it launches: tens of microseconds per launch, three
launches per training call, which decide a short call's time (benchmarks/NOTES.md entry 11). What a compiled
kernel is specialised on is a few properties of each argument (`argument_class`): a tensor's dtype and 16-byte
alignment; an integer's being 1, a multiple of 16, or beyond 32 bits; a tensor descriptor's dtype and block shape;
constexprs and options by value. `Launcher` keys the compiled kernels on those classes and launches a call whose
arguments fall in known classes through the compiled kernel's own launcher (`CompiledKernel[grid](*args,
stream=...)`, the same in Triton 3.6 and 3.9); any other call goes through Triton, which compiles if it must.
tests/test_launch.py checks the classes against Triton's own specialisation of the same arguments.

HF_SDPA_TRITON_LAUNCH=1 sends every launch through Triton's binder (to rule this module out when debugging).
"""
import os

import torch
from triton.runtime import driver

from .config import interpreting

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton before 3.4: pointer loads only
    TensorDescriptor = None



def argument_class(arg):
    """What Triton specialises a runtime argument on; two arguments of one class run the same compiled kernel."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, bool):
        return bool
    if isinstance(arg, int):
        if arg == 1:
            return 1
        width = 32 if -2 ** 31 <= arg < 2 ** 31 else 64 if -2 ** 63 <= arg < 2 ** 63 else "u64"
        return arg % 16 == 0, width
    if isinstance(arg, float):
        return float
    if arg is None:
        return None
    if TensorDescriptor is not None and isinstance(arg, TensorDescriptor):
        return TensorDescriptor, arg.base.dtype, tuple(arg.block_shape), arg.padding
    raise TypeError(f"no launch class for a {type(arg).__name__} argument")


def current_device() -> int:
    return driver.active.get_current_device()


def current_stream(device: int) -> int:
    return driver.active.get_current_stream(device)


class Launcher:
    """Launches one @triton.jit kernel like kernel[grid](*args, **kwargs): runtime arguments by position, in the
    kernel's order, then constexprs and options (num_warps, num_stages, ...) by name."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.compiled = {}  # (classes of args, kwargs, device) -> (compiled kernel, constexpr values in order)
        self.direct = not interpreting() and os.environ.get("HF_SDPA_TRITON_LAUNCH", "0") != "1"

    def __call__(self, grid: tuple, *args, **kwargs):
        """grid: (x, y, z) programs, all three (CompiledKernel's launcher takes no shorter grid)."""
        if not self.direct:
            return self.kernel[grid](*args, **kwargs)
        device = current_device()
        key = (tuple(map(argument_class, args)), tuple(kwargs.items()), device)
        found = self.compiled.get(key)
        if found is None:
            compiled = self.kernel[grid](*args, **kwargs)
            if compiled is not None:  # None: Triton compiles in the background; ask it again next time
                self.compiled[key] = (compiled, tuple(kwargs[name] for name in self.kernel.arg_names[len(args):]))
            return compiled
        compiled, constexprs = found
        compiled[grid](*args, *constexprs, stream=current_stream(device))
        return compiled


def unchecked_descriptor(t: torch.Tensor, shape: list, strides: list, block_shape: list):
    """A TensorDescriptor without its constructor's checks (a quarter of a short call's host time for six of them),
    for callers that have checked alignment and strides themselves."""
    desc = TensorDescriptor.__new__(TensorDescriptor)
    desc.__dict__.update(base=t, shape=shape, strides=strides, block_shape=block_shape, padding="zero")
    return desc
