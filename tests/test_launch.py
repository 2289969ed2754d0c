"""The direct relaunch (hf_sdpa.kernels.launch): its argument classes against Triton's own specialisation, and which
path each call takes. The kernels' results through it are checked by every GPU test that calls a shape twice and
by test_misaligned_views_recompile below."""
import itertools

import pytest
import torch
from triton import knobs

from hf_sdpa.kernels import attention, launch, ops
from hf_sdpa.kernels.config import DECODE_MIN_KEYS
from hf_sdpa.kernels.launch import (GluonDescriptor, Launcher, TensorDescriptor, launch_key, unchecked_descriptor,
                                   unchecked_gluon_descriptor)
from reference import assert_within, attention_ref, pattern_mask


def _triton_specialisation(arg):
    """What Triton's binder makes of arg for an NVIDIA GPU: the type and the specialisation (alignment, value)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    return native_specialize_impl(CUDABackend(GPUTarget("cuda", 90, 32)), arg, False, True, True)


def _samples():
    base = torch.randn(4096, dtype=torch.bfloat16)
    ints = [0, 1, 2, 15, 16, 17, 48, 64 * 1024, -1, -16, 2 ** 31 - 16, 2 ** 31, -2 ** 31, -2 ** 31 - 16, 2 ** 40,
            2 ** 63, 2 ** 63 + 16]
    tensors = [base, base[1:], base[8:], base[16:], base.float(), base.float()[2:], base.half(),
               torch.zeros(64, dtype=torch.int32), torch.zeros(64, dtype=torch.int8)[3:]]
    samples = ints + tensors + [0.5, 1.0, -3.0, None, True, False]
    if TensorDescriptor is not None:
        t = base.view(1, 4, 32, 32)
        for block in ([1, 1, 16, 32], [1, 1, 32, 32]):
            samples.append(TensorDescriptor(t, list(t.shape), list(t.stride()), block))
            samples.append(unchecked_descriptor(t, list(t.shape), list(t.stride()), block))
        samples.append(TensorDescriptor(t.half(), list(t.shape), list(t.stride()), [1, 1, 16, 32]))
    if GluonDescriptor is not None:  # the Gluon forward's: the same, plus a shared-memory layout
        from hf_sdpa.kernels.hopper_forward import shared_layout
        t = base.view(1, 4, 32, 32)
        for block in ((1, 1, 16, 32), (1, 1, 32, 32)):
            for view in (t, base[512:].view(1, 2, 56, 32)):
                samples.append(GluonDescriptor(view, list(view.shape), list(view.stride()), list(block),
                                               shared_layout(block, "bfloat16")))
        samples.append(GluonDescriptor(t.half(), list(t.shape), list(t.stride()), [1, 1, 16, 32],
                                       shared_layout((1, 1, 16, 32), "float16")))
        samples.append(unchecked_gluon_descriptor(t, list(t.shape), list(t.stride()), [1, 1, 16, 32],
                                                  shared_layout((1, 1, 16, 32), "bfloat16")))
    return samples


def test_unchecked_descriptors_equal_the_checked_ones():
    """ops builds descriptors without their constructors' checks (it checks alignment and strides itself): every
    field, the defaults included, as the constructor sets them."""
    t = torch.randn(4096, dtype=torch.bfloat16).view(1, 4, 32, 32)
    shape, strides, block = list(t.shape), list(t.stride()), [1, 1, 16, 32]
    if TensorDescriptor is not None:
        assert unchecked_descriptor(t, shape, strides, block) == TensorDescriptor(t, shape, strides, block)
    if GluonDescriptor is not None:
        from hf_sdpa.kernels.hopper_forward import shared_layout
        layout = shared_layout(tuple(block), "bfloat16")
        ours = unchecked_gluon_descriptor(t, shape, strides, block, layout)
        assert ours == GluonDescriptor(t, shape, strides, block, layout)


def test_equal_launch_keys_are_equal_specialisations():
    """Two arguments with one key must compile to one kernel (else a relaunch would run a kernel specialised for
    another alignment or value); two with different keys may differ. Checked against the installed Triton, one
    position at a time (the key is a tuple over positions) and for a whole argument list."""
    samples = _samples()
    equal = 0
    for a, b in itertools.combinations(samples, 2):
        if launch_key((a,)) == launch_key((b,)):
            assert _triton_specialisation(a) == _triton_specialisation(b), (a, b)
            equal += 1
    assert equal > 20  # the test compares something: aligned views, multiples of 16, floats, descriptors
    x = torch.zeros(64)
    assert launch_key((x, 32, 0.5, x[4:], 1)) == launch_key((x[8:], 48, 2.0, x, 1))
    assert launch_key((x, 32, 0.5, x[4:], 1)) != launch_key((x, 32, 0.5, x[4:], 17))


class _Compiled:
    """Stands for Triton's CompiledKernel: its run (the launcher, which reads grid[0], grid[1] and grid[2] and calls
    the hooks it is handed) and its [grid] runner, which calls run with the launch metadata and the set hooks."""
    function, packed_metadata = "function", "metadata"

    def __init__(self, log):
        self.log = log

    def run(self, x, y, z, stream, function, packed_metadata, metadata, enter_hook, exit_hook, *args):
        assert (function, packed_metadata) == (self.function, self.packed_metadata)
        hooked = enter_hook is not None
        if hooked:
            enter_hook(metadata)
        self.log.append(("direct" + " hooked" * hooked, (x, y, z), args, stream))

    def __getitem__(self, grid):
        def runner(*args, stream):
            hooks = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
            self.run(grid[0], grid[1], grid[2], stream, self.function, self.packed_metadata, {"name": "k"}, *hooks,
                     *args)
        return runner


class _Kernel:
    """Stands for a @triton.jit kernel, by default with runtime arguments X, n and constexprs BLOCK, FLAG."""

    def __init__(self, arg_names=("X", "n", "BLOCK", "FLAG")):
        self.arg_names = list(arg_names)
        self.log = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append(("triton", grid, args, kwargs))
            return _Compiled(self.log)
        return run


def test_launcher_relaunches_known_classes_and_asks_triton_otherwise(monkeypatch):
    monkeypatch.setattr(launch, "current_device", lambda: 0)
    monkeypatch.setattr(launch, "current_stream", lambda device: 1234)
    kernel = _Kernel()
    launcher = Launcher(kernel)
    launcher.direct = True  # as on a GPU (under the interpreter it always goes through Triton)
    x = torch.zeros(64)
    launcher((2, 1, 1), x, 32, FLAG=True, BLOCK=16, num_warps=4)
    launcher((3, 1, 1), x[4:], 64, FLAG=True, BLOCK=16, num_warps=4)  # another pointer and int, same classes
    launcher((3, 1, 1), x[1:], 64, FLAG=True, BLOCK=16, num_warps=4)  # misaligned: Triton
    launcher((3, 1, 1), x, 33, FLAG=True, BLOCK=16, num_warps=4)  # not a multiple of 16: Triton
    launcher((3, 1, 1), x, 32, FLAG=False, BLOCK=16, num_warps=4)  # another constexpr: Triton
    launcher((3, 1, 1), x, 32, FLAG=True, BLOCK=16, num_warps=8)  # another option: Triton
    paths = [entry[0] for entry in kernel.log]
    assert paths == ["triton", "direct", "triton", "triton", "triton", "triton"]
    _, grid, args, stream = kernel.log[1]
    assert grid == (3, 1, 1) and args[1:] == (64, 16, True) and args[0].data_ptr() == x[4:].data_ptr() and stream == 1234
    launcher((5, 1, 1), x[1:], 48, FLAG=True, BLOCK=16, num_warps=4)  # the misaligned class is known now
    assert kernel.log[-1][0] == "direct"


def test_launcher_leaves_the_launch_metadata_to_set_hooks(monkeypatch):
    """With a launch hook set (a profiler's) a relaunch goes through the compiled kernel's runner, which hands the
    hook its metadata; with none the launcher is called without metadata or hooks."""
    monkeypatch.setattr(launch, "current_device", lambda: 0)
    monkeypatch.setattr(launch, "current_stream", lambda device: 0)
    kernel = _Kernel()
    launcher = Launcher(kernel)
    launcher.direct = True
    x = torch.zeros(64)
    seen = []
    for _ in range(2):
        launcher((2, 1, 1), x, 32, FLAG=True, BLOCK=16)
    knobs.runtime.launch_enter_hook.add(seen.append)
    try:
        launcher((2, 1, 1), x, 32, FLAG=True, BLOCK=16)
    finally:
        knobs.runtime.launch_enter_hook.remove(seen.append)
    launcher((2, 1, 1), x, 32, FLAG=True, BLOCK=16)
    assert [entry[0] for entry in kernel.log] == ["triton", "direct", "direct hooked", "direct"]
    assert seen == [{"name": "k"}] and not launch.launch_hooks_set()


def test_every_call_site_relaunches_with_all_parameters(monkeypatch):
    """The second call of each pass goes the direct way and hands the compiled kernel every parameter of the
    kernel, in its order: a call site that left a parameter to a default would fail here, not only on a GPU
    (under the interpreter the kernels always go through Triton). On a GPU the tensors are CUDA ones, so the
    Hopper call sites (tensor descriptors) are the ones checked. The kernels are stand-ins: outputs are not
    computed."""
    monkeypatch.setattr(launch, "current_device", lambda: 0)
    monkeypatch.setattr(launch, "current_stream", lambda device: 0)
    fakes = {}
    for name in ("FORWARD", "DECODE", "DQ", "DKDV"):
        launcher = getattr(ops, name)
        fakes[name] = _Kernel(launcher.kernel.arg_names)
        monkeypatch.setattr(launcher, "kernel", fakes[name])
        monkeypatch.setattr(launcher, "direct", True)
        monkeypatch.setattr(launcher, "compiled", {})
    like = dict(dtype=torch.float16, device="cuda" if torch.cuda.is_available() else "cpu")
    q = torch.randn(1, 4, 20, 32, **like, requires_grad=True)
    k, v = (torch.randn(1, 2, 20, 32, **like, requires_grad=True) for _ in range(2))
    cache = torch.randn(1, 2, DECODE_MIN_KEYS, 32, **like)
    for _ in range(2):
        attention(q, k, v, causal=True).backward(torch.ones(1, 4, 20, 32, **like))
        with torch.no_grad():
            attention(q[:, :, :1], cache, cache, causal=True)
    for name, fake in fakes.items():
        assert [entry[0] for entry in fake.log] == ["triton", "direct"], name
        _, grid, args, _ = fake.log[1]
        assert len(grid) == 3 and len(args) == len(fake.arg_names), name


def _fake_launches(monkeypatch, *names):
    """ops' launchers of these names launching _Kernel stand-ins (returned by name), as on a GPU, Hopper assumed."""
    monkeypatch.setattr(launch, "current_device", lambda: 0)
    monkeypatch.setattr(launch, "current_stream", lambda device: 0)
    monkeypatch.setattr(ops, "_is_hopper", lambda device: True)
    fakes = {}
    for name in names:
        launcher = getattr(ops, name)
        fakes[name] = _Kernel(launcher.kernel.arg_names)
        monkeypatch.setattr(launcher, "kernel", fakes[name])
        monkeypatch.setattr(launcher, "direct", True)
        monkeypatch.setattr(launcher, "compiled", {})
    return fakes


def test_the_gluon_forward_relaunches_with_all_parameters(monkeypatch):
    """As above for the Gluon forward's call site (switched on, Hopper assumed): the second call goes the direct
    way with every parameter of the kernel."""
    if ops.HOPPER_FWD is None:
        pytest.skip("this Triton has no Gluon Hopper language")
    fake = _fake_launches(monkeypatch, "HOPPER_FWD")["HOPPER_FWD"]
    monkeypatch.setattr(ops, "HOPPER_FORWARD", True)
    monkeypatch.setattr(ops, "HOPPER_FORWARD_MIN_KEYS", {})  # the kernel at every key length
    monkeypatch.setattr(ops, "_multiprocessors", lambda device: 132)
    q, k, v = (torch.randn(2, 4, 300, 128, dtype=torch.bfloat16) for _ in range(3))
    for _ in range(2):
        ops.run_forward(q, k, v, ops.Pattern(None, None, None, None, None, True, None, None, 0.125, 0.0, 0, None))
    assert [entry[0] for entry in fake.log] == ["triton", "direct"]
    _, grid, args, _ = fake.log[1]
    assert grid == (3 * 8, 1, 1) and len(args) == len(fake.arg_names)  # MHA: one program per tile


@pytest.mark.parametrize("gluon_dq", [False, True], ids=["triton_dq", "gluon_dq"])
def test_the_gluon_backward_relaunches_with_all_parameters(gluon_dq, monkeypatch):
    """As above for the Gluon dK/dV kernel's call site and the Gluon dQ kernel's (switched on, Hopper assumed), the
    other kernels of the backward stand-ins too."""
    if ops.HOPPER_DKDV is None:
        pytest.skip("this Triton has no Gluon Hopper language")
    fakes = _fake_launches(monkeypatch, *("HOPPER_DQ", "HOPPER_DKDV") if gluon_dq else ("DQ", "HOPPER_DKDV"))
    monkeypatch.setattr(ops, "HOPPER_BACKWARD", True)
    monkeypatch.setattr(ops, "hopper_backward_pays", lambda *args: True)
    monkeypatch.setattr(ops, "HOPPER_GLUON_DQ", gluon_dq)
    q, k, v, out, do = (torch.randn(2, 4, 300, 128, dtype=torch.bfloat16) for _ in range(5))
    lse = torch.randn(2, 4, 300)
    pattern = ops.Pattern(None, None, None, None, None, True, None, None, 0.125, 0.0, 0, None)
    for _ in range(2):
        ops.run_backward(q, k, v, out, lse, do, pattern)
    grids = {"HOPPER_DKDV": (3, 8, 1), "HOPPER_DQ": (3 * 8, 1, 1), "DQ": None}
    for name, fake in fakes.items():
        assert [entry[0] for entry in fake.log] == ["triton", "direct"], name
        _, grid, args, _ = fake.log[1]
        assert grids[name] in (None, tuple(grid)) and len(args) == len(fake.arg_names), name


def test_a_training_call_builds_each_gluon_descriptor_once(monkeypatch):
    """The Gluon forward's descriptors of Q, K and V go on to the dQ kernel, which reads them in the same tiles at
    head size 128, and the dQ kernel's of Q and dO to the dK/dV kernel: the same objects, not rebuilt. The forward
    keeps none of out (its autograd node would hold itself through it), and the node lets go of them in the
    backward."""
    if ops.HOPPER_DKDV is None:
        pytest.skip("this Triton has no Gluon Hopper language")
    fakes = _fake_launches(monkeypatch, "HOPPER_FWD", "HOPPER_DQ", "HOPPER_DKDV")
    monkeypatch.setattr(ops, "HOPPER_FORWARD", True)
    monkeypatch.setattr(ops, "HOPPER_FORWARD_MIN_KEYS", {})
    monkeypatch.setattr(ops, "_multiprocessors", lambda device: 132)
    monkeypatch.setattr(ops, "HOPPER_BACKWARD", True)
    monkeypatch.setattr(ops, "hopper_backward_pays", lambda *args: True)
    monkeypatch.setattr(ops, "HOPPER_GLUON_DQ", True)
    q, k, v = (torch.randn(2, 300, n, 128, dtype=torch.bfloat16).transpose(1, 2).requires_grad_() for n in (4, 2, 2))
    out = attention(q, k, v, causal=True)
    assert not any(d.base is out for d in out.grad_fn.kept.values())
    out.backward(torch.randn_like(out))
    assert out.grad_fn.kept is None
    (_, _, forward, _), (_, _, dq, _), (_, _, dkdv, _) = (fakes[name].log[0] for name in fakes)
    assert all(d.base is t for d, t in zip(forward, (q, k, v, out)))
    assert all(a is b for a, b in zip(dq[:3], forward[:3])) and dkdv[0] is dq[0] and dkdv[3] is dq[3]  # Q and dO
    assert dkdv[1].block_shape == [1, 1, 64, 128] and dkdv[1] is not dq[1]  # K in the dK/dV kernel's 64-key blocks


@pytest.mark.gpu
def test_misaligned_views_recompile():
    """Inputs whose start is not 16-byte aligned must not run the kernels compiled (and relaunched) for aligned
    ones, which assume aligned vector loads: forward and backward against the float64 reference, aligned twice
    (the second call relaunches), then misaligned views, then aligned again."""
    b, h, s, d, dtype = 2, 4, 256, 64, torch.float16
    n = b * h * s * d
    storage = torch.randn(3 * n + 8, device="cuda", dtype=dtype)
    for offset in (0, 0, 1, 1, 8, 0):
        q, k, v = (storage[offset + i * n:offset + (i + 1) * n].view(b, h, s, d).detach().requires_grad_()
                   for i in range(3))
        assert (q.data_ptr() % 16 == 0) == (offset % 8 == 0)
        out = attention(q, k, v, causal=True)
        keep = pattern_mask(b, s, s, causal=True, device="cuda")
        ref, low = attention_ref(q, k, v, keep), attention_ref(q, k, v, keep, dtype=dtype)
        dout = torch.randn_like(out)
        results = zip(("out", "dq", "dk", "dv"), (out, *torch.autograd.grad(out, (q, k, v), dout)),
                      (ref, *torch.autograd.grad(ref, (q, k, v), dout.double())),
                      (low, *torch.autograd.grad(low, (q, k, v), dout)))
        for name, ours, exact, same_precision in results:
            assert_within(f"offset {offset} {name}", ours, exact, same_precision, dtype)
