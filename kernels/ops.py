"""Launchers for the Triton kernels: arguments, launch configuration, scratch buffers (library.py wraps them for
autograd and torch.compile)."""
import functools
import operator
import os
from typing import NamedTuple, Optional

import torch
from triton.runtime.errors import OutOfResources

from ..errors import AttentionRefused
from .backward import attention_bwd_delta_kernel, attention_bwd_dkdv_kernel, attention_bwd_dq_kernel
from .autotune import TUNER, bucket, enabled as autotune_enabled
from .config import (LaunchConfig, candidates, cdiv, decode_config, decode_splits, dkdv_config, dkdv_heads_inner,
                     dq_config, forward_config, head_block, interpreting, key_reach, smaller)
from .decode import attention_decode_kernel
from .forward import attention_fwd_kernel
from .launch import Launcher, TensorDescriptor, current_stream, unchecked_descriptor, unchecked_gluon_descriptor
from .tiles import LOG2E, SOFTCAP_EXACT, SOFTCAP_HW_TANH, SOFTCAP_NONE, dropout_mask_kernel

try:  # Gluon's Hopper language (Triton 3.6 and later)
    from .hopper_backward import attention_bwd_dkdv_hopper_kernel, keys_per_program
    from .hopper_dq import attention_bwd_dq_hopper_kernel
    from .hopper_forward import OUT_COLUMNS, ROWS_PER_GROUP, attention_fwd_hopper_kernel, shared_layout
except ImportError:
    attention_fwd_hopper_kernel = attention_bwd_dkdv_hopper_kernel = attention_bwd_dq_hopper_kernel = None
    keys_per_program = None


# Multiplies and adds fused into FFMAs, as the kernels were tuned (the exponent's FFMA, benchmarks/NOTES.md 8):
# asked for by name, since Triton 3.9 warns that its default turns to unfused in 3.10.
FUSED = dict(enable_fp_fusion=True)

FORWARD, DECODE, DQ, DKDV, DELTA = map(Launcher, (attention_fwd_kernel, attention_decode_kernel,
                                                  attention_bwd_dq_kernel, attention_bwd_dkdv_kernel,
                                                  attention_bwd_delta_kernel))
HOPPER_FWD, HOPPER_DKDV, HOPPER_DQ = (Launcher(k) if k is not None else None for k in (
    attention_fwd_hopper_kernel, attention_bwd_dkdv_hopper_kernel, attention_bwd_dq_hopper_kernel))

# Called as hook(kernel_name, info) for each launch (blocks, warps, stages, TMA); hf_sdpa.trace and the doctor
# add one to see which kernel ran and how.
LAUNCH_HOOKS = []


def _announce(kernel: str, cfg=None, **info):
    if not LAUNCH_HOOKS:
        return
    if cfg is not None:
        info = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, warps=cfg.num_warps, stages=cfg.num_stages,
                    **_registers(cfg), **info)
    for hook in LAUNCH_HOOKS:
        hook(kernel, info)


class Pattern(NamedTuple):
    """Which (row, key) pairs attend, as small per-batch tensors on the inputs' device, and the score transform.
    A tuple, so that torch.library ops and autograd take it flat (*pattern) and Pattern(*flat) rebuilds it.

    kv_lo/kv_hi (B,) int32: the keys [lo, hi) a padding mask leaves (None without a mask: all keys);
    key_keep (B, SKV) int8 and holes (B,) int8: the padding mask itself, for masks with gaps;
    documents (B, 2, SQ) int32, contiguous: per row its document's first index ([:, 0]) and one past its last
    ([:, 1]) (packed sequences; the kernels take it as DocStart and find the ends SQ further on);
    longest_document: the longest one's length where attention() read it (else None), for the configuration;
    scale: positive (attention() moves a negative or zero one into q): the kernels scale a row's maximum after
    taking it and multiply masked scores of -inf by it.
    """
    kv_lo: Optional[torch.Tensor]
    kv_hi: Optional[torch.Tensor]
    key_keep: Optional[torch.Tensor]
    holes: Optional[torch.Tensor]
    documents: Optional[torch.Tensor]
    causal: bool
    window: Optional[int]
    softcap: Optional[float]
    scale: float
    dropout_p: float
    seed: int
    longest_document: Optional[int]


def _softcap_mode(p: Pattern, q: torch.Tensor) -> int:
    """The hardware tanh for 16-bit inputs on NVIDIA GPUs, where its error is below the dtype's resolution."""
    if p.softcap is None:
        return SOFTCAP_NONE.value
    hardware = q.is_cuda and torch.version.cuda is not None and not interpreting() and q.dtype != torch.float32
    return (SOFTCAP_HW_TANH if hardware else SOFTCAP_EXACT).value


def _pattern_args(p: Pattern, q: torch.Tensor):
    """Tensor arguments (unused ones point at q and are never read), scalars and flags shared by all passes."""
    kv_lo, kv_hi, holes, key_keep, documents = p.kv_lo, p.kv_hi, p.holes, p.key_keep, p.documents
    # written out: a generator costs 2 us a call
    tensors = (q if kv_lo is None else kv_lo, q if kv_hi is None else kv_hi, q if holes is None else holes,
               q if key_keep is None else key_keep, q if documents is None else documents)
    scalars = (p.scale * LOG2E.value, p.scale, p.softcap or 1.0, p.window or 0, p.dropout_p, p.seed)
    fp32_exact = q.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    flags = dict(CAUSAL=p.causal, HAS_PADDING=p.kv_lo is not None, HAS_WINDOW=p.window is not None,
                 HAS_HOLES=p.key_keep is not None, HAS_DOC=p.documents is not None, SOFTCAP=_softcap_mode(p, q),
                 DROPOUT=p.dropout_p > 0, DOT_PRECISION="ieee" if fp32_exact else "tf32")
    strides = (0 if p.key_keep is None else p.key_keep.stride(0), 0 if p.documents is None else p.documents.stride(0))
    return tensors, scalars, strides, flags


def _strides(*tensors) -> list:
    """The batch, head and row strides of each (B, heads, seq, D) tensor, one after another, as the kernels take
    them (the head dim's stride is 1)."""
    flat = []
    for t in tensors:
        flat += t.stride()[:3]
    return flat


@functools.lru_cache(maxsize=None)
def has_tma(device: torch.device) -> bool:
    """Hopper or newer NVIDIA GPU with a Triton that has tensor descriptors: the config table's TMA rows apply."""
    return (TensorDescriptor is not None and not interpreting() and device.type == "cuda"
            and torch.version.cuda is not None and torch.cuda.get_device_capability(device)[0] >= 9)


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


_COUNTERS = {}  # (device index, stream, use) -> int32 counters that every launch leaves at zero


def counters(device: torch.device, n: int, use: str) -> torch.Tensor:
    """At least n int32 zeros for a kernel that leaves them zeros (its last program resets the counters it used):
    kept per device, stream and use, so that a call needs neither a memset kernel nor torch.zeros' host time. On
    the CPU (the interpreter), and while a CUDA graph is being captured, fresh zeros: a captured graph gets counters
    of its own (and a memset in it), never shared with eager calls or another graph's replays."""
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return torch.zeros(n, dtype=torch.int32, device=device)
    index = torch.cuda.current_device() if device.index is None else device.index
    key = (index, current_stream(index), use)
    found = _COUNTERS.get(key)
    if found is None or found.numel() < n:
        found = _COUNTERS[key] = torch.zeros(n, dtype=torch.int32, device=device)
    return found


def _tma_strides(t: torch.Tensor):
    """t's (B, heads, seq, D) strides as TMA takes them, or None where TMA cannot address t (it needs a 16-byte
    aligned base and strides)."""
    B, H, S, D = t.shape
    sb, sh, ss, sd = t.stride()
    if S == 1:  # a dimension of size 1 may carry any stride: give it the packed one
        ss = D * sd
    if H == 1:
        sh = S * ss
    if B == 1:
        sb = H * sh
    align = 16 // t.element_size()  # elements per 16 bytes
    if sd != 1 or t.data_ptr() % 16 or min(sb, sh, ss) <= 0 or sb % align or sh % align or ss % align:
        return None
    return [sb, sh, ss, sd]


def _descriptor(t: torch.Tensor, rows: int, block_d: int):
    """A descriptor over t (B, heads, seq, D) reading (rows, block_d) tiles, or None where TMA cannot address t."""
    strides = _tma_strides(t)
    return None if strides is None else unchecked_descriptor(t, list(t.shape), strides, [1, 1, rows, block_d])


def _streamed(a: torch.Tensor, b: torch.Tensor, cfg: LaunchConfig, rows: int, block_d: int):
    """(a_arg, b_arg, TMA): the two streamed operands as descriptors when cfg asks for TMA and their strides allow
    it, else as they are."""
    if cfg.tma:
        a_desc, b_desc = _descriptor(a, rows, block_d), _descriptor(b, rows, block_d)
        if a_desc is not None and b_desc is not None:
            return a_desc, b_desc, True
    return a, b, False


def _registers(cfg: LaunchConfig) -> dict:
    """The launch option that caps the registers per thread, where the configuration sets a cap."""
    return {} if cfg.max_registers is None else {"maxnreg": cfg.max_registers}


def _choose(pass_name, default, q, k, flags, launch):
    """The table's configuration, or the autotuner's when HF_SDPA_AUTOTUNE=1 (see autotune.py)."""
    if not autotune_enabled():  # the common case pays for no key
        return default
    block_d = head_block(q.shape[3])
    key = "|".join([pass_name, str(q.dtype).removeprefix("torch."), f"d{block_d}", f"q{bucket(q.shape[2])}",
                    f"kv{bucket(k.shape[2])}", f"group{q.shape[1] // k.shape[1]}"]
                   + [f"{name}={value}" for name, value in sorted(flags.items())])
    return TUNER.choose(key, default, candidates(pass_name, block_d, q.dtype == torch.float32, has_tma(q.device)),
                        launch, q.device)


# (kernel, device, dtype, head size, flags, the table's configuration) -> the smaller configuration that this GPU's
# shared memory holds, where the table's did not fit (found once per case by _fitting)
_FITTED = {}


def _case(kernel: str, q, flags: dict, cfg: LaunchConfig) -> tuple:
    return kernel, q.device, q.dtype, q.shape[3], tuple(flags.items()), cfg


def _fitting(kernel: str, cfg: LaunchConfig, launch, q, flags: dict, keep_block_m: bool = False):
    """launch(cfg), or where the GPU has too little shared memory for cfg (Triton refuses to load the kernel before
    anything runs), launch with the next smaller configuration (config.smaller) until one fits; the one that fits
    is kept for the case, so later calls go straight to it. Returns the configuration that ran and launch's result.
    Where even the smallest does not fit (fp32 at head size 256 on a T4's 64 KB), the input is refused."""
    table = cfg
    if _FITTED:  # the common case (the table fits) builds no key
        cfg = _FITTED.get(_case(kernel, q, flags, table), cfg)
    while True:
        try:
            return cfg, launch(cfg)
        except OutOfResources as exc:
            fallback = smaller(cfg, keep_block_m)
            if fallback is None:
                raise AttentionRefused(
                    f"triton_attention: this GPU's {exc.name} (at most {exc.limit} per thread block, "
                    f"{exc.required} asked) cannot hold the {kernel} pass's smallest tiles for head size "
                    f"{q.shape[3]} in {q.dtype}. Use sdpa_efficient "
                    "or sdpa_math for this input, or fp16/bf16, whose tiles are half the size.") from exc
            _FITTED[_case(kernel, q, flags, table)] = cfg = fallback


def _on_tensor_device(run):
    """Runs `run` with the first tensor's GPU current: Triton launches on the current device, so a model split
    over GPUs (device_map="auto") would otherwise launch cuda:1's layers on cuda:0."""
    @functools.wraps(run)
    def on_device(t, *args, **kwargs):
        if t.is_cuda and t.device.index != torch.cuda.current_device():
            with torch.cuda.device(t.device):
                return run(t, *args, **kwargs)
        return run(t, *args, **kwargs)
    return on_device


# The Gluon forward (hopper_forward.py) on Hopper, for what its docstring lists (HF_SDPA_HOPPER_FORWARD=0 turns it
# off). Per head size, its key block and ring depth: 128 and 256, where it measured 6-21% faster than forward.py
# (benchmarks/hopper_ab.py, NOTES.md entry 14; at 256 13-40% since its output leaves through TMA, entry 32); at 64
# forward.py stays, 4-8% faster (1-10% with entry 30's loop, entry 31). HOPPER_FORWARD_MIN_KEYS: the key length from
# which it pays per head size; below, forward.py's lighter programs are left (head size 128: 22% faster than
# forward.py at 512 keys with MHA causal once a tile's last P V runs with the next tile's first block, NOTES.md
# entry 30, level before; shorter keys not measured; head size 256 wins at 512 too).
HOPPER_FORWARD = os.environ.get("HF_SDPA_HOPPER_FORWARD", "1") == "1"
HOPPER_FORWARD_TILES = {128: (128, 2), 256: (64, 2)}
HOPPER_FORWARD_MIN_KEYS = {128: 512}
# Persistent: one program per multiprocessor walks the tiles (hopper_forward.py), each drawing its next tile from a
# counter when its loader is done with the last one (hopper_forward._draw_tile); HF_SDPA_HOPPER_PERSISTENT=0 launches
# one program per tile, HF_SDPA_HOPPER_DYNAMIC=0 hands tile t to program t mod programs (fixed turns), both for the
# A/B of benchmarks/hopper_ab.py. Measured on an H100 (NOTES.md entries 23 and 25): drawn, the forward ran 1-18%
# faster than one program per tile at every case but one (d256 MHA 8k without the mask, 1% slower) and about as
# fast as fixed turns under GQA up to 4096 keys (within 2%, one run 5% slower); fixed turns had lost 5-27% to one
# program per tile with MHA and 3-7% with long causal tiles, where they balance the programs' work worse than the
# hardware's scheduler.
HOPPER_PERSISTENT = os.environ.get("HF_SDPA_HOPPER_PERSISTENT", "1") == "1"
HOPPER_DYNAMIC = os.environ.get("HF_SDPA_HOPPER_DYNAMIC", "1") == "1"
SECTION_BYTES = 16 << 20  # K and V of a section's heads: about a third of Hopper's 50 MB L2 cache


def section_heads(k, group: int, heads: int) -> int:
    """Query heads per section of the Gluon kernels' tile order (hopper_forward._tile): under GQA as many groups as
    have their K and V (k's length and head size, twice) within SECTION_BYTES, at least one group, at most all
    heads. MHA keeps one head per section, each head's row blocks one after another, the order of one program per
    (row block, head) before sections: with sections MHA measured no better, and up to 9% slower forward+backward in
    a bench on another machine (benchmarks/NOTES.md entry 23)."""
    if group == 1:
        return 1
    kv_bytes = 2 * k.shape[2] * k.shape[3] * k.element_size()
    return min(heads, max(1, SECTION_BYTES // kv_bytes) * group)


def hopper_forward_pays(head_dim: int, kv_len: int) -> bool:
    """Whether the Gluon forward measured faster than forward.py at this head size and key length."""
    return head_dim in HOPPER_FORWARD_TILES and kv_len >= HOPPER_FORWARD_MIN_KEYS.get(head_dim, 0)


def hopper_forward_fits(q, k, p: Pattern) -> bool:
    """Whether hopper_forward.py's scope holds the input (its docstring), the device aside."""
    return (q.dtype in (torch.float16, torch.bfloat16) and q.shape[3] in HOPPER_FORWARD_TILES and q.shape[2] >= 1
            and k.shape[2] >= 1 and p.dropout_p == 0 and p.scale > 0)


@functools.lru_cache(maxsize=None)
def _is_hopper(device: torch.device) -> bool:
    """sm90: the warpgroup MMA that the Gluon forward issues exists on Hopper only (not on Blackwell)."""
    return has_tma(device) and torch.cuda.get_device_capability(device) == (9, 0)


def _gluon_descriptors(tensors: tuple, rows: tuple, columns: tuple = None, kept: Optional[dict] = None):
    """Gluon descriptors reading (rows, columns) tiles of each (B, heads, seq, D) tensor (columns D unless given), or
    None where a tensor's strides keep TMA from addressing it. kept: descriptors built before for the same tensors
    and tiles (by the tensor's identity: a kept descriptor holds its tensor, so no other takes that identity), which
    it takes and adds to. A training call's three Gluon kernels read Q, K, V and dO in the same tiles five times of
    fourteen, each descriptor some 3 us of host time on the CI machine's CPU (benchmarks/NOTES.md entry 49)."""
    columns = columns or [t.shape[3] for t in tensors]
    dtype = {torch.float16: "float16", torch.bfloat16: "bfloat16"}[tensors[0].dtype]
    kept = {} if kept is None else kept
    descriptors = []
    for t, n, d in zip(tensors, rows, columns):
        desc = kept.get((id(t), n, d))
        if desc is None:
            strides = _tma_strides(t)
            if strides is None:
                return None
            desc = kept[id(t), n, d] = unchecked_gluon_descriptor(t, list(t.shape), strides, [1, 1, n, d],
                                                                  shared_layout((1, 1, n, d), dtype))
        descriptors.append(desc)
    return descriptors


def fixed_max_fits(softcap: Optional[float], dtype: torch.dtype) -> bool:
    """Whether the forward kernels may take softcap's exponentials against a fixed maximum (FIXED_MAX) instead of
    each row's running one. A capped score lies in [-C, C], C = softcap * log2(e), so against M = max(0, C - 64)
    every exponential lies in [2**(64 - 2C), 2**64]: normal in float32 and bfloat16 while C <= 92 (softcap <= 63.7;
    Gemma 2 caps at 50), and row sums and P V far from overflow. float16's P would overflow above 2**16: it keeps the
    running maximum. Without one the softmax takes no row maxima and the accumulator no rescaling each block: with
    softcap the Gluon forward's softmax, not the tensor cores, sets the pace (benchmarks/NOTES.md entry 37).
    A row's largest P is then no longer exactly 1: rounded to bfloat16 for P V it would scale O by up to 2**-9 that
    the row sums do not see, an error the backward's Delta = rowsum(dO * O) carries into dQ and dK (3x the math
    path's on saturated scores, entry 42). So in bfloat16 the kernels truncate P to bfloat16 before the row sums
    take it (one AND an element): O stays an exact convex combination of the V rows P V weighs."""
    return (softcap is not None and dtype in (torch.bfloat16, torch.float32)
            and softcap * LOG2E.value <= 92.0)


def _run_forward_hopper(q, k, v, p: Pattern, out, lse, kept: Optional[dict]):
    """The Gluon forward, or False where a tensor's strides keep TMA from addressing it. kept: _gluon_descriptors',
    which gains those of q, k and v (not out's: the autograd node that keeps them is out's own)."""
    B, H, SQ, D = q.shape
    SKV = k.shape[2]
    block_n, stages = HOPPER_FORWARD_TILES[D]
    rows = ROWS_PER_GROUP.value
    inputs = _gluon_descriptors((q, k, v), (rows, block_n, block_n), kept=kept)
    output = _gluon_descriptors((out,), (rows,), (min(D, OUT_COLUMNS.value),))  # O in halves at head size 256
    if inputs is None or output is None:
        return False
    descriptors = inputs + output
    (kv_lo, kv_hi, holes, key_keep, documents), (qk_scale, sm_scale, softcap, window, _, _), (s_keep, s_doc), flags = \
        _pattern_args(p, q)
    group = H // k.shape[1]
    tiles = cdiv(SQ, 2 * rows) * B * H
    programs = min(tiles, _multiprocessors(q.device)) if HOPPER_PERSISTENT else tiles
    dynamic = HOPPER_DYNAMIC and programs < tiles
    # the tickets (hopper_forward._draw_tile): a counter, the count of loaders done, two slots per program
    tickets = counters(q.device, 2 + 2 * programs, "tickets") if dynamic else lse  # lse: unread without DYNAMIC
    HOPPER_FWD(
        (programs, 1, 1), *descriptors, lse, kv_lo, kv_hi, holes, key_keep, documents, qk_scale, sm_scale,
        softcap, window, s_keep, s_doc, H, group, SQ, SKV, B * H, section_heads(k, group, B * H),
        tickets, HEAD_DIM=D, BLOCK_N=block_n, STAGES=stages, CAUSAL=flags["CAUSAL"],
        HAS_PADDING=flags["HAS_PADDING"], HAS_WINDOW=flags["HAS_WINDOW"], HAS_HOLES=flags["HAS_HOLES"],
        HAS_DOC=flags["HAS_DOC"], SOFTCAP=flags["SOFTCAP"] != SOFTCAP_NONE.value,
        FIXED_MAX=fixed_max_fits(p.softcap, q.dtype), DYNAMIC=dynamic, num_warps=4)
    _announce("attention_fwd_hopper_kernel", BLOCK_M=2 * rows, BLOCK_N=block_n, warps=9,
              stages=stages, TMA=True, persistent=programs < tiles, dynamic=dynamic)
    return True


# The Gluon dK/dV kernel (hopper_backward.py) on Hopper, for what its docstring lists (HF_SDPA_HOPPER_BACKWARD=0
# turns it off). Per head size it compiles for: query block and ring depth. HOPPER_BACKWARD_MIN_KEYS: where it
# measured faster than backward.py's, per head size: from 2048 keys at head sizes 64 and 128, softcap included,
# once the loader stages LSE and Delta (the backward 4-17% faster; at 512 keys head size 64 28% slower;
# benchmarks/NOTES.md entries 15 and 17); at head size 256 at every length measured, 512 keys included, masks too
# (its dK/dV pass 1.7-2.9x faster, the backward 1.25-1.7x; entry 18). Without the causal mask head size 128 from
# 512 keys (HOPPER_BACKWARD_MIN_KEYS_BIDIRECTIONAL): forward+backward 15-16% faster at 512 keys, batch 32 (entry 43),
# 18-21% at 1024 keys, batch 16, and 10-11% at 512 keys, batch 16 (entry 45); at batch 8 of 512 keys the call is
# bound by the host, and there the Gluon backward (its kernels shorter) measured 17-29% slower (entry 44): hence
# from HOPPER_BACKWARD_BIDIRECTIONAL_MIN_ROWS query rows (batch x heads x queries) only.
HOPPER_BACKWARD = os.environ.get("HF_SDPA_HOPPER_BACKWARD", "1") == "1"
HOPPER_BACKWARD_TILES = {64: (64, 2), 128: (64, 2), 256: (64, 2)}
HOPPER_BACKWARD_MIN_KEYS = {64: 2048, 128: 2048, 256: 0}
HOPPER_BACKWARD_MIN_KEYS_BIDIRECTIONAL = {128: 512}
HOPPER_BACKWARD_BIDIRECTIONAL_MIN_ROWS = 16 * 32 * 512
# Where it pays, the Gluon kernel writes dQ as well (added up in float32 by TMA reductions), in place of
# backward.py's dQ kernel, which computes S and dP once more (HF_SDPA_HOPPER_FUSED_DQ=0 turns it off): from 8192
# queries, dense or causal, the backward 2-15% faster; at 4096 and fewer, or with a mask that skips most of the
# work, the extra passes (zeroing, Delta, the conversion) cost more than the matmuls saved (NOTES.md entry 17). At
# head size 128 the Gluon dQ kernel (below) takes its place: forward+backward faster or level (entry 19).
HOPPER_FUSED_DQ = os.environ.get("HF_SDPA_HOPPER_FUSED_DQ", "1") == "1"
HOPPER_FUSED_DQ_MIN_QUERIES = 8192
HOPPER_FUSED_DQ_HEAD_SIZES = (64, 128)  # above, the kernel's two groups split dK and dV of the same keys


# The Gluon dQ kernel (hopper_dq.py) in place of backward.py's, and of the dK/dV kernel writing dQ, wherever the
# Gluon dK/dV kernel runs at a head size listed here (HF_SDPA_HOPPER_DQ=0 turns it off): key block and ring depth.
# Measured on an H200 (benchmarks/NOTES.md entry 19): at head size 128 its dQ pass 22-26% faster than backward.py's,
# the backward 3-14% faster, level with or faster than the fused dQ at 8k-16k; at head size 64 slower at 2k (0.47
# against 0.41 ms) and level at 8k, so there backward.py's dQ kernel and, from 8k queries, the fused one stay. At
# head size 256 with 32-key blocks (64 would need 256 KB of shared memory): the backward up to 5% faster with
# padding, softcap or full attention at 8k, within 3% either way elsewhere (entry 20).
HOPPER_GLUON_DQ = os.environ.get("HF_SDPA_HOPPER_DQ", "1") == "1"
HOPPER_DQ_TILES = {128: (128, 2), 256: (32, 2)}
# With padding, softcap or documents, where HOPPER_DQ_TILES' blocks spill (sass_loops.py: 15-108 LDL per loop at
# 128 keys, head size 128; none at 64).
HOPPER_DQ_MASKED_TILES = {128: (64, 2)}


def hopper_backward_fits(q, k, p: Pattern) -> bool:
    """Whether hopper_backward.py's scope holds the input (its docstring), the device aside."""
    return (q.dtype in (torch.float16, torch.bfloat16) and q.shape[3] in HOPPER_BACKWARD_TILES and q.shape[2] >= 1
            and k.shape[2] >= 1 and p.dropout_p == 0)


def hopper_backward_pays(head_dim: int, kv_len: int, p: Pattern, query_rows: int) -> bool:
    """Whether the Gluon dK/dV kernel measured faster than backward.py's for this head size, key length, pattern and
    number of query rows (batch x heads x queries)."""
    least = HOPPER_BACKWARD_MIN_KEYS.get(head_dim)
    if not p.causal and least is not None and query_rows >= HOPPER_BACKWARD_BIDIRECTIONAL_MIN_ROWS:
        least = HOPPER_BACKWARD_MIN_KEYS_BIDIRECTIONAL.get(head_dim, least)
    return least is not None and kv_len >= least


def hopper_fused_dq_pays(q_len: int, p: Pattern) -> bool:
    """Whether the Gluon kernel writing dQ too measured faster than it and the dQ kernel for this pattern."""
    return (q_len >= HOPPER_FUSED_DQ_MIN_QUERIES and p.kv_lo is None and p.window is None and p.documents is None
            and p.softcap is None)


def _dq_descriptor(dq_sum, block_m: int):
    """A Gluon descriptor adding (block_m, 32) float32 tiles to dq_sum (B, H, SQ, D) seen as (B * H * SQ, D)."""
    if dq_sum is None:
        return None
    rows = dq_sum.view(-1, dq_sum.shape[3])
    return unchecked_gluon_descriptor(rows, list(rows.shape), list(rows.stride()), [block_m, 32],
                                      shared_layout((block_m, 32), "float32"))


def _row_descriptor(x, block_m: int):
    """A Gluon descriptor reading block_m float32 values of x (B, H, SQ) at a time, seen as one flat row of rows
    padded to a multiple of 4 values (copied so where SQ is not: TMA starts each read on 16 bytes), and the padded
    row length."""
    rows = -(-x.shape[2] // 4) * 4
    if rows != x.shape[2] or not x.is_contiguous() or x.data_ptr() % 16:
        x = torch.nn.functional.pad(x, (0, rows - x.shape[2]))
    flat = x.view(-1)
    return unchecked_gluon_descriptor(flat, [flat.numel()], [1], [block_m], shared_layout((block_m,), "float32")), rows


def _run_delta(out, do, delta):
    """Delta = rowsum(dO * O) where no dQ kernel of backward.py's runs to write it."""
    B, H, SQ, D = out.shape
    block_m = 64
    DELTA((cdiv(SQ, block_m), B * H, 1), out, do, delta, *_strides(out, do), H, SQ,
          HEAD_DIM=D, BLOCK_D=head_block(D), BLOCK_M=block_m, num_warps=4)
    _announce("attention_bwd_delta_kernel", BLOCK_M=block_m, warps=4)


def _run_dq_hopper(q, k, v, out, do, dq, lse, delta, p: Pattern, args, kept: dict) -> bool:
    """The Gluon dQ kernel, writing Delta as well, or False where a tensor's strides keep TMA from addressing it.
    args: _pattern_args(p, q); kept: _gluon_descriptors'."""
    B, H, SQ, D = q.shape
    HK, SKV = k.shape[1], k.shape[2]
    masked = p.kv_lo is not None or p.softcap is not None or p.documents is not None
    block_n, stages = masked and HOPPER_DQ_MASKED_TILES.get(D) or HOPPER_DQ_TILES[D]
    rows = ROWS_PER_GROUP.value
    descriptors = _gluon_descriptors((q, k, v, do), (rows, block_n, block_n, rows), kept=kept)
    if descriptors is None:
        return False
    (kv_lo, kv_hi, holes, key_keep, documents), (qk_scale, sm_scale, softcap, window, _, _), (s_keep, s_doc), \
        flags = args
    HOPPER_DQ(
        (cdiv(SQ, 2 * rows) * B * H, 1, 1), *descriptors, dq, out, lse, delta, kv_lo, kv_hi, holes, key_keep,
        documents, qk_scale, sm_scale, softcap, window, *dq.stride()[:3], *out.stride()[:3], s_keep, s_doc, H,
        H // HK, SQ, SKV, B * H,
        section_heads(k, H // HK, B * H),
        HEAD_DIM=D, BLOCK_N=block_n, STAGES=stages, CAUSAL=flags["CAUSAL"], HAS_PADDING=flags["HAS_PADDING"],
        HAS_WINDOW=flags["HAS_WINDOW"], HAS_HOLES=flags["HAS_HOLES"], HAS_DOC=flags["HAS_DOC"],
        SOFTCAP=flags["SOFTCAP"] != SOFTCAP_NONE.value, num_warps=4)
    _announce("attention_bwd_dq_hopper_kernel", BLOCK_M=2 * rows, BLOCK_N=block_n, warps=9, stages=stages, TMA=True)
    return True


def _run_dkdv_hopper(q, k, v, do, dk, dv, lse, delta, args, kept: dict, dq_sum=None):
    """The Gluon dK/dV kernel, or False where a tensor's strides keep TMA from addressing it. args:
    _pattern_args(p, q); kept: _gluon_descriptors'; dq_sum: a zeroed (B, H, SQ, D) float32 buffer that it adds dQ to
    (Delta written before), or None (dQ by backward.py)."""
    B, H, SQ, D = q.shape
    HK, SKV = k.shape[1], k.shape[2]
    block_m, stages = HOPPER_BACKWARD_TILES[D]
    keys, per_program = ROWS_PER_GROUP.value, keys_per_program(D)  # a K and V block: one group's keys
    descriptors = _gluon_descriptors((q, k, v, do), (block_m, keys, keys, block_m), kept=kept)
    if descriptors is None:
        return False
    (lse_desc, row_len), (delta_desc, _) = _row_descriptor(lse, block_m), _row_descriptor(delta, block_m)
    (kv_lo, kv_hi, holes, key_keep, documents), (qk_scale, sm_scale, softcap, window, _, _), (s_keep, s_doc), \
        flags = args
    HOPPER_DKDV(
        (cdiv(SKV, per_program), B * HK, 1), *descriptors, _dq_descriptor(dq_sum, block_m) or descriptors[0],
        dk, dv, lse_desc, delta_desc, kv_lo, kv_hi, holes, key_keep, documents,
        qk_scale, sm_scale, softcap, window, *dk.stride()[:3], *dv.stride()[:3], s_keep, s_doc, row_len, H, H // HK, SQ,
        SKV,
        HEAD_DIM=D, BLOCK_M=block_m, STAGES=stages, CAUSAL=flags["CAUSAL"], HAS_PADDING=flags["HAS_PADDING"],
        HAS_WINDOW=flags["HAS_WINDOW"], HAS_HOLES=flags["HAS_HOLES"], HAS_DOC=flags["HAS_DOC"],
        SOFTCAP=flags["SOFTCAP"] != SOFTCAP_NONE.value, FUSED_DQ=dq_sum is not None, num_warps=4)
    _announce("attention_bwd_dkdv_hopper_kernel", BLOCK_M=block_m, BLOCK_N=per_program, warps=9, stages=stages,
              TMA=True)
    return True


@_on_tensor_device
def run_forward(q, k, v, p: Pattern, kept: Optional[dict] = None):
    """q (B, H, SQ, D), k/v (B, HK, SKV, D) with unit stride on D. Returns out (B, H, SQ, D) and lse (B, H, SQ).
    kept: a dict that keeps the Gluon forward's descriptors for run_backward of the same call."""
    B, H, SQ, D = q.shape
    SKV = k.shape[2]
    out = torch.empty(B, SQ, H, D, dtype=q.dtype, device=q.device).transpose(1, 2)
    lse = torch.empty(B, H, SQ, dtype=torch.float32, device=q.device)
    if (HOPPER_FORWARD and HOPPER_FWD is not None and hopper_forward_fits(q, k, p) and hopper_forward_pays(D, SKV)
            and _is_hopper(q.device) and _run_forward_hopper(q, k, v, p, out, lse, kept)):
        return out, lse
    block_d = head_block(D)
    tensors, scalars, (s_keep, s_doc), flags = _pattern_args(p, q)
    fixed_max = fixed_max_fits(p.softcap, q.dtype)

    def launch(cfg):
        k_arg, v_arg, tma = _streamed(k, v, cfg, cfg.block_n, block_d)
        FORWARD(
            (cdiv(SQ, cfg.block_m), B * H, 1), q, k_arg, v_arg, out, lse, *tensors, *scalars,
            *_strides(q, k, v, out), s_keep, s_doc, H, H // k.shape[1], SQ, SKV,
            HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, **flags,
            TMA=tma, FIXED_MAX=fixed_max, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **_registers(cfg),
            **FUSED)
        return tma

    reach = key_reach(SKV, block_d, p.window, p.longest_document)
    table = forward_config(block_d, q.dtype == torch.float32, reach, has_tma(q.device), p.causal)
    cfg = _choose("forward", table, q, k, flags, launch)
    cfg, tma = _fitting("forward", cfg, launch, q, flags)
    _announce("attention_fwd_kernel", cfg, TMA=tma)
    return out, lse


DECODE_FLAGS = ("CAUSAL", "HAS_PADDING", "HAS_WINDOW", "HAS_HOLES", "SOFTCAP", "DOT_PRECISION")
_decode_flags = operator.itemgetter(*DECODE_FLAGS)  # their values from _pattern_args' flags, in that order


class DecodePlan(NamedTuple):
    """What a decode launch takes from its case: the configuration (the one that fits this GPU, see _fitting), the
    multiprocessors that the cache's chunks are spread over, and the kernel's constexprs and options (TMA aside)."""
    cfg: LaunchConfig
    multiprocessors: int
    kwargs: dict


# (device, dtype, head size, GQA group x q_len, flags) -> DecodePlan. A generate() step calls decode in every layer
# with the same case, and an eager decode step is bound by host time (benchmarks/NOTES.md entry 21). The cache
# length is not in the key: it grows by a token a step, and the chunks are cheap to work out per call.
_DECODE_PLANS = {}


def _decode_plan(cfg: LaunchConfig, q, flag_values: tuple) -> DecodePlan:
    D = q.shape[3]
    kwargs = dict(HEAD_DIM=D, BLOCK_D=head_block(D), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                  **dict(zip(DECODE_FLAGS, flag_values)), num_warps=cfg.num_warps, num_stages=cfg.num_stages, **FUSED)
    return DecodePlan(cfg, 16 if interpreting() else _multiprocessors(q.device), kwargs)


def _launch_decode(plan: DecodePlan, q, k, v, out, args) -> tuple:
    """The decode kernel with the cache cut into about two chunks per multiprocessor (decode_splits) and fresh
    scratch buffers; returns the chunks per (batch, kv head) and whether K and V went by TMA. args:
    _pattern_args(p, q)."""
    (kv_lo, kv_hi, holes, key_keep, _), (qk_scale, sm_scale, softcap, window, _, _), (s_keep, _), _ = args
    B, H, SQ, _ = q.shape
    HK, SKV = k.shape[1], k.shape[2]
    cfg = plan.cfg
    splits = decode_splits(B * HK, SKV, cfg.block_n, plan.multiprocessors)
    chunk = cdiv(cdiv(SKV, splits), cfg.block_n) * cfg.block_n
    splits = cdiv(SKV, chunk)
    o_part = torch.empty(B * HK, splits, cfg.block_m, plan.kwargs["BLOCK_D"], dtype=torch.float32, device=q.device)
    lse_part = torch.empty(B * HK, splits, cfg.block_m, dtype=torch.float32, device=q.device)
    arrived = counters(q.device, B * HK, "decode")
    k_arg, v_arg, tma = _streamed(k, v, cfg, cfg.block_n, plan.kwargs["BLOCK_D"])
    DECODE((splits, B * HK, 1), q, k_arg, v_arg, out, o_part, lse_part, arrived, kv_lo, kv_hi, holes, key_keep,
           qk_scale, sm_scale, softcap, window, chunk, *_strides(q, k, v, out), s_keep, HK, H // HK, SQ, SKV, TMA=tma,
           **plan.kwargs)
    return splits, tma


@_on_tensor_device
def run_decode(q, k, v, p: Pattern):
    """Split-KV forward for few queries against a long cache (no dropout, no packing, no gradient)."""
    B, H, SQ, D = q.shape
    rows = H // k.shape[1] * SQ  # the packed GQA group's query rows
    out = torch.empty(B, SQ, H, D, dtype=q.dtype, device=q.device).transpose(1, 2)
    args = _pattern_args(p, q)
    flag_values = _decode_flags(args[3])
    key = (q.device, q.dtype, D, rows, flag_values)
    plan = _DECODE_PLANS.get(key)
    if plan is None:
        def launch(cfg):
            plan = _decode_plan(cfg, q, flag_values)
            return plan, _launch_decode(plan, q, k, v, out, args)

        _, (plan, (splits, tma)) = _fitting("decode", decode_config(head_block(D), q.dtype == torch.float32, rows),
                                            launch, q, args[3], keep_block_m=True)
        _DECODE_PLANS[key] = plan
    else:
        splits, tma = _launch_decode(plan, q, k, v, out, args)
    _announce("attention_decode_kernel", plan.cfg, splits=splits, TMA=tma)
    return out


@_on_tensor_device
def run_backward(q, k, v, out, lse, do, p: Pattern, kept: Optional[dict] = None):
    """dQ, dK and dV of run_forward's call (out, lse) for the gradient do. kept: run_forward's, or None."""
    B, H, SQ, D = q.shape
    kept = {} if kept is None else kept
    HK, SKV = k.shape[1], k.shape[2]
    block_d = head_block(D)
    fp32 = q.dtype == torch.float32
    delta = torch.empty(B, H, SQ, dtype=torch.float32, device=q.device)  # written by the dQ or Delta kernel
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    args = _pattern_args(p, q)
    tensors, scalars, (s_keep, s_doc), flags = args
    heads_inner = dkdv_heads_inner(block_d, H // HK)
    common = _strides(q, k, v, do)

    def launch_dkdv(cfg):
        q_arg, do_arg, tma = _streamed(q, do, cfg, cfg.block_m, block_d)
        DKDV(
            (cdiv(SKV, cfg.block_n), B * HK, 1), q_arg, k, v, do_arg, dk, dv, lse, delta, *tensors, *scalars, *common,
            *_strides(dk, dv), s_keep, s_doc, H, H // HK, SQ, SKV,
            HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, **flags, TMA=tma,
            HEADS_INNER=heads_inner, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **FUSED)
        return tma

    def launch_dq(cfg):
        k_arg, v_arg, tma = _streamed(k, v, cfg, cfg.block_n, block_d)
        DQ(
            (cdiv(SQ, cfg.block_m), B * H, 1), q, k_arg, v_arg, do, dq, out, lse, delta, *tensors, *scalars, *common,
            *_strides(dq, out), s_keep, s_doc, H, H // HK, SQ, SKV,
            HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, **flags, TMA=tma,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **FUSED)
        return tma

    gluon = (HOPPER_BACKWARD and HOPPER_DKDV is not None and hopper_backward_fits(q, k, p)
             and hopper_backward_pays(D, SKV, p, B * H * SQ) and _is_hopper(q.device))
    gluon_dq = gluon and HOPPER_GLUON_DQ and D in HOPPER_DQ_TILES
    if (gluon and not gluon_dq and HOPPER_FUSED_DQ and D in HOPPER_FUSED_DQ_HEAD_SIZES and hopper_fused_dq_pays(SQ, p)
            and _run_backward_hopper_fused(q, k, v, out, do, dq, dk, dv, lse, delta, p, args, kept)):
        return dq, dk, dv
    tma, gqa, reach = has_tma(q.device), H > HK, key_reach(SKV, block_d, p.window, p.longest_document)
    if not (gluon_dq and _run_dq_hopper(q, k, v, out, do, dq, lse, delta, p, args, kept)):
        cfg, used_tma = _fitting("dq", _choose("dq", dq_config(block_d, fp32, reach, tma, gqa), q, k, flags,
                                               launch_dq), launch_dq, q, flags)
        _announce("attention_bwd_dq_kernel", cfg, TMA=used_tma)
    if gluon and _run_dkdv_hopper(q, k, v, do, dk, dv, lse, delta, args, kept):
        return dq, dk, dv
    cfg, used_tma = _fitting("dkdv", _choose("dkdv", dkdv_config(block_d, fp32, reach, tma, gqa), q, k, flags,
                                             launch_dkdv), launch_dkdv, q, flags)
    _announce("attention_bwd_dkdv_kernel", cfg, TMA=used_tma)
    return dq, dk, dv


def _run_backward_hopper_fused(q, k, v, out, do, dq, dk, dv, lse, delta, p: Pattern, args, kept: dict) -> bool:
    """Delta, then the Gluon kernel writing dK, dV and dQ (summed in float32), or False where a tensor's strides
    keep TMA from addressing it. args: _pattern_args(p, q); kept: _gluon_descriptors'."""
    B, H, SQ, D = q.shape
    _run_delta(out, do, delta)
    dq_sum = torch.zeros(B, H, SQ, D, dtype=torch.float32, device=q.device)
    if not _run_dkdv_hopper(q, k, v, do, dk, dv, lse, delta, args, kept, dq_sum):
        return False
    torch.mul(dq_sum, p.scale, out=dq)
    return True


def dropout_keep_mask(seed: int, batch: int, heads: int, q_len: int, kv_len: int, dropout_p: float, device):
    """The (B, H, SQ, SKV) bool pattern of kept probabilities that attention() uses for this seed."""
    out = torch.empty(batch * heads, q_len, kv_len, dtype=torch.uint8, device=device)
    _fill_keep_mask(out, seed, dropout_p)
    return out.view(batch, heads, q_len, kv_len).bool()


@_on_tensor_device
def _fill_keep_mask(out, seed: int, dropout_p: float):
    _, q_len, kv_len = out.shape
    grid = (cdiv(q_len, 16), cdiv(kv_len, 16), out.shape[0])
    dropout_mask_kernel[grid](out, seed, q_len, kv_len, dropout_p, BLOCK_M=16, BLOCK_N=16, **FUSED)
