"""dK and dV (and, with FUSED_DQ, dQ) on Hopper in Gluon, with the structure of the Gluon forward (hopper_forward.py):
a loader warp and two consumer warpgroups.

One program takes 128 keys of one key/value head; each consumer warpgroup owns 64 of them and keeps their dK and dV
in registers, while the loader warp streams the query blocks of every query head of the GQA group (Q and dO, BLOCK_M
rows each, with their rows' LSE and Delta) into a ring of STAGES shared-memory buffers through TMA; a buffer is
refilled once both groups have used it. Per query block a warpgroup works in the transposed orientation, so that
P^T and dS^T come out of the matmuls in the registers that the next matmuls read them from:

    S^T = K Q^T and dP^T = V dO^T (issued together), P^T = exp2(S^T - LSE) (while dP^T is still in flight),
    dV += P^T dO, dS^T = P^T * (dP^T - Delta), dK += dS^T Q.

LSE is the forward's, in log2 units; Delta = rowsum(dO * O) is written by backward.py's dQ kernel (or, with
FUSED_DQ, its Delta kernel), launched first. Both are read as one flat row of (B * H) rows of stride_rows values
(TMA reads them in 16-byte steps): rows past SQ read the next head's, and are masked. dK leaves scaled by the
softmax scale; with softcap, dS^T is multiplied by 1 - tanh^2 of the capped score.

Above head size 128 one group's dK and dV of 64 keys x 256 would take all of its registers, so a program takes 64
keys and the two groups split the gradients rather than the keys: group 0 computes S^T = K Q^T, P^T and
dV += P^T dO, and hands P^T (as dS^T takes it) to group 1 through shared memory; group 1 computes dP^T = V dO^T,
dS^T and dK += dS^T Q. Each group issues two matmuls per block, the second from registers with N = 256 (the
widest, whose operands cost the least shared-memory bandwidth per FLOP), and only P^T crosses between them.

FUSED_DQ: the kernel also writes dQ, so that the backward runs five matmuls per block instead of the seven of this
kernel and backward.py's dQ kernel (which computes S and dP once more): each group's dS^T goes to shared memory
(dK += dS^T Q reads it there), the two groups meet at a barrier, and each computes half of dQ's columns over all
128 keys, dS K, 32 columns at a time, into float32 tiles in shared memory; a writer warp adds them to a float32
buffer by TMA reductions (the consumers neither issue nor wait for them). ops.py scales the sum into dQ.

Scope (ops.py sends every other input to backward.py): fp16/bf16, head sizes 64, 128 and 256 (FUSED_DQ: 64 and
128), causal (aligned to the last key) or not, GQA, any scale, a padding mask (its per-key form read in batch rows
whose kept keys have gaps), a sliding window, logit softcapping, packed documents; no dropout.
"""
from triton._C.libtriton import ir
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language._core import builtin
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from .hopper_forward import (CONSUMER_REGISTERS, LOADER_REGISTERS, ROWS_PER_GROUP, _tma_load, barriers,
                             hardware_tanh, load_block, mma_layout, padding_range,
                             register_operand, warpgroup_barrier)
from .tiles import LOG2E


@gluon.constexpr_function
def keys_per_program(head_dim):
    """128 keys (64 per consumer group) up to head size 128; 64 above, where the two groups share the keys and split
    the gradients (one group's dV or dK of 64 keys x 256 already takes 128 registers a thread)."""
    return 64 if head_dim > 128 else 128


@gluon.jit
def _query_range(shape, mask, BLOCK_M: gl.constexpr, KEYS: gl.constexpr, CAUSAL: gl.constexpr,
                 HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_DOC: gl.constexpr):
    """The program's first key, its batch row and key/value head, and the query blocks [m_begin, m_begin + n_m) that
    some row of which sees one of its KEYS keys: the same in all partitions, which keeps their barriers in step."""
    H, GROUP, SQ, SKV = shape
    KvLo, KvHi, window, DocStart, stride_doc_b, _, _, _ = mask
    start_n = gl.program_id(0) * KEYS  # the first key blocks see the most rows: they start first
    HK = H // GROUP
    b = gl.program_id(1) // HK
    hk = gl.program_id(1) % HK
    offset = SKV - SQ
    last_n = gl.minimum(start_n + KEYS, SKV) - 1
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
def _loader(io, shape, mask, bufs, BLOCK_M: gl.constexpr, KEYS: gl.constexpr, STAGES: gl.constexpr,
            CAUSAL: gl.constexpr, HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_DOC: gl.constexpr):
    """One warp: the Q and dO blocks of each query head of the group, in the consumers' order, into the ring."""
    q_desc, _, _, do_desc, _, _, lse_desc, delta_desc = io[:8]
    stride_rows = io[11]
    H, GROUP, SQ, _ = shape
    q_ring, do_ring, q_ready, do_ready, empty = bufs[:5]
    lse_ring, delta_ring = bufs[10]
    start_n, b, hk, m_begin, n_m = _query_range(shape, mask, BLOCK_M, KEYS, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_DOC)
    it = 0  # the it-th block goes to stage it % STAGES, its (it // STAGES)-th use
    for g in range(GROUP):
        h = hk * GROUP + g
        for mi in range(n_m):
            stage = it % STAGES
            mbarrier.wait(empty.index(stage), ((it // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
            start_m = (m_begin + mi) * BLOCK_M
            row = (b * H + h) * stride_rows + start_m
            _load_with_rows(q_desc, lse_desc, b, h, start_m, row, q_ready.index(stage), q_ring.index(stage),
                            lse_ring.index(stage))
            _load_with_rows(do_desc, delta_desc, b, h, start_m, row, do_ready.index(stage), do_ring.index(stage),
                            delta_ring.index(stage))
            it += 1


@gluon.jit
def _load_with_rows(desc, row_desc, b, head, start, row, bar, dest, row_dest):
    """A block of Q (or dO) and its rows' LSE (or Delta) from the flat (B * H * SQ) row_desc, on one barrier."""
    mbarrier.expect(bar, desc.block_type.nbytes + row_desc.block_type.nbytes)
    _tma_load(desc, [b, head, start, 0], bar, dest)
    _tma_load(row_desc, [row], bar, row_dest)


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
        keep = key_ok[:, None] & (offs_m[None, :] < SQ)  # rows past SQ read the next head's LSE and Delta
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
              HAS_DOC: gl.constexpr, SOFTCAP: gl.constexpr, FUSED_DQ: gl.constexpr, GROUP_ID: gl.constexpr):
    """One warpgroup: up to head size 128, dK and dV of its 64 keys (and their share of dQ); above, of the program's
    64 keys, dV (group 0) or dK (group 1)."""
    if keys_per_program(HEAD_DIM) == 2 * ROWS_PER_GROUP:
        _dk_and_dv_group(io, shape, mask, score, bufs, HEAD_DIM, BLOCK_M, STAGES, CAUSAL, HAS_PADDING, HAS_WINDOW,
                         HAS_HOLES, HAS_DOC, SOFTCAP, FUSED_DQ, GROUP_ID)
    elif GROUP_ID == 0:
        _dv_group(io, shape, mask, score, bufs, HEAD_DIM, BLOCK_M, STAGES, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES,
                  HAS_DOC, SOFTCAP)
    else:
        _dk_group(io, shape, mask, score, bufs, HEAD_DIM, BLOCK_M, STAGES, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_DOC)


@gluon.jit
def _key_masks(shape, mask, start_n, b, BLOCK_M: gl.constexpr, CAUSAL: gl.constexpr, HAS_PADDING: gl.constexpr,
               HAS_WINDOW: gl.constexpr, HAS_HOLES: gl.constexpr, HAS_DOC: gl.constexpr, keys_s: gl.constexpr):
    """For the 64 keys from start_n: their indices, which of them a padding mask leaves (key_ok), and the rows
    [full_lo, full_hi) that see all of them: a query block reaching out of it, or any block where the keys are
    partly padding or the padding mask has gaps, is masked. rows = (offset, window, doc_base, SQ), as
    _probabilities takes them."""
    H, GROUP, SQ, SKV = shape
    KvLo, KvHi, window, DocStart, stride_doc_b, Holes, KeyKeep, stride_keep_b = mask
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
    return offs_n, key_ok, full_lo, full_hi, (offset, window, doc_base, SQ)


@gluon.jit
def _dk_and_dv_group(io, shape, mask, score, bufs, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr,
                     STAGES: gl.constexpr, CAUSAL: gl.constexpr, HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr,
                     HAS_HOLES: gl.constexpr, HAS_DOC: gl.constexpr, SOFTCAP: gl.constexpr, FUSED_DQ: gl.constexpr,
                     GROUP_ID: gl.constexpr):
    """Up to head size 128: dK and dV of this group's 64 of the program's 128 keys (and its share of dQ)."""
    _, k_desc, v_desc, _, DK, DV, _, _, dk_strides, dv_strides, dq_desc, _ = io
    H, GROUP, SQ, SKV = shape
    q_ring, do_ring, q_ready, do_ready, empty, k_smem, v_smem, kv_ready, ds_bufs, dq_bufs, row_rings = bufs
    lse_ring, delta_ring = row_rings
    dtype: gl.constexpr = k_desc.dtype
    s_layout: gl.constexpr = mma_layout(BLOCK_M)
    kv_layout: gl.constexpr = mma_layout(HEAD_DIM)
    op_layout: gl.constexpr = register_operand(HEAD_DIM)
    rows_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, DQ_COLUMNS, 16])

    start_n, b, hk, m_begin, n_m = _query_range(shape, mask, BLOCK_M, 2 * ROWS_PER_GROUP, CAUSAL, HAS_PADDING,
                                                HAS_WINDOW, HAS_DOC)
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
        offs_n, key_ok, full_lo, full_hi, rows = _key_masks(shape, mask, start_n, b, BLOCK_M, CAUSAL, HAS_PADDING,
                                                            HAS_WINDOW, HAS_HOLES, HAS_DOC,
                                                            gl.SliceLayout(1, s_layout))
        s_zero = gl.zeros([ROWS_PER_GROUP, BLOCK_M], gl.float32, s_layout)
        mbarrier.wait(kv_ready.index(2 * GROUP_ID), 0)
        mbarrier.wait(kv_ready.index(2 * GROUP_ID + 1), 0)

        it = 0
        for g in range(GROUP):
            for mi in range(n_m):
                start_m = (m_begin + mi) * BLOCK_M
                stage = it % STAGES
                phase = (it // STAGES) & 1
                q = q_ring.index(stage).reshape([BLOCK_M, HEAD_DIM])
                do = do_ring.index(stage).reshape([BLOCK_M, HEAD_DIM])
                mbarrier.wait(q_ready.index(stage), phase)
                lse = lse_ring.index(stage).load(rows_s)
                qk = warpgroup_mma(k, q.permute((1, 0)), s_zero, use_acc=False, is_async=True)
                mbarrier.wait(do_ready.index(stage), phase)
                delta = delta_ring.index(stage).load(rows_s)
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
                if FUSED_DQ:
                    dv, dk = _dk_and_dq(dv, dk, p_op, (p_ds * dp).to(dtype), q, k_smem, ds_bufs, it,
                                        empty.index(stage), dq_bufs, HEAD_DIM, BLOCK_M, dq_layout, GROUP_ID)
                else:
                    ds_op = gl.convert_layout((p_ds * dp).to(dtype), op_layout)
                    dk = warpgroup_mma(ds_op, q, dk, is_async=True)
                    dv, dk, p_op, ds_op = warpgroup_mma_wait(num_outstanding=0, deps=(dv, dk, p_op, ds_op))
                    mbarrier.arrive(empty.index(stage), count=1)
                it += 1

    _store(DK, dk_strides, b, hk, start_n, (dk * score[1]).to(dtype), SKV, kv_layout)
    _store(DV, dv_strides, b, hk, start_n, dv.to(dtype), SKV, kv_layout)


@gluon.jit
def _dv_group(io, shape, mask, score, bufs, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr,
              CAUSAL: gl.constexpr, HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_HOLES: gl.constexpr,
              HAS_DOC: gl.constexpr, SOFTCAP: gl.constexpr):
    """Above head size 128, group 0: per query block S^T = K Q^T, P^T and dV += P^T dO (P^T from registers); P^T as
    dS^T takes it goes to group 1 through shared memory (p_bufs: two buffers by block parity, each with a full and a
    free barrier)."""
    _, k_desc, _, _, _, DV, _, _, _, dv_strides, _, _ = io
    H, GROUP, SQ, SKV = shape
    q_ring, do_ring, q_ready, do_ready, empty, k_smem, _, kv_ready, p_bufs, _, row_rings = bufs
    p_smem, p_full, p_free = p_bufs
    lse_ring = row_rings[0]
    dtype: gl.constexpr = k_desc.dtype
    s_layout: gl.constexpr = mma_layout(BLOCK_M)
    kv_layout: gl.constexpr = mma_layout(HEAD_DIM)
    op_layout: gl.constexpr = register_operand(HEAD_DIM)

    start_n, b, hk, m_begin, n_m = _query_range(shape, mask, BLOCK_M, ROWS_PER_GROUP, CAUSAL, HAS_PADDING,
                                                HAS_WINDOW, HAS_DOC)
    dv = gl.zeros([ROWS_PER_GROUP, HEAD_DIM], gl.float32, kv_layout)
    if n_m > 0:
        load_block(k_desc, b, hk, start_n, kv_ready.index(0), k_smem.index(0))
        k = k_smem.index(0).reshape([ROWS_PER_GROUP, HEAD_DIM])
        offs_n, key_ok, full_lo, full_hi, rows = _key_masks(shape, mask, start_n, b, BLOCK_M, CAUSAL, HAS_PADDING,
                                                            HAS_WINDOW, HAS_HOLES, HAS_DOC,
                                                            gl.SliceLayout(1, s_layout))
        s_zero = gl.zeros([ROWS_PER_GROUP, BLOCK_M], gl.float32, s_layout)
        mbarrier.wait(kv_ready.index(0), 0)

        it = 0
        for g in range(GROUP):
            for mi in range(n_m):
                start_m = (m_begin + mi) * BLOCK_M
                stage = it % STAGES
                phase = (it // STAGES) & 1
                mbarrier.wait(q_ready.index(stage), phase)
                lse = lse_ring.index(stage).load(gl.SliceLayout(0, s_layout))
                q = q_ring.index(stage).reshape([BLOCK_M, HEAD_DIM])
                qk = warpgroup_mma(k, q.permute((1, 0)), s_zero, use_acc=False, is_async=True)
                qk = warpgroup_mma_wait(num_outstanding=0, deps=(qk,))
                masked = (start_m < full_lo) | (start_m + BLOCK_M > full_hi)
                p, p_ds = _probabilities(qk, lse, offs_n, start_m, masked, key_ok, rows, score, BLOCK_M, CAUSAL,
                                         HAS_WINDOW, HAS_DOC, SOFTCAP, s_layout)
                buf = it % 2
                mbarrier.wait(p_free.index(buf), ((it // 2) & 1) ^ 1)  # a fresh barrier passes parity 1
                p_smem.index(buf).store(p_ds.to(dtype))
                warpgroup_barrier()  # every thread's part of P^T written before group 1 is told
                mbarrier.arrive(p_full.index(buf), count=1)
                p_op = gl.convert_layout(p.to(dtype), op_layout)
                mbarrier.wait(do_ready.index(stage), phase)
                dv = warpgroup_mma(p_op, do_ring.index(stage).reshape([BLOCK_M, HEAD_DIM]), dv, is_async=True)
                dv, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(dv, p_op))
                mbarrier.arrive(empty.index(stage), count=1)
                it += 1

    _store(DV, dv_strides, b, hk, start_n, dv.to(dtype), SKV, kv_layout)


@gluon.jit
def _dk_group(io, shape, mask, score, bufs, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr,
              CAUSAL: gl.constexpr, HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_DOC: gl.constexpr):
    """Above head size 128, group 1: per query block dP^T = V dO^T (its accumulator starting at -Delta), dS^T from
    group 0's P^T, and dK += dS^T Q (dS^T from registers)."""
    _, _, v_desc, _, DK, _, _, _, dk_strides, _, _, _ = io
    H, GROUP, SQ, SKV = shape
    q_ring, do_ring, q_ready, do_ready, empty, _, v_smem, kv_ready, p_bufs, _, row_rings = bufs
    p_smem, p_full, p_free = p_bufs
    delta_ring = row_rings[1]
    dtype: gl.constexpr = v_desc.dtype
    s_layout: gl.constexpr = mma_layout(BLOCK_M)
    kv_layout: gl.constexpr = mma_layout(HEAD_DIM)
    op_layout: gl.constexpr = register_operand(HEAD_DIM)

    start_n, b, hk, m_begin, n_m = _query_range(shape, mask, BLOCK_M, ROWS_PER_GROUP, CAUSAL, HAS_PADDING,
                                                HAS_WINDOW, HAS_DOC)
    dk = gl.zeros([ROWS_PER_GROUP, HEAD_DIM], gl.float32, kv_layout)
    if n_m > 0:
        load_block(v_desc, b, hk, start_n, kv_ready.index(1), v_smem.index(0))
        v = v_smem.index(0).reshape([ROWS_PER_GROUP, HEAD_DIM])
        s_zero = gl.zeros([ROWS_PER_GROUP, BLOCK_M], gl.float32, s_layout)
        mbarrier.wait(kv_ready.index(1), 0)

        it = 0
        for g in range(GROUP):
            for mi in range(n_m):
                stage = it % STAGES
                phase = (it // STAGES) & 1
                mbarrier.wait(do_ready.index(stage), phase)
                delta = delta_ring.index(stage).load(gl.SliceLayout(0, s_layout))
                do = do_ring.index(stage).reshape([BLOCK_M, HEAD_DIM])
                dp = warpgroup_mma(v, do.permute((1, 0)), s_zero - delta[None, :], is_async=True)
                buf = it % 2
                mbarrier.wait(p_full.index(buf), (it // 2) & 1)
                p_ds = p_smem.index(buf).load(s_layout)
                warpgroup_barrier()  # every thread has read P^T before group 0 may write the buffer again
                mbarrier.arrive(p_free.index(buf), count=1)
                dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp,))
                ds_op = gl.convert_layout((p_ds.to(gl.float32) * dp).to(dtype), op_layout)
                mbarrier.wait(q_ready.index(stage), phase)
                dk = warpgroup_mma(ds_op, q_ring.index(stage).reshape([BLOCK_M, HEAD_DIM]), dk, is_async=True)
                dk, ds_op = warpgroup_mma_wait(num_outstanding=0, deps=(dk, ds_op))
                mbarrier.arrive(empty.index(stage), count=1)
                it += 1

    _store(DK, dk_strides, b, hk, start_n, (dk * score[1]).to(dtype), SKV, kv_layout)


DQ_COLUMNS = gl.constexpr(32)  # dQ's columns per matmul and reduction: 128 bytes of float32, TMA's swizzle width


@builtin
def tma_reduce_add(desc, coord, src, _semantic=None):
    """Adds the shared-memory tile src to desc's global tile at coord: an asynchronous TMA bulk reduction, waited for
    by tma.store_wait. Triton 3.9's Gluon names it tma.async_atomic_add; 3.6, the device's, has the op but no name."""
    handles = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, desc.handle, handles, src.handle)


@gluon.jit
def _dk_and_dq(dv, dk, p_op, ds, q, k_smem, ds_bufs, it, stage_empty, dq_bufs, HEAD_DIM: gl.constexpr,
               BLOCK_M: gl.constexpr, dq_layout: gl.constexpr, GROUP_ID: gl.constexpr):
    """dK += dS^T Q, and this group's half of dQ's columns over both groups' keys, dS K, staged for the writer;
    releases the ring stage once Q and dO are read. dV += P^T dO is in flight on entry. ds_bufs: (dS^T buffers, 2
    per group by block parity, and their full and free barriers, 2 arrivals each). dq_bufs: (both groups' float32
    tiles of dQ, and each group's full and free barriers for the writer)."""
    ds_smem, ds_full, ds_free = ds_bufs
    dq_stage, dq_full, dq_free = dq_bufs
    parity = it % 2
    use = (it // 2) & 1
    mine = ds_smem.index(2 * parity + GROUP_ID)
    mbarrier.wait(ds_free.index(parity), use ^ 1)  # both groups are done with this buffer (a fresh barrier passes)
    mine.store(ds)
    fence_async_shared()
    warpgroup_barrier()  # every thread's part of dS^T written before the other group is told
    mbarrier.arrive(ds_full.index(parity), count=1)
    dk = warpgroup_mma(mine, q, dk, is_async=True)
    mbarrier.wait(ds_full.index(parity), use)
    zero = gl.zeros([BLOCK_M, DQ_COLUMNS], gl.float32, dq_layout)
    half: gl.constexpr = HEAD_DIM // 2
    for c in gl.static_range(half // DQ_COLUMNS):
        dq = zero
        for g in gl.static_range(2):
            k_g = k_smem.index(g).reshape([ROWS_PER_GROUP, HEAD_DIM]).slice(GROUP_ID * half + c * DQ_COLUMNS,
                                                                                  DQ_COLUMNS, dim=1)
            dq = warpgroup_mma(ds_smem.index(2 * parity + g).permute((1, 0)), k_g, dq, use_acc=g > 0,
                               is_async=True)
        if c == 0:
            dv, dk, p_op, dq = warpgroup_mma_wait(num_outstanding=0, deps=(dv, dk, p_op, dq))
            mbarrier.arrive(stage_empty, count=1)
        else:
            dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq,))
        if c == half // DQ_COLUMNS - 1:
            mbarrier.arrive(ds_free.index(parity), count=1)
        if c == 0:  # the writer's reductions of the previous block have read the staging tiles
            mbarrier.wait(dq_free.index(GROUP_ID), (it & 1) ^ 1)
        dq_stage.index(GROUP_ID * (half // DQ_COLUMNS) + c).store(dq)
    fence_async_shared()
    warpgroup_barrier()  # every thread's part of the tiles written before the writer is told
    mbarrier.arrive(dq_full.index(GROUP_ID), count=1)
    return dv, dk


@gluon.jit
def _writer(io, shape, mask, dq_bufs, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, CAUSAL: gl.constexpr,
            HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_DOC: gl.constexpr):
    """One warp: adds each group's staged dQ tiles to the float32 buffer by TMA reductions as soon as the group has
    written them, and frees the group's tiles once the reductions have read them, so that the consumers neither
    issue nor wait for the reductions."""
    dq_desc = io[10]
    H, GROUP, SQ, _ = shape
    dq_stage, dq_full, dq_free = dq_bufs
    _, b, hk, m_begin, n_m = _query_range(shape, mask, BLOCK_M, 2 * ROWS_PER_GROUP, CAUSAL, HAS_PADDING, HAS_WINDOW,
                                          HAS_DOC)
    tiles: gl.constexpr = HEAD_DIM // 2 // DQ_COLUMNS  # per group
    it = 0
    for g in range(GROUP):
        for mi in range(n_m):
            row = (b * H + hk * GROUP + g) * SQ + (m_begin + mi) * BLOCK_M
            for group in gl.static_range(2):
                mbarrier.wait(dq_full.index(group), it & 1)
                for c in gl.static_range(tiles):
                    tile = group * tiles + c
                    tma_reduce_add(dq_desc, [row, tile * DQ_COLUMNS], dq_stage.index(tile))
            tma.store_wait(pendings=tiles)
            mbarrier.arrive(dq_free.index(0), count=1)
            tma.store_wait(pendings=0)
            mbarrier.arrive(dq_free.index(1), count=1)
            it += 1


@gluon.jit
def _store(X, strides, b, hk, start_n, value, SKV, layout: gl.constexpr):
    """value, the (64, D) gradient of the keys from start_n, into X (B, HK, SKV, D); keys past SKV left out."""
    stride_b, stride_h, stride_n = strides
    keys = start_n + gl.arange(0, ROWS_PER_GROUP, layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, value.shape[1], layout=gl.SliceLayout(0, layout))
    ptrs = X + b.to(gl.int64) * stride_b + hk.to(gl.int64) * stride_h + keys[:, None] * stride_n + cols[None, :]
    gl.store(ptrs, value, mask=keys[:, None] < SKV)


@gluon.jit
def attention_bwd_dkdv_hopper_kernel(
        q_desc, k_desc, v_desc, do_desc, dq_desc, DK, DV, lse_desc, delta_desc, KvLo, KvHi, Holes, KeyKeep, DocStart,
        qk_scale, sm_scale, softcap, window,
        stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn, stride_keep_b, stride_doc_b,
        stride_rows, H, GROUP, SQ, SKV,
        HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
        HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_HOLES: gl.constexpr, HAS_DOC: gl.constexpr,
        SOFTCAP: gl.constexpr, FUSED_DQ: gl.constexpr):
    """Launched with num_warps=4 (the first consumer group); the second group, the loader and (with FUSED_DQ) the
    writer are added warps. q_desc and do_desc read (1, 1, BLOCK_M, HEAD_DIM) tiles of Q and dO (B, H, SQ, D),
    k_desc and v_desc (1, 1, 64, HEAD_DIM) tiles of K and V (B, HK, SKV, D); DK, DV (B, HK, SKV, D) with the given
    strides; lse_desc and delta_desc read BLOCK_M float32 values of LSE and Delta, flat (B * H) rows of stride_rows;
    with FUSED_DQ dq_desc adds (BLOCK_M, 32) tiles to a zeroed float32 (B * H * SQ, D) buffer (else it is not
    used); the mask arguments as hopper_forward.py takes them; grid (cdiv(SKV, keys_per_program(HEAD_DIM)), B * HK)."""
    dtype: gl.constexpr = q_desc.dtype
    KEYS: gl.constexpr = keys_per_program(HEAD_DIM)
    SPLIT: gl.constexpr = KEYS == ROWS_PER_GROUP  # the groups share the keys: one K and one V block
    gl.static_assert(not (SPLIT and FUSED_DQ), "dQ is written from the kernel up to head size 128")
    q_ring = gl.allocate_shared_memory(dtype, [STAGES] + q_desc.block_type.shape, q_desc.layout)
    do_ring = gl.allocate_shared_memory(dtype, [STAGES] + do_desc.block_type.shape, do_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [KEYS // ROWS_PER_GROUP] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [KEYS // ROWS_PER_GROUP] + v_desc.block_type.shape, v_desc.layout)
    lse_ring = gl.allocate_shared_memory(gl.float32, [STAGES] + lse_desc.block_type.shape, lse_desc.layout)
    delta_ring = gl.allocate_shared_memory(gl.float32, [STAGES] + delta_desc.block_type.shape, delta_desc.layout)
    q_ready = barriers(STAGES, 1)
    do_ready = barriers(STAGES, 1)
    empty = barriers(STAGES, 2)  # both consumer groups release a buffer
    kv_ready = barriers(4, 1)
    if FUSED_DQ:  # each group's dS^T, two per group by block parity, and their barriers
        ds_smem = gl.allocate_shared_memory(dtype, [4, ROWS_PER_GROUP, BLOCK_M],
                                            gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2))
        ds_bufs = (ds_smem, barriers(2, 2), barriers(2, 2))
        dq_stages = gl.allocate_shared_memory(gl.float32, [HEAD_DIM // DQ_COLUMNS] + dq_desc.block_type.shape,
                                              dq_desc.layout)  # the first group's half of the columns, then the other's
        dq_bufs = (dq_stages, barriers(2, 1), barriers(2, 1))  # full and free per group, for the writer
    elif SPLIT:  # group 0's P^T for group 1, two buffers by block parity, with their full and free barriers
        p_smem = gl.allocate_shared_memory(dtype, [2, ROWS_PER_GROUP, BLOCK_M],
                                           gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2))
        ds_bufs = (p_smem, barriers(2, 1), barriers(2, 1))
        dq_bufs = k_smem  # not used
    else:
        ds_bufs = k_smem  # not used
        dq_bufs = k_smem

    io = (q_desc, k_desc, v_desc, do_desc, DK, DV, lse_desc, delta_desc, (stride_dkb, stride_dkh, stride_dkn),
          (stride_dvb, stride_dvh, stride_dvn), dq_desc, stride_rows)
    shape = (H, GROUP, SQ, SKV)
    mask = (KvLo, KvHi, window, DocStart, stride_doc_b, Holes, KeyKeep, stride_keep_b)
    score = (qk_scale, sm_scale, softcap)
    bufs = (q_ring, do_ring, q_ready, do_ready, empty, k_smem, v_smem, kv_ready, ds_bufs, dq_bufs,
            (lse_ring, delta_ring))
    if FUSED_DQ:
        gl.warp_specialize([
            (_consumer, (io, shape, mask, score, bufs, HEAD_DIM, BLOCK_M, STAGES, CAUSAL, HAS_PADDING, HAS_WINDOW,
                         HAS_HOLES, HAS_DOC, SOFTCAP, FUSED_DQ, 0)),
            (_consumer, (io, shape, mask, score, bufs, HEAD_DIM, BLOCK_M, STAGES, CAUSAL, HAS_PADDING, HAS_WINDOW,
                         HAS_HOLES, HAS_DOC, SOFTCAP, FUSED_DQ, 1)),
            (_loader, (io, shape, mask, bufs, BLOCK_M, KEYS, STAGES, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_DOC)),
            (_writer, (io, shape, mask, dq_bufs, HEAD_DIM, BLOCK_M, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_DOC)),
        ], [4, 1, 1], [CONSUMER_REGISTERS, LOADER_REGISTERS, LOADER_REGISTERS])
    else:
        gl.warp_specialize([
            (_consumer, (io, shape, mask, score, bufs, HEAD_DIM, BLOCK_M, STAGES, CAUSAL, HAS_PADDING, HAS_WINDOW,
                         HAS_HOLES, HAS_DOC, SOFTCAP, FUSED_DQ, 0)),
            (_consumer, (io, shape, mask, score, bufs, HEAD_DIM, BLOCK_M, STAGES, CAUSAL, HAS_PADDING, HAS_WINDOW,
                         HAS_HOLES, HAS_DOC, SOFTCAP, FUSED_DQ, 1)),
            (_loader, (io, shape, mask, bufs, BLOCK_M, KEYS, STAGES, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_DOC)),
        ], [4, 1], [CONSUMER_REGISTERS, LOADER_REGISTERS])
