"""dK and dV on Hopper in Gluon, with the structure of the Gluon forward (hopper_forward.py): a loader warp and two
consumer warpgroups.

One program takes 128 keys of one key/value head; each consumer warpgroup owns 64 of them and keeps their dK and dV
in registers, while the loader warp streams the query blocks of every query head of the GQA group (Q and dO, BLOCK_M
rows each) into a ring of STAGES shared-memory buffers through TMA; a buffer is refilled once both groups have used
it. Per query block a warpgroup works in the transposed orientation, so that P^T and dS^T come out of the matmuls
in the registers that the next matmuls read them from (no round trip through shared memory):

    S^T = K Q^T and dP^T = V dO^T (issued together), P^T = exp2(S^T - LSE) (while dP^T is still in flight),
    dV += P^T dO, dS^T = P^T * (dP^T - Delta), dK += dS^T Q.

LSE is the forward's, in log2 units; Delta = rowsum(dO * O) is written by the dQ kernel (backward.py), launched
first. dK leaves scaled by the softmax scale; with softcap, dS^T is multiplied by 1 - tanh^2 of the capped score.

Scope (ops.py sends every other input to backward.py): fp16/bf16, head sizes 64 and 128, causal (aligned to the last
key) or not, GQA, any scale, a padding mask (its per-key form read in batch rows whose kept keys have gaps),
a sliding window, logit softcapping, packed documents; no dropout.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from .hopper_forward import (CONSUMER_REGISTERS, LOADER_REGISTERS, ROWS_PER_GROUP, hardware_tanh, load_block,
                             mma_layout, padding_range)
from .tiles import LOG2E


@gluon.jit
def _query_range(shape, mask, BLOCK_M: gl.constexpr, CAUSAL: gl.constexpr, HAS_PADDING: gl.constexpr,
                 HAS_WINDOW: gl.constexpr, HAS_DOC: gl.constexpr):
    """The program's first key, its batch row and key/value head, and the query blocks [m_begin, m_begin + n_m) that
    some row of which sees one of its 128 keys: the same in all three partitions, which keeps their barriers in
    step."""
    H, GROUP, SQ, SKV = shape
    KvLo, KvHi, window, DocStart, stride_doc_b, _, _, _ = mask
    start_n = gl.program_id(0) * (2 * ROWS_PER_GROUP)  # the first key blocks see the most rows: they start first
    HK = H // GROUP
    b = gl.program_id(1) // HK
    hk = gl.program_id(1) % HK
    offset = SKV - SQ
    last_n = gl.minimum(start_n + 2 * ROWS_PER_GROUP, SKV) - 1
    lo = 0
    hi = SQ
    if CAUSAL:
        lo = gl.maximum(start_n - offset, 0)
    if HAS_WINDOW:
        hi = gl.minimum(last_n - offset + window, SQ)
    if HAS_DOC:  # no row past the last key's document sees it
        hi = gl.minimum(hi, gl.load(DocStart + b * stride_doc_b + SQ + last_n))
    if HAS_PADDING:
        kv_lo, kv_hi = padding_range(KvLo, KvHi, b, SKV, HAS_PADDING)
        hi = gl.where((start_n >= kv_hi) | (last_n < kv_lo), lo, hi)
    m_begin = lo // BLOCK_M
    return start_n, b, hk, m_begin, gl.where(hi > lo, gl.cdiv(hi, BLOCK_M) - m_begin, 0)


@gluon.jit
def _loader(io, shape, mask, bufs, BLOCK_M: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
            HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_DOC: gl.constexpr):
    """One warp: the Q and dO blocks of each query head of the group, in the consumers' order, into the ring."""
    q_desc, _, _, do_desc = io[:4]
    _, GROUP, _, _ = shape
    q_ring, do_ring, q_ready, do_ready, empty = bufs[:5]
    start_n, b, hk, m_begin, n_m = _query_range(shape, mask, BLOCK_M, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_DOC)
    it = 0  # the it-th block goes to stage it % STAGES, its (it // STAGES)-th use
    for g in range(GROUP):
        h = hk * GROUP + g
        for mi in range(n_m):
            stage = it % STAGES
            mbarrier.wait(empty.index(stage), ((it // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
            start_m = (m_begin + mi) * BLOCK_M
            load_block(q_desc, b, h, start_m, q_ready.index(stage), q_ring.index(stage))
            load_block(do_desc, b, h, start_m, do_ready.index(stage), do_ring.index(stage))
            it += 1


@gluon.jit
def _probabilities(qk, lse, offs_n, start_m, masked, key_ok, rows, score, BLOCK_M: gl.constexpr,
                   CAUSAL: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_DOC: gl.constexpr, SOFTCAP: gl.constexpr,
                   s_layout: gl.constexpr):
    """P^T of a (keys, rows) block as dV's operand, and P^T as dS^T takes it: times the softcap's derivative
    1 - tanh^2 with softcap (so that tanh is not kept until dP^T arrives). masked: some pair of the block is hidden
    (key_ok: the keys a padding mask leaves; rows = (offset, window, doc_base, SQ))."""
    qk_scale, sm_scale, softcap = score
    if SOFTCAP:
        t = hardware_tanh(qk * (sm_scale / softcap))
        p = gl.exp2(t * (softcap * LOG2E) - lse[None, :])
    else:
        p = gl.exp2(qk * qk_scale - lse[None, :])
    if masked:
        offset, window, doc_base, SQ = rows
        offs_m = start_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, s_layout))
        keep = key_ok[:, None]
        if CAUSAL:
            keep = keep & (offs_n[:, None] <= offs_m[None, :] + offset)
        if HAS_WINDOW:
            keep = keep & (offs_n[:, None] > offs_m[None, :] + offset - window)
        if HAS_DOC:
            keep = keep & (offs_n[:, None] >= gl.load(doc_base + offs_m, mask=offs_m < SQ, other=0)[None, :])
        p = gl.where(keep, p, 0.0)
    if SOFTCAP:
        return p, p * (1.0 - t * t)
    return p, p


@gluon.jit
def _consumer(io, shape, mask, score, bufs, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr,
              CAUSAL: gl.constexpr, HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_HOLES: gl.constexpr,
              HAS_DOC: gl.constexpr, SOFTCAP: gl.constexpr, GROUP_ID: gl.constexpr):
    """One warpgroup: dK and dV of 64 keys over the program's query blocks."""
    _, k_desc, v_desc, _, DK, DV, Lse, Delta, dk_strides, dv_strides = io
    H, GROUP, SQ, SKV = shape
    KvLo, KvHi, window, DocStart, stride_doc_b, Holes, KeyKeep, stride_keep_b = mask
    q_ring, do_ring, q_ready, do_ready, empty, k_smem, v_smem, kv_ready = bufs
    dtype: gl.constexpr = k_desc.dtype
    s_layout: gl.constexpr = mma_layout(BLOCK_M)
    kv_layout: gl.constexpr = mma_layout(HEAD_DIM)
    op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=kv_layout, k_width=2)
    keys_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    rows_s: gl.constexpr = gl.SliceLayout(0, s_layout)

    start_n, b, hk, m_begin, n_m = _query_range(shape, mask, BLOCK_M, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_DOC)
    start_n += GROUP_ID * ROWS_PER_GROUP
    dk = gl.zeros([ROWS_PER_GROUP, HEAD_DIM], gl.float32, kv_layout)
    dv = gl.zeros([ROWS_PER_GROUP, HEAD_DIM], gl.float32, kv_layout)
    if n_m > 0:
        k_buf = k_smem.index(GROUP_ID)
        v_buf = v_smem.index(GROUP_ID)
        load_block(k_desc, b, hk, start_n, kv_ready.index(2 * GROUP_ID), k_buf)
        load_block(v_desc, b, hk, start_n, kv_ready.index(2 * GROUP_ID + 1), v_buf)
        k = k_buf.reshape([ROWS_PER_GROUP, HEAD_DIM])
        v = v_buf.reshape([ROWS_PER_GROUP, HEAD_DIM])

        # The rows [full_lo, full_hi) see all 64 keys; a query block reaching out of it, or any block where the keys
        # are partly padding or the padding mask has gaps, is masked.
        offset = SKV - SQ
        offs_n = start_n + gl.arange(0, ROWS_PER_GROUP, layout=keys_s)
        kv_lo, kv_hi = padding_range(KvLo, KvHi, b, SKV, HAS_PADDING)
        key_ok = (offs_n >= kv_lo) & (offs_n < kv_hi)
        every_block = (start_n < kv_lo) | (start_n + ROWS_PER_GROUP > kv_hi)
        if HAS_HOLES:  # the mask itself, equal to its range in rows without gaps
            every_block = every_block | (gl.load(Holes + b) != 0)
            keep_row = KeyKeep + b.to(gl.int64) * stride_keep_b
            key_ok = key_ok & (gl.load(keep_row + offs_n, mask=offs_n < SKV, other=0) != 0)
        full_lo = 0
        full_hi = SQ
        if CAUSAL:
            full_lo = gl.minimum(start_n + ROWS_PER_GROUP, SKV) - 1 - offset
        if HAS_WINDOW:
            full_hi = gl.minimum(start_n - offset + window, SQ)
        doc_base = DocStart + b * stride_doc_b
        if HAS_DOC:  # the rows up to the first key's document end
            full_hi = gl.minimum(full_hi, gl.load(doc_base + SQ + start_n))
        full_lo = gl.where(every_block, SQ + BLOCK_M, full_lo)
        rows = (offset, window, doc_base, SQ)
        s_zero = gl.zeros([ROWS_PER_GROUP, BLOCK_M], gl.float32, s_layout)
        mbarrier.wait(kv_ready.index(2 * GROUP_ID), 0)
        mbarrier.wait(kv_ready.index(2 * GROUP_ID + 1), 0)

        it = 0
        for g in range(GROUP):
            bh = (b * H + hk * GROUP + g).to(gl.int64)
            for mi in range(n_m):
                start_m = (m_begin + mi) * BLOCK_M
                stage = it % STAGES
                phase = (it // STAGES) & 1
                offs_m = start_m + gl.arange(0, BLOCK_M, layout=rows_s)
                lse = gl.load(Lse + bh * SQ + offs_m, mask=offs_m < SQ, other=float("inf"))
                delta = gl.load(Delta + bh * SQ + offs_m, mask=offs_m < SQ, other=0.0)
                q = q_ring.index(stage).reshape([BLOCK_M, HEAD_DIM])
                do = do_ring.index(stage).reshape([BLOCK_M, HEAD_DIM])
                mbarrier.wait(q_ready.index(stage), phase)
                qk = warpgroup_mma(k, q.permute((1, 0)), s_zero, use_acc=False, is_async=True)
                mbarrier.wait(do_ready.index(stage), phase)
                # dP^T - Delta straight from the matmul (its accumulator starts at -Delta): Delta is not kept.
                dp = warpgroup_mma(v, do.permute((1, 0)), s_zero - delta[None, :], is_async=True)
                qk = warpgroup_mma_wait(num_outstanding=1, deps=(qk,))
                # The exponentials sit in a branch that is always taken, so that they run while dP^T is in flight:
                # ptxas would otherwise wait for both matmuls at once (as in hopper_forward.py).
                if SKV > 0:
                    masked = (start_m < full_lo) | (start_m + BLOCK_M > full_hi)
                    p, p_ds = _probabilities(qk, lse, offs_n, start_m, masked, key_ok, rows, score, BLOCK_M, CAUSAL,
                                             HAS_WINDOW, HAS_DOC, SOFTCAP, s_layout)
                    p_op = gl.convert_layout(p.to(dtype), op_layout)
                else:
                    p_ds, p_op = qk, gl.convert_layout(qk.to(dtype), op_layout)
                dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp,))
                dv = warpgroup_mma(p_op, do, dv, is_async=True)
                ds_op = gl.convert_layout((p_ds * dp).to(dtype), op_layout)
                dk = warpgroup_mma(ds_op, q, dk, is_async=True)
                dv, dk, p_op, ds_op = warpgroup_mma_wait(num_outstanding=0, deps=(dv, dk, p_op, ds_op))
                mbarrier.arrive(empty.index(stage), count=1)
                it += 1

    sm_scale = score[1]
    keys = start_n + gl.arange(0, ROWS_PER_GROUP, layout=gl.SliceLayout(1, kv_layout))
    cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, kv_layout))
    stored = keys[:, None] < SKV
    _store(DK, dk_strides, b, hk, keys, cols, (dk * sm_scale).to(dtype), stored)
    _store(DV, dv_strides, b, hk, keys, cols, dv.to(dtype), stored)


@gluon.jit
def _store(X, strides, b, hk, keys, cols, value, stored):
    stride_b, stride_h, stride_n = strides
    ptrs = X + b.to(gl.int64) * stride_b + hk.to(gl.int64) * stride_h + keys[:, None] * stride_n + cols[None, :]
    gl.store(ptrs, value, mask=stored)


@gluon.jit
def attention_bwd_dkdv_hopper_kernel(
        q_desc, k_desc, v_desc, do_desc, DK, DV, Lse, Delta, KvLo, KvHi, Holes, KeyKeep, DocStart,
        qk_scale, sm_scale, softcap, window,
        stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn, stride_keep_b, stride_doc_b,
        H, GROUP, SQ, SKV,
        HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
        HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_HOLES: gl.constexpr, HAS_DOC: gl.constexpr,
        SOFTCAP: gl.constexpr):
    """Launched with num_warps=4 (the first consumer group); the second group and the loader are added warps.
    q_desc and do_desc read (1, 1, BLOCK_M, HEAD_DIM) tiles of Q and dO (B, H, SQ, D), k_desc and v_desc
    (1, 1, 64, HEAD_DIM) tiles of K and V (B, HK, SKV, D); DK, DV (B, HK, SKV, D) with the given strides; Lse and
    Delta (B, H, SQ) float32; the mask arguments as hopper_forward.py takes them; grid (cdiv(SKV, 128), B * HK)."""
    dtype: gl.constexpr = q_desc.dtype
    q_ring = gl.allocate_shared_memory(dtype, [STAGES] + q_desc.block_type.shape, q_desc.layout)
    do_ring = gl.allocate_shared_memory(dtype, [STAGES] + do_desc.block_type.shape, do_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [2] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [2] + v_desc.block_type.shape, v_desc.layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    do_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_ready = gl.allocate_shared_memory(gl.int64, [4, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(4):
        mbarrier.init(kv_ready.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(do_ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)  # both consumer groups release a buffer

    io = (q_desc, k_desc, v_desc, do_desc, DK, DV, Lse, Delta, (stride_dkb, stride_dkh, stride_dkn),
          (stride_dvb, stride_dvh, stride_dvn))
    shape = (H, GROUP, SQ, SKV)
    mask = (KvLo, KvHi, window, DocStart, stride_doc_b, Holes, KeyKeep, stride_keep_b)
    score = (qk_scale, sm_scale, softcap)
    bufs = (q_ring, do_ring, q_ready, do_ready, empty, k_smem, v_smem, kv_ready)
    gl.warp_specialize([
        (_consumer, (io, shape, mask, score, bufs, HEAD_DIM, BLOCK_M, STAGES, CAUSAL, HAS_PADDING, HAS_WINDOW,
                     HAS_HOLES, HAS_DOC, SOFTCAP, 0)),
        (_consumer, (io, shape, mask, score, bufs, HEAD_DIM, BLOCK_M, STAGES, CAUSAL, HAS_PADDING, HAS_WINDOW,
                     HAS_HOLES, HAS_DOC, SOFTCAP, 1)),
        (_loader, (io, shape, mask, bufs, BLOCK_M, STAGES, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_DOC)),
    ], [4, 1], [CONSUMER_REGISTERS, LOADER_REGISTERS])
