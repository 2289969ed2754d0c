"""Split-KV decode: few queries (a generate() step, q_len 1 to 16) against a long KV cache.

One query block cannot keep a GPU busy when there are only batch * heads of them, and a decode step is
bound by reading the cache. So the cache is cut into chunks: one program per (chunk, batch * kv head) reads
its chunk once for every query head of the GQA group at the same time (the group's rows are packed into
one block), and writes a partial result with its log-sum-exp. The last program of a (batch, kv head) to
finish, counted with an atomic, merges the chunks and sets the count back to zero for the next launch (so that
a call needs no memset of the counts): one launch per step, since a decode step called eagerly is bound by the
host's launch time. Forward only: a step that needs gradients takes the regular kernel.
"""
import triton
import triton.language as tl

from .forward import _fwd_blocks
from .tiles import NO_MAX, head_sources, key_bounds, kv_range, middle_blocks, walk_bounds, walk_mask


@triton.jit
def attention_decode_kernel(
        Q, K, V, O, OPart, LsePart, Arrived, KvLo, KvHi, Holes, KeyKeep,
        qk_scale, sm_scale, softcap, window, chunk,
        stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
        stride_ob, stride_oh, stride_om, stride_keep_b, HK, GROUP, SQ, SKV,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        CAUSAL: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_HOLES: tl.constexpr,
        SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr):
    split = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // HK
    hk = bhk % HK
    # Packed rows: row r is query i = r % SQ of head hk * GROUP + r // SQ; rows past the group are idle.
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < GROUP * SQ
    h = hk * GROUP + rows // SQ
    q_idx = tl.where(row_ok, rows % SQ, SQ)  # an idle row's result is never stored
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = (Q + b.to(tl.int64) * stride_qb + h[:, None].to(tl.int64) * stride_qh + q_idx[:, None] * stride_qm
              + offs_d[None, :])
    q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    k_src, v_src = head_sources(K, V, b, hk, stride_kb, stride_kh, stride_vb, stride_vh, TMA)
    keep_base = KeyKeep + b.to(tl.int64) * stride_keep_b

    # The keys the queries see (every query of the block is one of rows 0..SQ-1), cut to this chunk.
    kv_lo, kv_hi = kv_range(KvLo, KvHi, b, SKV, HAS_PADDING)
    lo, hi, full_lo, full_hi = key_bounds(b, 0, SQ, SKV, kv_lo, kv_hi, Holes, KvLo, 0, window,
                                          BLOCK_M, CAUSAL, HAS_WINDOW, HAS_HOLES, False)
    lo = tl.maximum(lo, split * chunk)
    hi = tl.minimum(hi, (split + 1) * chunk)
    n_start, mid_lo, mid_len = middle_blocks(lo, hi, full_lo, full_hi, BLOCK_N)
    no_doc = tl.zeros([BLOCK_M], tl.int32)

    m_i = tl.full([BLOCK_M], NO_MAX, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if lo < hi:
        # One loop, the edges' mask in a branch, with or without TMA (tiles.walks): a program walks a few blocks, so
        # its fixed code weighs more than the branch (benchmarks/NOTES.md entry 38: 1-11% faster inside graphs).
        WALKS: tl.constexpr = 1
        for walk in tl.static_range(WALKS):
            begin, end = walk_bounds(walk, n_start, mid_lo, mid_len, hi, WALKS)
            acc, l_i, m_i = _fwd_blocks(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, b, hk, q_idx, begin,
                                        end, mid_lo, mid_len, bhk, SQ, SKV, kv_lo, kv_hi, window, keep_base, no_doc,
                                        qk_scale, sm_scale, softcap, 0.0, 0, HEAD_DIM, BLOCK_D, BLOCK_N,
                                        walk_mask(walk, WALKS),
                                        CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, False, SOFTCAP, False,
                                        DOT_PRECISION, TMA, False)
    empty = l_i == 0.0
    part = bhk.to(tl.int64) * tl.num_programs(0) + split
    out = acc * (1.0 / tl.where(empty, 1.0, l_i))[:, None]
    tl.store(OPart + part * BLOCK_M * BLOCK_D + rows[:, None] * BLOCK_D + offs_d[None, :], out)
    # -inf: this chunk holds no key for the row and adds nothing when the chunks are merged
    lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    tl.store(LsePart + part * BLOCK_M + rows, lse)
    # Every thread's stores come before the count (barrier, then a release); the program that counts last
    # sees all chunks' stores (acquire) and merges them.
    tl.debug_barrier()
    if tl.atomic_add(Arrived + bhk, 1, sem="acq_rel", scope="gpu") == tl.num_programs(0) - 1:
        _merge_chunks(OPart, LsePart, O, stride_ob, stride_oh, stride_om, b, hk, bhk, GROUP, SQ, tl.num_programs(0),
                      HEAD_DIM, BLOCK_D, BLOCK_M)
        tl.store(Arrived + bhk, 0)  # every chunk has counted: the next launch finds zero (ops.counters)


@triton.jit
def _merge_chunks(OPart, LsePart, O, stride_ob, stride_oh, stride_om, b, hk, bhk, GROUP, SQ, NSPLIT,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """Weights each chunk's result by its share of the softmax mass: an online softmax over chunks. The loads
    skip L1 (.cg): the chunks were written by other multiprocessors."""
    rows = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for split in range(0, NSPLIT):
        part = bhk.to(tl.int64) * NSPLIT + split
        lse = tl.load(LsePart + part * BLOCK_M + rows, cache_modifier=".cg")
        out = tl.load(OPart + part * BLOCK_M * BLOCK_D + rows[:, None] * BLOCK_D + offs_d[None, :],
                      cache_modifier=".cg")
        m_new = tl.maximum(m_i, lse)
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_ref)
        w = tl.math.exp2(lse - m_ref)
        acc = acc * alpha[:, None] + w[:, None] * out
        l_i = l_i * alpha + w
        m_i = m_new
    out = acc * (1.0 / tl.where(l_i == 0.0, 1.0, l_i))[:, None]  # a row with no key anywhere: zeros
    row_ok = rows < GROUP * SQ
    h = hk * GROUP + rows // SQ
    q_idx = rows % SQ
    o_ptrs = (O + b.to(tl.int64) * stride_ob + h[:, None].to(tl.int64) * stride_oh + q_idx[:, None] * stride_om
              + offs_d[None, :])
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM))
