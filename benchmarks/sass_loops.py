"""The kernels' inner loops as the H100 runs them, on a machine without a GPU: compile for sm90, disassemble, and
count the instructions of each loop body by kind, with the registers and stack a thread uses.

    python benchmarks/sass_loops.py forward --head-dim 64 [--block-m 64 --block-n 64 --warps 4 --stages 3 --no-tma]
    python benchmarks/sass_loops.py hopper_forward --head-dim 128 --block-n 128 --stages 2   (the Gluon forward)
    python benchmarks/sass_loops.py hopper_backward --head-dim 128 --block-m 64 --stages 2   (the Gluon dK/dV)
    python benchmarks/sass_loops.py hopper_dq --head-dim 128 --block-n 64 --stages 2          (the Gluon dQ)

Triton ships ptxas and nvdisasm, so this needs no device. The forward, dQ, dK/dV and decode kernels walk their
blocks in three loops (masked edge, unmasked middle, masked edge) or in one whose edge blocks take the
element-wise mask in a branch (kernels/tiles.py): the unmasked loop, or the one loop's short path (the path that
skips the branch), is where a long sequence spends its time, and its instruction count is what a change to the
softmax should lower; the kernel's instructions in all are what a short sequence fetches. A count is a
prediction, not a measurement: the device's timings decide (benchmarks/NOTES.md).
"""
import argparse
import collections
import importlib
import json
import os
import re
import subprocess
import tempfile
from typing import Optional

FLOATS = {"qk_scale", "sm_scale", "softcap", "dropout_p"}
POINTERS = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*bf16", "DO": "*bf16", "DQ": "*bf16", "DK": "*bf16",
            "DV": "*bf16", "Lse": "*fp32", "Delta": "*fp32", "KvLo": "*i32", "KvHi": "*i32", "Holes": "*i8",
            "KeyKeep": "*i8", "DocStart": "*i32", "OPart": "*fp32", "LsePart": "*fp32", "Arrived": "*i32"}
# module, kernel, the streamed operands (tensor descriptors with TMA) and which block size their tiles have
KERNELS = {"forward": ("forward", "attention_fwd_kernel", ("K", "V"), "BLOCK_N"),
           "dkdv": ("backward", "attention_bwd_dkdv_kernel", ("Q", "DO"), "BLOCK_M"),
           "dq": ("backward", "attention_bwd_dq_kernel", ("K", "V"), "BLOCK_N"),
           "decode": ("decode", "attention_decode_kernel", ("K", "V"), "BLOCK_N")}
# A launch marks every pointer and integer divisible by 16 so (16-byte aligned tensors; strides, head counts and
# lengths of usual shapes): the compile here does the same, since the pointer loads' code depends on it.
ALIGNED_INTS = {"H", "HK", "SQ", "SKV"}
DEFAULT_FLAGS = dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_M=64, BLOCK_N=64, CAUSAL=True, HAS_PADDING=False,
                     HAS_WINDOW=False, HAS_HOLES=False, HAS_DOC=False, SOFTCAP=0, DROPOUT=False, DOT_PRECISION="tf32",
                     TMA=True, HEADS_INNER=False, FIXED_MAX=False)


def compile_for_gpu(name: str, num_warps: int = 4, num_stages: int = 3, capability: int = 90, dtype: str = "bf16",
                    **flags):
    """One kernel compiled for an NVIDIA GPU of this compute capability (sm90: Hopper; 80: A100; 86: A10, L4's 89
    alike), its tensors of this element type (the streamed operands as descriptors with TMA), without a device."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, kernel_name, streamed, rows = KERNELS[name]
    kernel = getattr(importlib.import_module(f"hf_sdpa.kernels.{module}"), kernel_name)
    flags = {**DEFAULT_FLAGS, **flags}
    signature, attrs = {}, {}
    for i, p in enumerate(kernel.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
        elif p.name in streamed and flags["TMA"]:
            signature[p.name] = f"tensordesc<{dtype}[1,1,{flags[rows]},{flags['BLOCK_D']}]>"
        else:
            pointer = POINTERS.get(p.name)
            signature[p.name] = (pointer.replace("bf16", dtype) if pointer else
                                 "fp32" if p.name in FLOATS else "i32")
            if p.name in POINTERS or p.name.startswith("stride_") or p.name in ALIGNED_INTS:
                attrs[(i,)] = [["tt.divisibility", 16]]  # what a launch tells Triton about aligned tensors
    source = ASTSource(kernel, signature, constexprs={p.name: flags[p.name] for p in kernel.params if p.is_constexpr},
                       attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=True))


def compile_hopper_forward(head_dim: int = 128, block_n: int = 128, stages: int = 2, causal: bool = True,
                           dtype: str = "bf16", padding: bool = False, window: bool = False, softcap: bool = False,
                           documents: bool = False, dynamic: bool = True, fixed_max: Optional[bool] = None):
    """kernels/hopper_forward.py's Gluon forward compiled for sm90 as ops launches it (dynamic: drawing its tiles,
    as a persistent launch does; otherwise taking fixed turns, as one program per tile does; fixed_max: softcap's
    exponentials against a fixed maximum, by default as ops picks it for a cap up to 63)."""
    from hf_sdpa.kernels.hopper_forward import OUT_COLUMNS, ROWS_PER_GROUP, attention_fwd_hopper_kernel

    rows = {"q_desc": ROWS_PER_GROUP.value, "k_desc": block_n, "v_desc": block_n,
            "o_desc": (ROWS_PER_GROUP.value, min(head_dim, OUT_COLUMNS.value))}
    return _compile_gluon(attention_fwd_hopper_kernel, rows, head_dim, dtype,
                          dict(BLOCK_N=block_n, STAGES=stages, CAUSAL=causal, HAS_PADDING=padding, HAS_WINDOW=window,
                               HAS_HOLES=padding, HAS_DOC=documents, SOFTCAP=softcap,
                               FIXED_MAX=bool(softcap) and dtype == "bf16" if fixed_max is None else fixed_max,
                               DYNAMIC=dynamic))


def compile_hopper_backward(head_dim: int = 128, block_m: int = 64, stages: int = 2, causal: bool = True,
                            dtype: str = "bf16", padding: bool = False, window: bool = False, softcap: bool = False,
                            documents: bool = False, fused_dq: bool = False):
    """kernels/hopper_backward.py's Gluon dK/dV kernel compiled for sm90 as ops launches it."""
    from hf_sdpa.kernels.hopper_backward import attention_bwd_dkdv_hopper_kernel
    from hf_sdpa.kernels.hopper_forward import ROWS_PER_GROUP

    keys = ROWS_PER_GROUP.value
    rows = {"q_desc": block_m, "do_desc": block_m, "k_desc": keys, "v_desc": keys,
            "dq_desc": (block_m, 32, "fp32") if fused_dq else block_m, "lse_desc": (block_m, "fp32"),
            "delta_desc": (block_m, "fp32")}
    return _compile_gluon(attention_bwd_dkdv_hopper_kernel, rows, head_dim, dtype,
                          dict(BLOCK_M=block_m, STAGES=stages, CAUSAL=causal, HAS_PADDING=padding, HAS_WINDOW=window,
                               HAS_HOLES=padding, HAS_DOC=documents, SOFTCAP=softcap, FUSED_DQ=fused_dq))


def compile_hopper_dq(head_dim: int = 128, block_n: int = 64, stages: int = 2, causal: bool = True,
                      dtype: str = "bf16", padding: bool = False, window: bool = False, softcap: bool = False,
                      documents: bool = False):
    """kernels/hopper_dq.py's Gluon dQ kernel compiled for sm90 as ops launches it."""
    from hf_sdpa.kernels.hopper_dq import attention_bwd_dq_hopper_kernel
    from hf_sdpa.kernels.hopper_forward import ROWS_PER_GROUP

    rows = {"q_desc": ROWS_PER_GROUP.value, "do_desc": ROWS_PER_GROUP.value, "k_desc": block_n, "v_desc": block_n}
    return _compile_gluon(attention_bwd_dq_hopper_kernel, rows, head_dim, dtype,
                          dict(BLOCK_N=block_n, STAGES=stages, CAUSAL=causal, HAS_PADDING=padding, HAS_WINDOW=window,
                               HAS_HOLES=padding, HAS_DOC=documents, SOFTCAP=softcap))


# the Gluon kernels' pointer and float arguments; every other one is an int32
GLUON_ARGS = {"DQ": "*{dtype}", "O": "*{dtype}", "DK": "*{dtype}", "DV": "*{dtype}", "Lse": "*fp32", "Delta": "*fp32",
              "KvLo": "*i32", "KvHi": "*i32", "Holes": "*i8", "KeyKeep": "*i8", "DocStart": "*i32", "qk_scale": "fp32",
              "sm_scale": "fp32", "softcap": "fp32", "Tickets": "*i32"}
# The mask tensors that ops passes as Q (never read) where the flag is off, as a launch types them
UNUSED_WITHOUT = {"KvLo": "HAS_PADDING", "KvHi": "HAS_PADDING", "Holes": "HAS_HOLES", "KeyKeep": "HAS_HOLES",
                  "DocStart": "HAS_DOC"}


def _compile_gluon(kernel, rows: dict, head_dim: int, dtype: str, constexprs: dict):
    """A Gluon kernel compiled for sm90: descriptors (rows x head_dim tiles, per argument name) with the layouts that
    ops builds, four warps for the first consumer group (the partitions add the rest). A padding mask always comes
    with its per-key form (ops.Pattern), read in batch rows whose keys have gaps: HAS_HOLES follows HAS_PADDING."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    from hf_sdpa.kernels.hopper_forward import shared_layout

    name = {"bf16": "bfloat16", "fp16": "float16"}[dtype]
    constexprs = dict(constexprs, HEAD_DIM=head_dim)
    signature, attrs = {}, {}
    for i, p in enumerate(kernel.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
        elif isinstance(rows.get(p.name), tuple) and rows[p.name][-1] == "fp32":  # its block shape, then "fp32"
            *block, dt = rows[p.name]
            layout = shared_layout(tuple(block), "float32")
            signature[p.name] = f"tensordesc<{dt}[{','.join(map(str, block))}],{layout!r}>"
        elif p.name in rows:  # rows, or (rows, columns)
            block = (1, 1) + (rows[p.name] if isinstance(rows[p.name], tuple) else (rows[p.name], head_dim))
            signature[p.name] = f"tensordesc<{dtype}[{','.join(map(str, block))}],{shared_layout(block, name)!r}>"
        else:
            unused = p.name in UNUSED_WITHOUT and not constexprs.get(UNUSED_WITHOUT[p.name], True)
            signature[p.name] = "*{dtype}" if unused else GLUON_ARGS.get(p.name, "i32")
            signature[p.name] = signature[p.name].format(dtype=dtype)
            if signature[p.name].startswith("*") or p.name.startswith("stride_"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = GluonASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=1))


def _tool(name: str) -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _disassemble(compiled) -> tuple:
    """(SASS, resource usage) of a compiled kernel, by the tools Triton ships."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        sass = subprocess.run([_tool("nvdisasm"), "-c", cubin], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", cubin], capture_output=True,
                               text=True, check=True).stdout
    return sass, usage


def _loop_bodies(sass: str) -> list:
    """The instruction lines of each loop body (a backward branch's span), in the order the loops close."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^\s*\.?(L_x_\d+):", line))}
    branch = re.compile(r"(@!?P\d\s+)?\bBRA\b[^;]*?(L_x_\d+)")
    bodies = []
    for i, line in enumerate(lines):
        m = branch.search(line)
        start = labels.get(m.group(2), i) if m else i
        if start >= i:
            continue
        body = [b for b in lines[start:i + 1] if re.search(r"/\*[0-9a-f]{4,}\*/", b)]
        # A loop closes with a branch back, mostly a predicated one. An unpredicated one closes a loop whose exit
        # test sits inside it (ptxas rotates some loops so) only where nothing between holds another unpredicated
        # jump, an exit or a partition's entry: else it returns from an out-of-line barrier wait or joins code.
        if not m.group(1) and any(re.search(r"\s(EXIT|USETMAXREG|BRX)\b", b) or
                                  (branch.search(b) and not branch.search(b).group(1)) for b in body[:-1]):
            continue
        if len(body) > 8:  # not a barrier's wait-and-retry spin
            bodies.append(body)
    return bodies


def _forward_branches(body: list, sass: str) -> list:
    """(first, end, predicated) of each forward branch that lands within the body: it skips body[first:end]."""
    starts = {}  # label -> the address of the first instruction after it
    pending = []
    for line in sass.splitlines():
        if m := re.match(r"^\s*\.?(L_x_\d+):", line):
            pending.append(m.group(1))
        elif (a := re.search(r"/\*([0-9a-f]{4,})\*/", line)) and pending:
            starts.update((label, a.group(1)) for label in pending)
            pending = []
    where = {re.search(r"/\*([0-9a-f]{4,})\*/", b).group(1): i for i, b in enumerate(body)}
    branches = []
    for i, line in enumerate(body):
        m = re.search(r"(@!?P\d\s+)?\bBRA\b[^;]*?(L_x_\d+)", line)
        j = where.get(starts.get(m.group(2))) if m else None
        if j is not None and j > i + 1:
            branches.append((i + 1, j, bool(m.group(1))))
    return branches


def _short_path(body: list, sass: str) -> list:
    """The body's instructions on the path that takes its longest forward branch within the body: in forward.py,
    dQ, dK/dV and decode the branch around the element-wise mask, so the path of a block in the middle."""
    first, end, _ = max(_forward_branches(body, sass), key=lambda b: b[1] - b[0], default=(0, 0, False))
    return body[:first] + body[end:]


def _block_path(body: list, sass: str) -> list:
    """A Gluon key loop's instructions on an unmasked block's path. Its longest forward branch skips the softmax
    (the branch that is always taken, hopper_forward.py), so the body less: what unpredicated jumps skip (that
    branch's other side), the element-wise mask (the longest predicated branch around no MUFU instruction) and a
    tile's epilogue (a branch around the output's stores to shared memory, run once a tile)."""
    branches = _forward_branches(body, sass)
    unmasked = [b for b in branches if b[2] and not any("MUFU" in line for line in body[b[0]:b[1]])]
    mask = max(unmasked, key=lambda b: b[1] - b[0], default=None)
    skipped = set()
    for first, end, predicated in branches:
        if not predicated or (first, end, predicated) == mask or any("STSM" in line for line in body[first:end]):
            skipped.update(range(first, end))
    return [line for i, line in enumerate(body) if i not in skipped]


def _groups_before_wait(path: list) -> int:
    """The warpgroup MMA groups (each closed by a gsb0 commit) issued before the path's first MMA wait: 2 where a
    key loop's two first matmuls run together, 1 where ptxas waits for the first before it issues the second."""
    groups = 0
    for line in path:
        if "WARPGROUP.DEPBAR" in line:
            break
        groups += "HGMMA" in line and "gsb0" in line
    return groups


def loop_report(compiled, short_paths: bool = False, block_paths: bool = False) -> dict:
    """Registers and stack per thread, the kernel's instructions in all, and per loop body (innermost first) the
    count of each instruction kind, and with short_paths (forward.py, dQ, dK/dV, decode) those on its short path
    (_short_path: a block that skips the mask) too, with block_paths (the Gluon kernels' key loops) those on an
    unmasked block's path (_block_path) and the MMA groups it issues before its first wait."""
    sass, usage = _disassemble(compiled)
    resources = {k.lower(): int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage)}
    loops = []
    opcode = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")

    def kinds(lines):
        return dict(collections.Counter(m.group(1) for line in lines if (m := opcode.search(line))).most_common())

    bodies = _loop_bodies(sass)
    mma_loops = [set(body) for body in bodies if any("HGMMA" in line for line in body)]
    for body in bodies:
        every = kinds(body)
        loops.append(dict(instructions=sum(every.values()), kinds=every))
        if short_paths:
            short = kinds(_short_path(body, sass))
            loops[-1].update(short_path=sum(short.values()), short_kinds=short)
        # a key loop: it issues warpgroup MMAs, and holds no other loop that does (as a tile loop holds its key loop)
        lines = set(body)
        if block_paths and "HGMMA" in every and not any(inner < lines for inner in mma_loops):
            path = _block_path(body, sass)
            block = kinds(path)
            loops[-1].update(block_path=sum(block.values()), block_kinds=block,
                             groups_before_wait=_groups_before_wait(path))
    loops.sort(key=lambda lp: lp["instructions"])
    total = sum(1 for line in sass.splitlines() if opcode.search(line))
    return dict(resources, instructions=total, loops=loops)


def exponentials_between_waits(compiled) -> list:
    """Per loop that issues warpgroup MMAs, the exponentials (MUFU.EX2) between its wait for all but one MMA group
    and its wait for all of them: the softmax that runs while the last group (the Gluon forward's P V) is in
    flight. Zero where ptxas put the two waits together."""
    counts = []
    for body in _loop_bodies(_disassemble(compiled)[0]):
        if not any("HGMMA" in line for line in body):
            continue
        text = "\n".join(body)
        one = text.find("DEPBAR.LE gsb0, 0x1")
        every = text.find("DEPBAR.LE gsb0, 0x0", one) if one >= 0 else -1
        counts.append(text.count("MUFU.EX2", one, every) if every >= 0 else 0)
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kernel", choices=sorted(KERNELS) + ["hopper_forward", "hopper_backward", "hopper_dq"])
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-m", type=int, default=64)
    parser.add_argument("--block-n", type=int, default=64)
    parser.add_argument("--warps", type=int, default=4)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--no-tma", action="store_true")
    parser.add_argument("--full", action="store_true", help="bidirectional (default: causal)")
    parser.add_argument("--masks", action="store_true",
                        help="with padding ranges, a window and softcap (hopper_*: and packed documents)")
    parser.add_argument("--softcap", action="store_true", help="with softcap alone (hardware tanh; the Gluon "
                        "forward with its fixed maximum, as for bfloat16)")
    parser.add_argument("--fused-dq", action="store_true", help="hopper_backward: the variant that also writes dQ")
    parser.add_argument("--fixed-turns", action="store_true",
                        help="hopper_forward: tiles in fixed turns (one program per tile) instead of drawn")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    softcap = args.masks or args.softcap
    if args.kernel == "hopper_forward":  # 128 rows in two consumer groups, a loader warp
        compiled = compile_hopper_forward(args.head_dim, args.block_n, args.stages, causal=not args.full,
                                          padding=args.masks, window=args.masks, softcap=softcap,
                                          documents=args.masks, dynamic=not args.fixed_turns)
    elif args.kernel == "hopper_dq":  # 128 rows in two consumer groups, a loader warp
        compiled = compile_hopper_dq(args.head_dim, args.block_n, args.stages, causal=not args.full,
                                     padding=args.masks, window=args.masks, softcap=softcap, documents=args.masks)
    elif args.kernel == "hopper_backward":  # 128 keys in two consumer groups, a loader warp
        compiled = compile_hopper_backward(args.head_dim, args.block_m, args.stages, causal=not args.full,
                                           padding=args.masks, window=args.masks, softcap=softcap,
                                           documents=args.masks, fused_dq=args.fused_dq)
    else:
        from hf_sdpa.kernels.tiles import SOFTCAP_HW_TANH

        masks = dict(HAS_PADDING=args.masks, HAS_WINDOW=args.masks, SOFTCAP=SOFTCAP_HW_TANH.value if softcap else 0)
        compiled = compile_for_gpu(args.kernel, args.warps, args.stages, HEAD_DIM=args.head_dim,
                                   BLOCK_D=args.head_dim, BLOCK_M=args.block_m, BLOCK_N=args.block_n,
                                   CAUSAL=not args.full, TMA=not args.no_tma, **masks)
    report = dict(loop_report(compiled, args.kernel in KERNELS, args.kernel not in KERNELS),
                  exponentials_between_waits=exponentials_between_waits(compiled))
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{args.kernel} d{args.head_dim} {args.block_m}x{args.block_n} warps {args.warps} stages {args.stages} "
          f"TMA {not args.no_tma}: {report['reg']} registers, stack {report['stack']} bytes, "
          f"{report['instructions']} instructions in all")
    for lp in report["loops"]:
        top = ", ".join(f"{k} {n}" for k, n in list(lp["kinds"].items())[:12])
        spills = f"LDL {lp['kinds'].get('LDL', 0)}, STL {lp['kinds'].get('STL', 0)}"
        short = f", {lp['short_path']} on its short path" if lp.get("short_path", lp["instructions"]) < lp[
            "instructions"] else ""
        if "block_path" in lp:
            mufu = lp["block_kinds"].get("MUFU", 0)
            short = (f", {lp['block_path']} ({mufu} MUFU, {lp['groups_before_wait']} MMA groups before a wait) on an "
                     "unmasked block's path")
        print(f"  loop of {lp['instructions']} instructions{short} ({spills}): {top}")


if __name__ == "__main__":
    main()
