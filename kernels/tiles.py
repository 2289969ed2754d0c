"""Triton helpers shared by the forward and backward kernels.

Every pass walks a range of blocks along one sequence axis: edge blocks that need the element-wise mask, then
whole blocks that every row (or column) of the tile may attend without any mask, then edge blocks again. Only
the edge blocks pay for the mask. With TMA (Hopper) one loop walks them all, the mask in a branch of its body
(MASK_EDGES): a loop per phase has its own prologue of pipelined loads and its own copy of the body, about half
of a short program's instructions. Without TMA three loops walk them (the phases, MASK_ALL and MASK_NONE): there
the branch costs layout conversions through shared memory in every block (sm80's MMA layouts; benchmarks/NOTES.md
entry 34).

Index conventions: query row ``i`` (0 <= i < SQ) and key ``j`` (0 <= j < SKV). Causal attention is
aligned to the bottom right: row ``i`` sits on the diagonal ``i + SKV - SQ``, so a decode step
(SQ == 1) sees the whole cache. A window of ``W`` keeps keys with ``diag - W < j <= diag``.
Scores are kept in the log2 domain (``exp2``) with the softmax scale folded in.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # a constexpr: Triton 3.6 reads no other globals in jit code
# Softcap's fixed maximum (FIXED_MAX in both forwards): the largest exponential a capped score may reach, in log2
# units (ops.fixed_max_fits).
FIXED_MAX_TOP = tl.constexpr(64.0)
# A row's running maximum before it has seen a key: float32's lowest finite value rather than -inf, so that the
# exponent of a masked score (-inf - NO_MAX) and the rescale factor (NO_MAX - NO_MAX) need no guard against
# -inf - -inf = NaN
NO_MAX = tl.constexpr(-3.4028234663852886e38)


# How a loop over blocks applies the element-wise mask (its MASK): to no block (the unmasked middle), to every
# block (an edge), or to the blocks outside the middle, by a branch, in one loop over all of them
MASK_NONE = tl.constexpr(0)
MASK_ALL = tl.constexpr(1)
MASK_EDGES = tl.constexpr(2)


@triton.jit
def middle_blocks(lo, hi, full_lo, full_hi, BLOCK: tl.constexpr):
    """(start, mid_lo, mid_len): the walk over [lo, hi) starts at block start; blocks [mid_lo, mid_lo + mid_len)
    are whole and unmasked (mid_lo = hi where there are none), the others need the mask. mid_len is unsigned for
    masks_block's one compare."""
    start = (lo // BLOCK) * BLOCK
    mid_lo = tl.cdiv(tl.maximum(full_lo, lo), BLOCK) * BLOCK
    mid_hi = (tl.minimum(full_hi, hi) // BLOCK) * BLOCK
    empty = mid_hi <= mid_lo
    mid_lo = tl.where(empty, hi, mid_lo)
    mid_len = tl.where(empty, 0, mid_hi - mid_lo)
    return start, mid_lo, mid_len.to(tl.uint32)


@triton.constexpr_function
def walks(tma):
    """The loops a pass walks its blocks in: one with TMA, three without (the module's docstring says why)."""
    return 1 if tma else 3


@triton.constexpr_function
def walk_mask(walk, walks):
    """The MASK of loop `walk` of `walks`: MASK_EDGES for one loop over all blocks, else masked edge, unmasked
    middle, masked edge."""
    return MASK_EDGES.value if walks == 1 else MASK_NONE.value if walk == 1 else MASK_ALL.value


@triton.jit
def walk_bounds(walk: tl.constexpr, start, mid_lo, mid_len, hi, WALKS: tl.constexpr):
    """The blocks [begin, end) of loop `walk` of WALKS (walks, walk_mask)."""
    begin = start
    end = hi
    if WALKS == 3:
        mid_hi = mid_lo + mid_len.to(tl.int32)
        end = mid_lo
        if walk == 1:
            begin = mid_lo
            end = mid_hi
        if walk == 2:
            begin = mid_hi
            end = hi
    return begin, end


@triton.jit
def masks_block(start, mid_lo, mid_len, MASK: tl.constexpr):
    """Whether a loop that masks MASK masks the block at start: with MASK_EDGES where it lies outside the middle,
    before it or after it (one unsigned compare for both), else a constant."""
    if MASK == MASK_EDGES:
        return (start - mid_lo).to(tl.uint32) >= mid_len
    else:
        return MASK == MASK_ALL


@triton.jit
def kv_range(KvLo, KvHi, b, SKV, HAS_PADDING: tl.constexpr):
    """The keys [kv_lo, kv_hi) that batch row b's padding mask leaves; all keys without a mask (nothing read)."""
    if HAS_PADDING:
        return tl.load(KvLo + b), tl.load(KvHi + b)
    else:
        return SKV * 0, SKV * 1


@triton.jit
def key_bounds(b, start_m, SQ, SKV, kv_lo, kv_hi, Holes, DocStart, stride_doc_b, window,
               BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
               HAS_HOLES: tl.constexpr, HAS_DOC: tl.constexpr):
    """Keys [lo, hi) that some row of the query block may see, and [full_lo, full_hi) that every row sees."""
    offset = SKV - SQ
    last_m = tl.minimum(start_m + BLOCK_M, SQ) - 1
    lo = kv_lo
    hi = kv_hi
    full_lo = lo
    full_hi = hi
    if CAUSAL:
        hi = tl.minimum(hi, last_m + offset + 1)
        full_hi = tl.minimum(full_hi, start_m + offset + 1)
    if HAS_WINDOW:
        lo = tl.maximum(lo, start_m + offset - window + 1)
        full_lo = tl.maximum(full_lo, last_m + offset - window + 1)
    if HAS_DOC:
        lo = tl.maximum(lo, tl.load(DocStart + b * stride_doc_b + start_m))
        full_lo = tl.maximum(full_lo, tl.load(DocStart + b * stride_doc_b + last_m))
    if HAS_HOLES:
        full_lo = tl.where(tl.load(Holes + b) != 0, hi, full_lo)
    return tl.maximum(lo, 0), hi, full_lo, full_hi


@triton.jit
def query_bounds(b, start_n, SQ, SKV, kv_lo, kv_hi, Holes, DocStart, stride_doc_b, window,
                 BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 HAS_HOLES: tl.constexpr, HAS_DOC: tl.constexpr):
    """Rows [lo, hi) that may see some key of the key block, and [full_lo, full_hi) that see all of it.

    With packed documents (q_len == kv_len) DocStart holds each token's document start and, SQ further on, its
    end: a row sees key n only before n's document ends, so the rows that see the whole block end where the
    first key's document does, and no row past the last key's document end sees any of it."""
    offset = SKV - SQ
    last_n = tl.minimum(start_n + BLOCK_N, SKV) - 1
    lo = 0
    hi = SQ
    full_lo = 0
    full_hi = SQ
    if CAUSAL:
        lo = tl.maximum(lo, start_n - offset)
        full_lo = tl.maximum(full_lo, last_n - offset)
    if HAS_WINDOW:
        hi = tl.minimum(hi, last_n - offset + window)
        full_hi = tl.minimum(full_hi, start_n - offset + window)
    if HAS_DOC:
        ends = DocStart + b * stride_doc_b + SQ
        hi = tl.minimum(hi, tl.load(ends + last_n))
        full_hi = tl.minimum(full_hi, tl.load(ends + start_n))
    outside = (start_n >= kv_hi) | (last_n < kv_lo)
    hi = tl.where(outside, lo, hi)
    partial = (start_n < kv_lo) | (start_n + BLOCK_N > kv_hi)
    if HAS_HOLES:
        partial = partial | (tl.load(Holes + b) != 0)
    full_lo = tl.where(partial, hi, full_lo)
    return tl.maximum(lo, 0), hi, full_lo, full_hi


@triton.jit
def head_sources(X, Y, b, h, stride_xb, stride_xh, stride_yb, stride_yh, TMA: tl.constexpr):
    """Where load_rows finds head h of batch row b of two streamed operands: descriptors as they are (they address
    (batch, head, row) themselves), pointers moved to the head's first row."""
    if TMA:
        return X, Y
    else:
        return (X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh,
                Y + b.to(tl.int64) * stride_yb + h.to(tl.int64) * stride_yh)


@triton.jit
def load_rows(src, b, h, start, stride_row, n_rows, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
              BLOCK_D: tl.constexpr, MASKED: tl.constexpr, TMA: tl.constexpr):
    """Rows [start, start + BLOCK) of head h of batch row b of Q, K, V or dO as a (BLOCK, BLOCK_D) tile, zero past
    n_rows and HEAD_DIM. TMA: src is a tensor descriptor over (B, heads, n_rows, HEAD_DIM) and the copy engine
    (Hopper) fetches the tile; else src points at the head's first row and rows are stride_row apart."""
    if TMA:
        return src.load([b, h, start, 0]).reshape(BLOCK, BLOCK_D)
    else:
        offs = start + tl.arange(0, BLOCK)
        offs_d = tl.arange(0, BLOCK_D)
        ptrs = src + offs[:, None] * stride_row + offs_d[None, :]
        if MASKED:
            return tl.load(ptrs, mask=(offs[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        elif BLOCK_D == HEAD_DIM:
            return tl.load(ptrs)
        else:
            return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)


@triton.jit
def tile_mask(q_idx, k_idx, SQ, SKV, kv_lo, kv_hi, window, key_keep, doc_start, CAUSAL: tl.constexpr,
              HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_HOLES: tl.constexpr, HAS_DOC: tl.constexpr):
    """True where row q_idx may attend key k_idx; the caller shapes the indices (M, 1)/(1, N) or transposed.

    Causal without padding needs no key range: the diagonal keeps a row before SQ off the keys from SKV on, and
    rows from SQ on (idle rows past the end) are never stored and their Q and dO are zeros (the dQ kernel reads
    their LSE as +inf, the dK/dV kernel as 0), so whatever they see stays finite and adds nothing; the causal mask
    alone is then one compare per pair.
    Otherwise one select per condition: a single key range per row (a subtraction and an unsigned compare) has
    fewer instructions but measured 2-7% slower on padded, window and softcap inputs (benchmarks/NOTES.md entry 9)."""
    diag = q_idx + (SKV - SQ)
    if CAUSAL and not HAS_PADDING:
        keep = k_idx <= diag
    else:
        keep = (k_idx >= kv_lo) & (k_idx < kv_hi) & (q_idx < SQ)
        if CAUSAL:
            keep = keep & (k_idx <= diag)
    if HAS_WINDOW:
        keep = keep & (k_idx > diag - window)
    if HAS_DOC:
        keep = keep & (k_idx >= doc_start)
    if HAS_HOLES:
        keep = keep & (key_keep != 0)
    return keep


@triton.jit
def mask_scores(s, offs_m, offs_n, SQ, SKV, kv_lo, kv_hi, window, keep_base, doc_rows, CAUSAL: tl.constexpr,
                HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_HOLES: tl.constexpr, HAS_DOC: tl.constexpr):
    """A (rows, keys) tile of scores with what the pattern hides set to -inf (forward and dQ passes)."""
    key_keep = 0
    if HAS_HOLES:
        key_keep = tl.load(keep_base + offs_n, mask=offs_n < SKV, other=0)[None, :]
    keep = tile_mask(offs_m[:, None], offs_n[None, :], SQ, SKV, kv_lo, kv_hi, window, key_keep, doc_rows[:, None],
                     CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC)
    return tl.where(keep, s, float("-inf"))


# SOFTCAP values: no softcap, tanh computed exactly, or the GPU's one-instruction tanh.approx.f32 (relative
# error about 2**-11, below bf16/fp16 resolution; never used for fp32 inputs or under the interpreter).
SOFTCAP_NONE = tl.constexpr(0)
SOFTCAP_EXACT = tl.constexpr(1)
SOFTCAP_HW_TANH = tl.constexpr(2)


@triton.jit
def _tanh(x, SOFTCAP: tl.constexpr):
    if SOFTCAP == SOFTCAP_HW_TANH:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def capped(qk, sm_scale, softcap, SOFTCAP: tl.constexpr):
    """tanh(s / softcap) of the scores s = qk * sm_scale: softcap * log2(e) times it is the score in the log2 domain."""
    return _tanh(qk * (sm_scale / softcap), SOFTCAP)


@triton.jit
def logits(qk, qk_scale, sm_scale, softcap, SOFTCAP: tl.constexpr):
    """(x, factor, t): the scores in the log2 domain are x * factor with a positive factor, left for the exponent's
    multiply-add to apply (a masked x of -inf stays -inf); t = tanh(s / softcap) for the softcap derivative (0
    without softcap)."""
    if SOFTCAP != SOFTCAP_NONE:
        t = capped(qk, sm_scale, softcap, SOFTCAP)
        return t, softcap * LOG2E, t
    else:
        return qk, qk_scale, 0.0


@triton.jit
def dropout_keep(seed, bh, q_idx, k_idx, SKV, dropout_p):
    """The same keep pattern in every pass: Philox keyed by (seed, batch*head), counter row*SKV+key."""
    return tl.rand(seed + bh, q_idx * SKV + k_idx) >= dropout_p


@triton.jit
def dropout_mask_kernel(Out, seed, SQ, SKV, dropout_p, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Writes the keep pattern (1 = kept) of one (batch*head) as uint8, for tests and debugging."""
    bh = tl.program_id(2)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], SKV, dropout_p)
    ptrs = Out + bh.to(tl.int64) * SQ * SKV + offs_m[:, None] * SKV + offs_n[None, :]
    tl.store(ptrs, keep.to(tl.uint8), mask=(offs_m[:, None] < SQ) & (offs_n[None, :] < SKV))
