"""The forward pass: one program per (query block, batch * query head), FlashAttention-2 style.

Each program keeps its query block in registers and streams key/value blocks of the matching
key/value head (GQA reads K/V in place), with an online softmax in the log2 domain. It writes the
output and the row log-sum-exp (log2 units; +inf for a row that sees no key) for the backward pass.
"""
import triton
import triton.language as tl

from .tiles import (FIXED_MAX_TOP, LOG2E, MASK_NONE, NO_MAX, dropout_keep, head_sources, key_bounds, kv_range,
                    load_rows, logits, mask_scores, masks_block, middle_blocks, walk_bounds, walk_mask, walks)


@triton.jit
def _fwd_blocks(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, b, hk, offs_m, n_begin, n_end, mid_lo, mid_len,
                bh, SQ, SKV, kv_lo, kv_hi, window, keep_base, doc_rows,
                qk_scale, sm_scale, softcap, dropout_p, seed,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_HOLES: tl.constexpr,
                HAS_DOC: tl.constexpr, SOFTCAP: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
                TMA: tl.constexpr, FIXED_MAX: tl.constexpr):
    """Key blocks [n_begin, n_end), masked as MASK says (tiles.py; the middle: [mid_lo, mid_lo + mid_len)).
    FIXED_MAX: m_i is softcap's fixed maximum (fixed_maximum) and stays: no row maxima, no rescaling."""
    for start_n in range(n_begin, n_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = load_rows(k_src, b, hk, start_n, stride_kn, SKV, HEAD_DIM, BLOCK_N, BLOCK_D, MASK != MASK_NONE, TMA)
        v = load_rows(v_src, b, hk, start_n, stride_vn, SKV, HEAD_DIM, BLOCK_N, BLOCK_D, MASK != MASK_NONE, TMA)
        # The factor (positive: ops.Pattern) goes into the exponent's multiply-add: the max of the unscaled tile,
        # scaled once per row; a masked score is -inf before it and after
        qk, factor, _ = logits(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION), qk_scale, sm_scale, softcap,
                               SOFTCAP)
        if masks_block(start_n, mid_lo, mid_len, MASK):
            qk = mask_scores(qk, offs_m, offs_n, SQ, SKV, kv_lo, kv_hi, window, keep_base, doc_rows,
                             CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC)
        # m_i starts finite (NO_MAX), so a row that has seen no key keeps it and its exponentials of -inf are 0
        if FIXED_MAX:
            p = tl.math.exp2(qk * factor - m_i[:, None])
            if v.dtype == tl.bfloat16:  # the row sums of the P that P V takes (ops.fixed_max_fits)
                p = (p.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)
            l_i += tl.sum(p, 1)
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * factor)
            p = tl.math.exp2(qk * factor - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            m_i = m_new
        if DROPOUT:
            p = tl.where(dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], SKV, dropout_p), p, 0.0)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_i


@triton.jit
def fixed_maximum(softcap):
    """Softcap's fixed maximum in log2 units, max(0, C - FIXED_MAX_TOP) for the scores' bound C = softcap * log2(e):
    every exponential against it lies in [2**(64 - 2C), 2**64] (ops.fixed_max_fits)."""
    return tl.maximum(softcap * LOG2E - FIXED_MAX_TOP, 0.0)


@triton.jit
def attention_fwd_kernel(
        Q, K, V, O, Lse, KvLo, KvHi, Holes, KeyKeep, DocStart,
        qk_scale, sm_scale, softcap, window, dropout_p, seed,
        stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
        stride_ob, stride_oh, stride_om, stride_keep_b, stride_doc_b,
        H, GROUP, SQ, SKV,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        CAUSAL: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_HOLES: tl.constexpr,
        HAS_DOC: tl.constexpr, SOFTCAP: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
        TMA: tl.constexpr, FIXED_MAX: tl.constexpr):
    # Heaviest causal blocks (the last rows) first, so the tail of the grid is short work.
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
    row_ok = offs_m < SQ
    q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    k_src, v_src = head_sources(K, V, b, hk, stride_kb, stride_kh, stride_vb, stride_vh, TMA)
    keep_base = KeyKeep + b.to(tl.int64) * stride_keep_b
    doc_rows = tl.zeros([BLOCK_M], tl.int32)
    if HAS_DOC:
        doc_rows = tl.load(DocStart + b * stride_doc_b + offs_m, mask=row_ok, other=0)

    kv_lo, kv_hi = kv_range(KvLo, KvHi, b, SKV, HAS_PADDING)
    lo, hi, full_lo, full_hi = key_bounds(b, start_m, SQ, SKV, kv_lo, kv_hi, Holes, DocStart, stride_doc_b, window,
                                          BLOCK_M, CAUSAL, HAS_WINDOW, HAS_HOLES, HAS_DOC)
    n_start, mid_lo, mid_len = middle_blocks(lo, hi, full_lo, full_hi, BLOCK_N)

    if FIXED_MAX:
        m_i = tl.zeros([BLOCK_M], tl.float32) + fixed_maximum(softcap)
    else:
        m_i = tl.full([BLOCK_M], NO_MAX, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    WALKS: tl.constexpr = walks(TMA)
    for walk in tl.static_range(WALKS):
        begin, end = walk_bounds(walk, n_start, mid_lo, mid_len, hi, WALKS)
        acc, l_i, m_i = _fwd_blocks(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, b, hk, offs_m, begin, end,
                                    mid_lo, mid_len, bh, SQ, SKV, kv_lo, kv_hi, window, keep_base, doc_rows,
                                    qk_scale, sm_scale, softcap, dropout_p, seed, HEAD_DIM, BLOCK_D, BLOCK_N,
                                    walk_mask(walk, WALKS),
                                    CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC, SOFTCAP, DROPOUT,
                                    DOT_PRECISION, TMA, FIXED_MAX)

    empty = l_i == 0.0
    row_scale = 1.0 / tl.where(empty, 1.0, l_i)  # one division per row, then a multiply per element
    if DROPOUT:
        row_scale = row_scale * (1.0 / (1.0 - dropout_p))
    out = acc * row_scale[:, None]
    o_ptrs = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM))
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    tl.store(Lse + bh.to(tl.int64) * SQ + offs_m, lse, mask=row_ok)
