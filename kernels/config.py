"""Block sizes, warps, pipeline depth and TMA per pass, chosen from the head size, dtype, key length and GPU.

A fixed table, so that the first call of a new shape compiles once and never stalls a training run on a
search; the entries come from sweeps on an H100 (benchmarks/tune.py, results under benchmarks/results/h100/).
HF_SDPA_AUTOTUNE=1 lets autotune.py search CANDIDATES instead, once per machine. Under Triton's CPU interpreter
the smallest blocks keep tests fast.
"""
import os
from dataclasses import dataclass, replace
from typing import Optional


@dataclass(frozen=True)
class LaunchConfig:
    """tma: the tiles a program streams (K/V in the forward and dQ passes, Q/dO in the dK/dV pass) come through
    tensor descriptors, fetched by Hopper's copy engine (TMA); ops falls back to pointer loads where the strides do
    not allow it. max_registers: a cap on the registers per thread (ptxas's maxnreg), so that as many programs
    share a multiprocessor as its shared memory allows (forward pass only; ptxas spills what does not fit: with
    dropout the head-size-64 forward's loops spill a few registers under the table's cap); None leaves ptxas its
    choice."""
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    tma: bool = False
    max_registers: Optional[int] = None


_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreting() -> bool:
    """Triton reads TRITON_INTERPRET once, when it decorates the kernels; so do we, at import (a launch asks often,
    and torch.compile traces a constant read without a warning, unlike a cached function)."""
    return _INTERPRET


def cdiv(a: int, b: int) -> int:
    """Ceiling division on the host (triton.cdiv is a slower constexpr function in recent Tritons)."""
    return -(-a // b)


def head_block(head_dim: int) -> int:
    """The head size padded (inside the kernel, with masked loads) to a power of two of at least 16."""
    return max(16, 1 << (head_dim - 1).bit_length())


def smaller(cfg: LaunchConfig, keep_block_m: bool = False) -> Optional[LaunchConfig]:
    """The next configuration to try where cfg needs more shared memory than the GPU has (the table was tuned on
    Hopper's 227 KB; an A100 has 163 KB, an A10, L4 or consumer GPU 99 KB): a shallower pipeline down to 2
    stages, then half the larger block (and half the warps above 4), then 1 stage. None when nothing is left.
    keep_block_m: the decode kernel's block_m holds all its query rows."""
    if cfg.num_stages > 2:
        return replace(cfg, num_stages=cfg.num_stages - 1)
    halve_m = cfg.block_m >= cfg.block_n and not keep_block_m
    if (cfg.block_m if halve_m else cfg.block_n) > 16:
        warps = cfg.num_warps // 2 if cfg.num_warps > 4 else cfg.num_warps
        if halve_m:
            return replace(cfg, block_m=cfg.block_m // 2, num_warps=warps)
        return replace(cfg, block_n=cfg.block_n // 2, num_warps=warps)
    if cfg.num_stages > 1:
        return replace(cfg, num_stages=1)
    return None


SHORT_KV = 1024  # at most this many keys: small tiles, since a short inner loop cannot amortise big ones


def key_reach(kv_len: int, block_d: int, *bounds) -> int:
    """The key length the table is asked for. A sliding window or packed documents bound the loops however long
    the sequence: a row walks at most `window` keys (or its document's), a key at most `window` rows (or its
    document's); so a bound of SHORT_KV or fewer gets the short rows. bounds: the window and the longest document,
    None where absent. Measured on an H200 with a 1024-key window (benchmarks/NOTES.md entry 12): fwd+bwd 5-8%
    faster at head sizes 128 and 256; at head size 64 the long rows stay 4% faster, so there no bound counts."""
    known = [bound for bound in bounds if bound is not None]
    return kv_len if block_d <= 64 or not known else min(kv_len, *known)


def forward_config(block_d: int, fp32: bool, kv_len: int, tma: bool = False, causal: bool = True) -> LaunchConfig:
    """tma: the GPU has Hopper's copy engine (sm90+); with it small tiles are the fastest (benchmarks/NOTES.md 4),
    except at head size 64: without the causal mask 64 x 128 tiles at two stages run 3-11% faster than 64 x 64 from
    2048 keys (a quarter fewer instructions per key, three programs per SM at 156 registers). The causal kernel's
    masked loops take those tiles to 238 registers, two programs per SM; capped at 168 (no spills) it is three again,
    2-6% faster from 8192 keys and level to 6% slower below (NOTES.md entry 22)."""
    if interpreting():
        return LaunchConfig(16, 16, 1, 1)
    if fp32:
        return LaunchConfig(64, 32, 4, 2) if block_d <= 128 else LaunchConfig(32, 32, 4, 1)
    if tma:
        if block_d <= 64 and not causal and kv_len > SHORT_KV:
            return LaunchConfig(64, 128, 4, 2, True)
        if block_d <= 64 and causal and kv_len >= 8 * SHORT_KV:
            return LaunchConfig(64, 128, 4, 2, True, max_registers=168)
        return LaunchConfig(64, 64, 4, 3, True) if block_d <= 128 else LaunchConfig(128, 64, 8, 2, True)
    if block_d <= 128 and kv_len <= SHORT_KV:
        return LaunchConfig(64, 64, 4, 3)
    if block_d <= 64:
        return LaunchConfig(128, 64, 4, 3)
    if block_d <= 128:
        return LaunchConfig(128, 64, 8, 3)
    return LaunchConfig(128, 64, 8, 2)


def dkdv_config(block_d: int, fp32: bool, kv_len: int, tma: bool = False, gqa: bool = False) -> LaunchConfig:
    """block_n is the key block a program owns, block_m the query blocks it streams (for each head of its group).
    gqa: several query heads share a K/V head, so each program streams several heads' Q and dO."""
    if interpreting():
        return LaunchConfig(16, 16, 1, 1)
    if fp32:
        return LaunchConfig(32, 32, 4, 1) if block_d <= 128 else LaunchConfig(16, 32, 4, 1)
    short = kv_len <= SHORT_KV
    if block_d <= 128 and short:  # TMA: 3-5% faster fwd+bwd at d128 GQA 512 (NOTES entry 11)
        return LaunchConfig(32, 64, 4, 2, tma and gqa and block_d == 128)
    if block_d <= 64:
        # TMA for GQA: 5-7% faster fwd+bwd in a model's (B, S, H, D) layout on the H200 (results/h200/tune_*)
        return LaunchConfig(64, 64, 4, 3, gqa) if tma else LaunchConfig(64, 128, 8, 3)
    if block_d <= 128:
        return LaunchConfig(64, 128, 8, 2, True) if tma and gqa else LaunchConfig(32, 128, 8, 3)
    if tma and gqa and short:  # fwd+bwd 10-14% faster at GQA 512, 3-8% slower at MHA 512 (NOTES entry 11)
        return LaunchConfig(64, 64, 8, 2, True)
    return LaunchConfig(64, 32, 4, 2)  # head size 256: 32 keys keep the fp32 dK/dV tiles in registers


def dkdv_heads_inner(block_d: int, group: int) -> bool:
    """Whether a dK/dV program walks (query block, head) pairs with its GQA group's heads innermost, rather than
    head by head. Measured on an H200 (benchmarks/NOTES.md entry 9): +4-5% fwd+bwd at head size 64 and 4k
    tokens, where Q and dO outgrow L2 and the group's rows sit side by side in a model's (B, S, H, D) layout;
    3-7% slower at head size 128, where the extra index arithmetic costs more than the reads save."""
    return group > 1 and block_d <= 64


def dq_config(block_d: int, fp32: bool, kv_len: int, tma: bool = False, gqa: bool = False) -> LaunchConfig:
    if interpreting():
        return LaunchConfig(16, 16, 1, 1)
    if fp32:
        return LaunchConfig(32, 32, 4, 1) if block_d <= 128 else LaunchConfig(32, 16, 4, 1)
    tma = tma and kv_len > SHORT_KV  # TMA made the dQ pass slower at 512 keys (benchmarks/NOTES.md 4)
    if block_d <= 64:
        return LaunchConfig(64, 64, 4, 3, tma)
    if block_d <= 128:  # on Hopper 64 x 32 wins for MHA too, with TMA only for GQA (tune_session4_mha.json)
        if kv_len <= SHORT_KV or tma:
            return LaunchConfig(64, 32, 4, 3, tma and gqa)
        return LaunchConfig(128, 32, 8, 3)
    return LaunchConfig(128, 32, 8, 3)


# Alternatives the optional autotuner (autotune.py) and benchmarks/tune.py try per pass and padded head size,
# fp16/bf16 only: (block_m, block_n, warps, stages).
CANDIDATES = {
    "forward": {64: [(64, 64, 4, 3), (128, 64, 4, 3), (64, 64, 4, 4), (64, 128, 4, 3), (128, 128, 8, 3),
                     (64, 128, 4, 2)],
                # (64, 128, 4, 1): a quarter fewer instructions per key than 64 x 64, two programs per SM only
                # without prefetch (benchmarks/NOTES.md entry 12)
                128: [(64, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 4), (64, 128, 4, 3), (128, 128, 8, 2),
                      (64, 128, 4, 1)],
                256: [(128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 8, 3), (64, 32, 4, 2)]},
    "dkdv": {64: [(64, 128, 8, 3), (32, 64, 4, 2), (32, 128, 8, 2), (64, 64, 4, 3)],
             128: [(32, 128, 8, 3), (64, 128, 8, 2), (32, 64, 4, 2), (32, 128, 8, 2)],
             256: [(64, 32, 4, 2), (64, 32, 8, 2), (32, 32, 8, 2), (64, 64, 8, 2), (32, 32, 4, 3)]},
    "dq": {64: [(128, 64, 8, 3), (64, 64, 4, 3), (128, 64, 4, 2)],
           128: [(128, 32, 8, 3), (64, 32, 4, 3), (128, 64, 8, 2)],
           256: [(128, 32, 8, 3), (128, 32, 8, 2), (64, 32, 4, 3), (128, 64, 8, 1)]},
}


def candidates(pass_name: str, block_d: int, fp32: bool, tma: bool = False) -> list:
    """What the autotuner may try (with TMA first where the GPU has it); fp32 keeps the table's choice (its tiles
    are bound by registers)."""
    if interpreting():
        return [LaunchConfig(16, 16, 1, 1), LaunchConfig(32, 16, 1, 1), LaunchConfig(16, 32, 1, 1)]
    if fp32:
        return []
    shapes = CANDIDATES[pass_name][max(64, block_d)]
    return [LaunchConfig(*c, tma=True) for c in shapes if tma] + [LaunchConfig(*c) for c in shapes]


def decode_config(block_d: int, fp32: bool, rows: int) -> LaunchConfig:
    """Split-KV decode: block_m holds the packed GQA group's query rows (at least 16 for tl.dot). No TMA: it saves
    4-27% of GPU time inside CUDA graphs but costs two descriptors of host time per call, and a decode step called
    eagerly is mostly host-bound (benchmarks/NOTES.md 4)."""
    block_m = max(16, 1 << (rows - 1).bit_length())
    if interpreting():
        return LaunchConfig(block_m, 16, 1, 1)
    block_n = 32 if (block_d > 128 or fp32) else 64
    return LaunchConfig(block_m, block_n, 4, 3 if block_d <= 128 else 2)


DECODE_MAX_QUERIES = 16   # q_len at most this ...
DECODE_MAX_ROWS = 64      # ... and q_len * GQA group at most this, packed into one block
DECODE_MIN_KEYS = 512     # below this one block per head is enough


def decode_splits(programs: int, kv_len: int, block_n: int, multiprocessors: int) -> int:
    """Chunks of the cache per (batch, kv head): about two programs per multiprocessor, each chunk at least
    four key blocks long (one under the interpreter, so that tests see many chunks)."""
    most = max(1, kv_len // ((1 if interpreting() else 4) * block_n))
    return max(1, min(most, cdiv(2 * multiprocessors, programs)))
