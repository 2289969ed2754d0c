"""The forward pass: one program per (query block, batch * query head), FlashAttention-2 style.

Each program keeps its query block in registers and streams key/value blocks of the matching
key/value head (GQA reads K/V in place), with an online softmax in the log2 domain. It writes the
output and the row log-sum-exp (log2 units; +inf for a row that sees no key) for the backward pass.
"""
import triton
import triton.language as tl

from .tiles import (LOG2E, SOFTCAP_NONE, capped, dropout_keep, head_sources, key_bounds, kv_range, load_rows,
                    mask_scores, phase_bounds, split_phases)


@triton.jit
def _fwd_blocks(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, b, hk, offs_m, n_begin, n_end,
                bh, SQ, SKV, kv_lo, kv_hi, window, keep_base, doc_rows,
                qk_scale, sm_scale, softcap, dropout_p, seed,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_HOLES: tl.constexpr,
                HAS_DOC: tl.constexpr, SOFTCAP: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
                TMA: tl.constexpr):
    for start_n in range(n_begin, n_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = load_rows(k_src, b, hk, start_n, stride_kn, SKV, HEAD_DIM, BLOCK_N, BLOCK_D, MASKED, TMA)
        v = load_rows(v_src, b, hk, start_n, stride_vn, SKV, HEAD_DIM, BLOCK_N, BLOCK_D, MASKED, TMA)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        # The factor (positive: ops.Pattern) goes into the exponent's multiply-add: the max of the unscaled tile,
        # scaled once per row; a masked score is -inf before it and after
        factor = qk_scale
        if SOFTCAP != SOFTCAP_NONE:  # softcap * log2(e) * tanh(s / softcap)
            qk = capped(qk, sm_scale, softcap, SOFTCAP)
            factor = softcap * LOG2E
        if MASKED:
            qk = mask_scores(qk, offs_m, offs_n, SQ, SKV, kv_lo, kv_hi, window, keep_base, doc_rows,
                             CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC)
        m_new = tl.maximum(m_i, tl.max(qk, 1) * factor)
        m_ref = m_new
        if MASKED:  # a row with no key yet stays at zero
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk * factor - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            p = tl.where(dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], SKV, dropout_p), p, 0.0)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


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
        TMA: tl.constexpr):
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
    n_start, mid_lo, mid_hi = split_phases(lo, hi, full_lo, full_hi, BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for phase in tl.static_range(3):  # masked edge, unmasked middle, masked edge
        begin, end = phase_bounds(phase, n_start, mid_lo, mid_hi, hi)
        acc, l_i, m_i = _fwd_blocks(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, b, hk, offs_m,
                                    begin, end, bh, SQ, SKV, kv_lo, kv_hi, window, keep_base, doc_rows,
                                    qk_scale, sm_scale, softcap, dropout_p, seed, HEAD_DIM, BLOCK_D, BLOCK_N,
                                    phase != 1, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC, SOFTCAP, DROPOUT,
                                    DOT_PRECISION, TMA)

    empty = l_i == 0.0
    row_scale = 1.0 / tl.where(empty, 1.0, l_i)  # one division per row, then a multiply per element
    if DROPOUT:
        row_scale = row_scale * (1.0 / (1.0 - dropout_p))
    out = acc * row_scale[:, None]
    o_ptrs = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM))
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    tl.store(Lse + bh.to(tl.int64) * SQ + offs_m, lse, mask=row_ok)
