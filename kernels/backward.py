"""The backward pass, in two kernels and without atomics (so gradients are bitwise reproducible):

1. ``attention_bwd_dq_kernel``: one program per (query block, batch * query head), walking keys like the
   forward pass. It first computes Delta = rowsum(dO * O) of its rows and stores it for the next kernel.
2. ``attention_bwd_dkdv_kernel``: one program per (key block, batch * key/value head); it loops over the
   query heads of its GQA group and their query blocks, so dK and dV of a shared head are summed in
   registers, never by repeating K/V.

Both recompute P = exp2(S - LSE) from the forward's log-sum-exp. With dropout, dS = P * (dP * Z - Delta)
where Z is the forward's keep pattern scaled by 1 / (1 - p); with softcap, dS is further multiplied by
1 - tanh^2 of the uncapped score.
"""
import triton
import triton.language as tl

from .tiles import (MASK_NONE, dropout_keep, head_sources, key_bounds, kv_range, load_rows, logits, mask_scores,
                    masks_block, middle_blocks, query_bounds, tile_mask, walk_bounds, walk_mask, walks)


@triton.jit
def _dkdv_tile(dk, dv, k, v, q_src, do_src, lse_base, delta_base, stride_qm, stride_dom, b, h, offs_n, start_m,
               mid_lo, mid_len, bh, SQ, SKV, kv_lo, kv_hi, window, key_keep, doc_base, qk_scale, sm_scale, softcap,
               dropout_p, seed, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
               MASK: tl.constexpr, CAUSAL: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr,
               HAS_HOLES: tl.constexpr, HAS_DOC: tl.constexpr, SOFTCAP: tl.constexpr, DROPOUT: tl.constexpr,
               DOT_PRECISION: tl.constexpr, TMA: tl.constexpr):
    """Adds one query block [start_m, start_m + BLOCK_M) of head h to dK, dV of one key block; tiles are
    (keys, rows), masked as MASK says (tiles.py; the middle: [mid_lo, mid_lo + mid_len))."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = load_rows(q_src, b, h, start_m, stride_qm, SQ, HEAD_DIM, BLOCK_M, BLOCK_D, MASK != MASK_NONE, TMA)
    do = load_rows(do_src, b, h, start_m, stride_dom, SQ, HEAD_DIM, BLOCK_M, BLOCK_D, MASK != MASK_NONE, TMA)
    if MASK != MASK_NONE:
        # Rows from SQ on read zeros (the copy's own zero fill, no select per value): their Q and dO are zeros
        # too, so whatever P they get, they add nothing to dK and dV
        row_ok = offs_m < SQ
        lse = tl.load(lse_base + offs_m, mask=row_ok, other=0.0)
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
    else:
        lse = tl.load(lse_base + offs_m)
        delta = tl.load(delta_base + offs_m)
    s_t, factor, tanh_t = logits(tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION), qk_scale, sm_scale, softcap,
                                 SOFTCAP)
    if masks_block(start_m, mid_lo, mid_len, MASK):
        doc = 0
        if HAS_DOC:
            doc = tl.load(doc_base + offs_m, mask=offs_m < SQ, other=0)[None, :]
        keep = tile_mask(offs_m[None, :], offs_n[:, None], SQ, SKV, kv_lo, kv_hi, window, key_keep, doc,
                         CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC)
        s_t = tl.where(keep, s_t, float("-inf"))
    p_t = tl.math.exp2(s_t * factor - lse[None, :])
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    if DROPOUT:
        kept = dropout_keep(seed, bh, offs_m[None, :], offs_n[:, None], SKV, dropout_p)
        scale_keep = 1.0 / (1.0 - dropout_p)
        dv = tl.dot(tl.where(kept, p_t * scale_keep, 0.0).to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.where(kept, dp_t * scale_keep, 0.0)
    else:
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    if SOFTCAP:
        ds_t = ds_t * (1.0 - tanh_t * tanh_t)
    dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _dkdv_blocks(dk, dv, k, v, Q, DO, Lse, Delta, stride_qb, stride_qh, stride_qm, stride_dob, stride_doh,
                 stride_dom, b, h_first, n_heads, H, offs_n, m_begin, m_end, mid_lo, mid_len, SQ, SKV, kv_lo, kv_hi,
                 window, key_keep, doc_base, qk_scale, sm_scale, softcap, dropout_p, seed,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, MASK: tl.constexpr,
                 CAUSAL: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_HOLES: tl.constexpr,
                 HAS_DOC: tl.constexpr, SOFTCAP: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 TMA: tl.constexpr, HEADS_INNER: tl.constexpr):
    """Accumulates dK, dV of one key block over query rows [m_begin, m_end) of the heads [h_first, h_first +
    n_heads). HEADS_INNER: one loop over (query block, head) pairs, heads innermost, so that in a model's
    (B, S, H, D) layout a group's rows are read side by side; else head by head."""
    if HEADS_INNER:
        start_m = m_begin
        h = h_first
        for _ in range(0, tl.cdiv(m_end - m_begin, BLOCK_M) * n_heads):
            bh = b * H + h
            q_src, do_src = head_sources(Q, DO, b, h, stride_qb, stride_qh, stride_dob, stride_doh, TMA)
            dk, dv = _dkdv_tile(dk, dv, k, v, q_src, do_src, Lse + bh.to(tl.int64) * SQ, Delta + bh.to(tl.int64) * SQ,
                                stride_qm, stride_dom, b, h, offs_n, start_m, mid_lo, mid_len, bh, SQ, SKV, kv_lo,
                                kv_hi, window, key_keep, doc_base, qk_scale, sm_scale, softcap, dropout_p, seed,
                                HEAD_DIM, BLOCK_D, BLOCK_M, MASK, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC,
                                SOFTCAP, DROPOUT, DOT_PRECISION, TMA)
            h += 1
            wrap = h == h_first + n_heads
            h = tl.where(wrap, h_first, h)
            start_m = tl.where(wrap, start_m + BLOCK_M, start_m)
    else:
        for g in range(0, n_heads):
            h = h_first + g
            bh = b * H + h
            q_src, do_src = head_sources(Q, DO, b, h, stride_qb, stride_qh, stride_dob, stride_doh, TMA)
            for start_m in range(m_begin, m_end, BLOCK_M):
                dk, dv = _dkdv_tile(dk, dv, k, v, q_src, do_src, Lse + bh.to(tl.int64) * SQ,
                                    Delta + bh.to(tl.int64) * SQ, stride_qm, stride_dom, b, h, offs_n, start_m,
                                    mid_lo, mid_len, bh, SQ, SKV, kv_lo, kv_hi, window, key_keep, doc_base, qk_scale,
                                    sm_scale, softcap, dropout_p, seed, HEAD_DIM, BLOCK_D, BLOCK_M, MASK, CAUSAL,
                                    HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC, SOFTCAP, DROPOUT, DOT_PRECISION, TMA)
    return dk, dv


@triton.jit
def attention_bwd_dkdv_kernel(
        Q, K, V, DO, DK, DV, Lse, Delta, KvLo, KvHi, Holes, KeyKeep, DocStart,
        qk_scale, sm_scale, softcap, window, dropout_p, seed,
        stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
        stride_dob, stride_doh, stride_dom, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
        stride_keep_b, stride_doc_b,
        H, GROUP, SQ, SKV,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        CAUSAL: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_HOLES: tl.constexpr,
        HAS_DOC: tl.constexpr, SOFTCAP: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
        TMA: tl.constexpr, HEADS_INNER: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    bhk = tl.program_id(1)
    HK = H // GROUP
    b = bhk // HK
    hk = bhk % HK
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    ld = (offs_n[:, None] < SKV) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh + offs_n[:, None] * stride_kn
                + offs_d[None, :], mask=ld, other=0.0)
    v = tl.load(V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh + offs_n[:, None] * stride_vn
                + offs_d[None, :], mask=ld, other=0.0)
    key_keep = 0
    if HAS_HOLES:
        key_keep = tl.load(KeyKeep + b.to(tl.int64) * stride_keep_b + offs_n, mask=offs_n < SKV, other=0)[:, None]
    kv_lo, kv_hi = kv_range(KvLo, KvHi, b, SKV, HAS_PADDING)
    lo, hi, full_lo, full_hi = query_bounds(b, start_n, SQ, SKV, kv_lo, kv_hi, Holes, DocStart, stride_doc_b, window,
                                            BLOCK_N, CAUSAL, HAS_WINDOW, HAS_HOLES, HAS_DOC)
    m_start, mid_lo, mid_len = middle_blocks(lo, hi, full_lo, full_hi, BLOCK_M)
    doc_base = DocStart + b * stride_doc_b

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # heads inner: each walk over the whole group; else head by head, the walks within each
    heads_per_call = GROUP if HEADS_INNER else 1
    WALKS: tl.constexpr = walks(TMA)
    for g in range(0, GROUP, heads_per_call):
        for walk in tl.static_range(WALKS):
            begin, end = walk_bounds(walk, m_start, mid_lo, mid_len, hi, WALKS)
            dk, dv = _dkdv_blocks(dk, dv, k, v, Q, DO, Lse, Delta, stride_qb, stride_qh, stride_qm, stride_dob,
                                  stride_doh, stride_dom, b, hk * GROUP + g, heads_per_call, H, offs_n, begin, end,
                                  mid_lo, mid_len, SQ, SKV, kv_lo, kv_hi, window, key_keep, doc_base, qk_scale,
                                  sm_scale, softcap, dropout_p, seed, HEAD_DIM, BLOCK_D, BLOCK_M,
                                  walk_mask(walk, WALKS), CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC, SOFTCAP,
                                  DROPOUT, DOT_PRECISION, TMA, HEADS_INNER)

    st = ld
    tl.store(DK + b.to(tl.int64) * stride_dkb + hk.to(tl.int64) * stride_dkh + offs_n[:, None] * stride_dkn
             + offs_d[None, :], (dk * sm_scale).to(DK.dtype.element_ty), mask=st)
    tl.store(DV + b.to(tl.int64) * stride_dvb + hk.to(tl.int64) * stride_dvh + offs_n[:, None] * stride_dvn
             + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=st)


@triton.jit
def _dq_blocks(dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_vn, b, hk, offs_m, n_begin, n_end, mid_lo,
               mid_len, bh, SQ, SKV, kv_lo, kv_hi, window, keep_base, doc_rows,
               qk_scale, sm_scale, softcap, dropout_p, seed,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
               CAUSAL: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_HOLES: tl.constexpr,
               HAS_DOC: tl.constexpr, SOFTCAP: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
               TMA: tl.constexpr):
    """Accumulates dQ of one query block over keys [n_begin, n_end); tiles are (rows, keys), masked as MASK says
    (tiles.py; the middle: [mid_lo, mid_lo + mid_len))."""
    for start_n in range(n_begin, n_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = load_rows(k_src, b, hk, start_n, stride_kn, SKV, HEAD_DIM, BLOCK_N, BLOCK_D, MASK != MASK_NONE, TMA)
        v = load_rows(v_src, b, hk, start_n, stride_vn, SKV, HEAD_DIM, BLOCK_N, BLOCK_D, MASK != MASK_NONE, TMA)
        s, factor, tanh_s = logits(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION), qk_scale, sm_scale,
                                   softcap, SOFTCAP)
        if masks_block(start_n, mid_lo, mid_len, MASK):
            s = mask_scores(s, offs_m, offs_n, SQ, SKV, kv_lo, kv_hi, window, keep_base, doc_rows,
                            CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC)
        p = tl.math.exp2(s * factor - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        if DROPOUT:
            kept = dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], SKV, dropout_p)
            dp = tl.where(kept, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - tanh_s * tanh_s)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def attention_bwd_dq_kernel(
        Q, K, V, DO, DQ, O, Lse, Delta, KvLo, KvHi, Holes, KeyKeep, DocStart,
        qk_scale, sm_scale, softcap, window, dropout_p, seed,
        stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
        stride_dob, stride_doh, stride_dom, stride_dqb, stride_dqh, stride_dqm, stride_ob, stride_oh, stride_om,
        stride_keep_b, stride_doc_b,
        H, GROUP, SQ, SKV,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        CAUSAL: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_HOLES: tl.constexpr,
        HAS_DOC: tl.constexpr, SOFTCAP: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
        TMA: tl.constexpr):
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < SQ
    ld = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qm
                + offs_d[None, :], mask=ld, other=0.0)
    do = tl.load(DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh + offs_m[:, None] * stride_dom
                 + offs_d[None, :], mask=ld, other=0.0)
    o = tl.load(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_om
                + offs_d[None, :], mask=ld, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + bh.to(tl.int64) * SQ + offs_m, delta, mask=row_ok)  # for the dK/dV kernel, launched next
    lse = tl.load(Lse + bh.to(tl.int64) * SQ + offs_m, mask=row_ok, other=float("inf"))
    k_src, v_src = head_sources(K, V, b, hk, stride_kb, stride_kh, stride_vb, stride_vh, TMA)
    keep_base = KeyKeep + b.to(tl.int64) * stride_keep_b
    doc_rows = tl.zeros([BLOCK_M], tl.int32)
    if HAS_DOC:
        doc_rows = tl.load(DocStart + b * stride_doc_b + offs_m, mask=row_ok, other=0)
    kv_lo, kv_hi = kv_range(KvLo, KvHi, b, SKV, HAS_PADDING)
    lo, hi, full_lo, full_hi = key_bounds(b, start_m, SQ, SKV, kv_lo, kv_hi, Holes, DocStart, stride_doc_b, window,
                                          BLOCK_M, CAUSAL, HAS_WINDOW, HAS_HOLES, HAS_DOC)
    n_start, mid_lo, mid_len = middle_blocks(lo, hi, full_lo, full_hi, BLOCK_N)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    WALKS: tl.constexpr = walks(TMA)
    for walk in tl.static_range(WALKS):
        begin, end = walk_bounds(walk, n_start, mid_lo, mid_len, hi, WALKS)
        dq = _dq_blocks(dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_vn, b, hk, offs_m, begin, end, mid_lo,
                        mid_len, bh, SQ, SKV, kv_lo, kv_hi, window, keep_base, doc_rows, qk_scale, sm_scale, softcap,
                        dropout_p, seed, HEAD_DIM, BLOCK_D, BLOCK_N, walk_mask(walk, WALKS), CAUSAL, HAS_PADDING,
                        HAS_WINDOW, HAS_HOLES, HAS_DOC, SOFTCAP, DROPOUT, DOT_PRECISION, TMA)
    tl.store(DQ + b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh + offs_m[:, None] * stride_dqm
             + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty), mask=ld)


@triton.jit
def attention_bwd_delta_kernel(O, DO, Delta, stride_ob, stride_oh, stride_om, stride_dob, stride_doh, stride_dom, H, SQ,
                               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """Delta = rowsum(dO * O) (B, H, SQ) float32, where no dQ kernel runs to write it (the Gluon dK/dV kernel that
    also writes dQ, hopper_backward.py). Grid (cdiv(SQ, BLOCK_M), B * H)."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_m = tl.program_id(0) * BLOCK_M
    o = load_rows(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh, b, h, start_m, stride_om, SQ,
                  HEAD_DIM, BLOCK_M, BLOCK_D, True, False)
    do = load_rows(DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh, b, h, start_m, stride_dom, SQ,
                   HEAD_DIM, BLOCK_M, BLOCK_D, True, False)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    tl.store(Delta + bh.to(tl.int64) * SQ + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=offs_m < SQ)
