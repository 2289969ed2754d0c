"""Launching a Triton kernel again without Triton's argument binder: host time of short calls.

`kernel[grid](*args, **kwargs)` binds every argument, specialises each one, turns the specialisation and the options
into a cache key and looks the compiled kernel up before it launches: tens of microseconds per launch, three
launches per training call, a good part of the host time that decides a call on a small batch (benchmarks/NOTES.md
entry 11). What a compiled
kernel is specialised on is a few properties of each argument (`launch_key`): a tensor's dtype and 16-byte
alignment; an integer's being 1, a multiple of 16, or beyond 32 bits; a tensor descriptor's dtype and block shape;
constexprs and options by value. `Launcher` keys the compiled kernels on those classes and launches a call whose
arguments fall in known classes through the compiled kernel's own launcher (`CompiledKernel.run`, called as
`CompiledKernel[grid](*args, stream=...)` calls it, the same in Triton 3.6 and 3.9); any other call goes through
Triton, which compiles if it must.
tests/test_launch.py checks the classes against Triton's own specialisation of the same arguments.

HF_SDPA_TRITON_LAUNCH=1, read at import, sends every launch through Triton's binder (to rule this module out when
debugging).
"""
import functools
import operator
import os

import torch
from triton import knobs
from triton.runtime import driver

from .config import interpreting

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton before 3.4: pointer loads only
    TensorDescriptor = None
try:  # Gluon's descriptors (hopper_forward.py) carry their shared-memory layout as well
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
except ImportError:
    GluonDescriptor = None
DESCRIPTORS = tuple(d for d in (TensorDescriptor, GluonDescriptor) if d is not None)

_RESIDUE = (15).__and__  # x & 15: an int's or address's residue mod 16, finer than Triton's "a multiple of 16"
_IS_ONE = (1).__eq__
_DTYPE = operator.attrgetter("dtype")
_INT32 = 2 ** 31


def _width(i: int):
    return 32 if -_INT32 <= i < _INT32 else 64 if -2 ** 63 <= i < 2 ** 63 else "u64"


def _picker(positions: list):
    """args -> the tuple of args at positions (itemgetter returns a bare item for one position)."""
    if len(positions) == 1:
        position = positions[0]
        return lambda args: (args[position],)
    return operator.itemgetter(*positions) if positions else lambda args: ()


@functools.lru_cache(maxsize=None)
def _layout(kinds: tuple):
    """Where the tensors, ints and descriptors sit among arguments of these types (one layout per call site)."""
    tensors, ints, descriptors = [], [], []
    for i, kind in enumerate(kinds):
        if issubclass(kind, torch.Tensor):
            tensors.append(i)
        elif kind is int:
            ints.append(i)
        elif kind in DESCRIPTORS:
            descriptors.append(i)
        elif kind not in (float, bool, type(None)):
            raise TypeError(f"no launch class for a {kind.__name__} argument")
    return _picker(tensors), _picker(ints), _picker(descriptors)


def launch_key(args: tuple) -> tuple:
    """What Triton specialises the runtime arguments on, or finer: equal keys run the same compiled kernel.

    Triton specialises a tensor on its dtype and whether its address is a multiple of 16 bytes, an int on whether
    it is 1, a multiple of 16 and its width, a descriptor on its dtype and block shape (a Gluon one on its layout
    too), anything else on its type.
    The key takes residues mod 16 instead of "a multiple of 16" (C-level maps over the arguments, a few us for
    40 of them; a residue that Triton does not tell apart costs one extra trip through its binder, never a wrong
    kernel)."""
    kinds = tuple(map(type, args))
    tensors, ints, descriptors = (pick(args) for pick in _layout(kinds))
    key = (kinds, tuple(map(_DTYPE, tensors)), tuple(map(_RESIDUE, map(torch.Tensor.data_ptr, tensors))),
           tuple(map(_RESIDUE, ints)), tuple(map(_IS_ONE, ints)))
    if ints and (min(ints) < -_INT32 or max(ints) >= _INT32):
        key += (tuple(map(_width, ints)),)
    if descriptors:
        key += (tuple((d.base.dtype, tuple(d.block_shape), d.padding, getattr(d, "layout", None))
                      for d in descriptors),)
    return key


def launch_hooks_set() -> bool:
    """Whether a launch hook is set (a profiler such as Proton adds them). Triton's hooks are chains, empty unless
    one is added, and its runner builds every launch's metadata for them (a dict over the kernel's 40-odd argument
    names: about 2 us a launch on a CI core); with no hook the metadata is not read."""
    hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    return any(getattr(hook, "calls", hook) for hook in hooks)  # a chain's calls, or a hook assigned directly


def current_device() -> int:
    return driver.active.get_current_device()


def current_stream(device: int) -> int:
    return driver.active.get_current_stream(device)


class Launcher:
    """Launches one @triton.jit kernel like kernel[grid](*args, **kwargs): runtime arguments by position, in the
    kernel's order, then constexprs and options (num_warps, num_stages, ...) by name."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.compiled = {}  # (launch_key(args), kwargs, device) -> (compiled kernel, constexpr values in order)
        self.direct = not interpreting() and os.environ.get("HF_SDPA_TRITON_LAUNCH", "0") != "1"

    def __call__(self, grid: tuple, *args, **kwargs):
        """grid: (x, y, z) programs, all three (CompiledKernel's launcher takes no shorter grid)."""
        if not self.direct:
            return self.kernel[grid](*args, **kwargs)
        device = current_device()
        key = (launch_key(args), tuple(kwargs.items()), device)
        found = self.compiled.get(key)
        if found is None:
            compiled = self.kernel[grid](*args, **kwargs)
            if compiled is not None:  # None: Triton compiles in the background; ask it again next time
                self.compiled[key] = (compiled, tuple(kwargs[name] for name in self.kernel.arg_names[len(args):]))
            return compiled
        compiled, constexprs = found
        stream = current_stream(device)
        if launch_hooks_set():
            compiled[grid](*args, *constexprs, stream=stream)
        else:  # what compiled[grid] runs, without the launch metadata that only hooks read
            compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, None, None,
                         None, *args, *constexprs)
        return compiled


def _unchecked(cls, t: torch.Tensor, shape: list, strides: list, block_shape: list, **fields):
    """An instance of the descriptor dataclass cls without its __post_init__ checks (its other fields keep their
    class defaults)."""
    desc = cls.__new__(cls)
    desc.__dict__.update(base=t, shape=shape, strides=strides, block_shape=block_shape, padding="zero", **fields)
    return desc


def unchecked_descriptor(t: torch.Tensor, shape: list, strides: list, block_shape: list):
    """A TensorDescriptor without its constructor's checks, for callers that have checked alignment and strides
    themselves: the checks of six descriptors took 60-100 us of a training call's Python time (about a quarter;
    measured on a CPU with the launches stubbed)."""
    return _unchecked(TensorDescriptor, t, shape, strides, block_shape)


def unchecked_gluon_descriptor(t: torch.Tensor, shape: list, strides: list, block_shape: list, layout):
    """A Gluon descriptor (its shared-memory layout too) without its constructor's checks, likewise: a training
    call of the Gluon kernels builds 13 (benchmarks/NOTES.md entry 19)."""
    return _unchecked(GluonDescriptor, t, shape, strides, block_shape, layout=layout)
