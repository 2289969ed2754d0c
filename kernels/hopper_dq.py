"""dQ on Hopper in Gluon, with the Gluon forward's structure (hopper_forward.py).

Once the dK/dV pass runs in Gluon (hopper_backward.py), backward.py's dQ kernel, written with tl.dot, takes half of
the backward's time (benchmarks/NOTES.md entry 18). Here one program takes 128 query rows of one head and runs three
partitions: the forward's loader warp streams K and V blocks into rings of STAGES buffers, and two consumer
warpgroups take 64 rows each, with their Q and dO blocks in shared memory and dQ in registers. Per key block a
warpgroup issues

    S = Q K^T and dP = dO V^T together (dP's accumulator starts at -Delta), takes P = exp2(S - LSE) while dP is
    still in flight, then dS = P * (dP - Delta) and dQ += dS K, dS from registers.

A V buffer is released once both groups' dP has run, a K buffer once their dQ += dS K has. Delta = rowsum(dO * O)
of a group's rows is worked out before its key loop, from its dO tile and O read from global memory while Q and dO
load, and written for the dK/dV kernel, which runs next (so no Delta kernel is launched); LSE is the forward's, in
log2 units (+inf where a row saw no key: its P is 0). dQ leaves scaled by the softmax scale; with softcap, dS is
multiplied by 1 - tanh^2 of the capped score. Scope: as hopper_backward.py's (ops launches it at head sizes 128 and
256).
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from .hopper_forward import (CONSUMER_REGISTERS, LOADER_REGISTERS, ROWS_PER_GROUP, _loader, _tma_load, barriers,
                             group_tile, hardware_tanh, masked_block, mma_layout, register_operand, row_masks, visible)
from .tiles import LOG2E


@gluon.constexpr_function
def row_tile_layout(head_dim):
    """A warpgroup's (64, head_dim) tile in 16-byte pieces, a row's pieces over neighbouring threads (coalesced)."""
    return gl.BlockedLayout([1, 8], [32 // (head_dim // 8), head_dim // 8], [4, 1], [1, 0])


@gluon.jit
def _ds_factor(qk, lse, start_n, offs_m, rows, score, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr,
               HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_HOLES: gl.constexpr, HAS_DOC: gl.constexpr,
               SOFTCAP: gl.constexpr, s_layout: gl.constexpr):
    """P of a (rows, keys) block, times the softcap's derivative 1 - tanh^2 with softcap: dS = this * (dP - Delta).
    Hidden pairs are 0 (rows: hopper_forward.row_masks')."""
    qk_scale, sm_scale, softcap = score
    if SOFTCAP:
        t = hardware_tanh(qk * (sm_scale / softcap))
        p = gl.exp2(t * (softcap * LOG2E) - lse[:, None])
    else:
        p = gl.exp2(qk * qk_scale - lse[:, None])
    if masked_block(start_n, rows, BLOCK_N):
        p = gl.where(visible(start_n, offs_m, rows, BLOCK_N, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC,
                             s_layout), p, 0.0)
    if SOFTCAP:
        return p * (1.0 - t * t)
    return p


@gluon.jit
def _consumer(io, shape, tiles, mask, score, bufs, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
              STAGES: gl.constexpr, CAUSAL: gl.constexpr, HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr,
              HAS_HOLES: gl.constexpr, HAS_DOC: gl.constexpr, SOFTCAP: gl.constexpr, GROUP_ID: gl.constexpr):
    """One warpgroup: dQ of 64 query rows of the program's tile over its key blocks."""
    q_desc, _, _, do_desc, DQ, Lse, Delta, dq_strides, O, o_strides = io
    _, _, SQ, SKV = shape
    q_smem, k_ring, v_ring, q_ready, k_ready, v_ready, k_empty, v_empty, do_smem = bufs
    dtype: gl.constexpr = q_desc.dtype
    s_layout: gl.constexpr = mma_layout(BLOCK_N)
    dq_layout: gl.constexpr = mma_layout(HEAD_DIM)
    ds_layout: gl.constexpr = register_operand(HEAD_DIM)
    rows_s: gl.constexpr = gl.SliceLayout(1, s_layout)

    bh, b, h, start_m, n_begin, n_blocks = group_tile(gl.program_id(0), shape, tiles, mask, BLOCK_N, CAUSAL,
                                                      HAS_PADDING, HAS_WINDOW, HAS_DOC, GROUP_ID)
    offs_m = start_m + gl.arange(0, ROWS_PER_GROUP, layout=rows_s)
    dq = gl.zeros([ROWS_PER_GROUP, HEAD_DIM], gl.float32, dq_layout)
    row = bh.to(gl.int64) * SQ + offs_m
    if n_blocks > 0:
        rows = row_masks(shape, mask, start_m, b, offs_m, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC)
        ready = q_ready.index(GROUP_ID)
        mbarrier.expect(ready, q_desc.block_type.nbytes + do_desc.block_type.nbytes)
        _tma_load(q_desc, [b, h, start_m, 0], ready, q_smem.index(GROUP_ID))
        _tma_load(do_desc, [b, h, start_m, 0], ready, do_smem.index(GROUP_ID))
        q = q_smem.index(GROUP_ID).reshape([ROWS_PER_GROUP, HEAD_DIM])
        do = do_smem.index(GROUP_ID).reshape([ROWS_PER_GROUP, HEAD_DIM])
        lse = gl.load(Lse + row, mask=offs_m < SQ, other=float("inf"))  # rows past SQ: P = 0
        tile: gl.constexpr = row_tile_layout(HEAD_DIM)
        stride_ob, stride_oh, stride_om = o_strides
        rows_o = start_m + gl.arange(0, ROWS_PER_GROUP, layout=gl.SliceLayout(1, tile))
        cols_o = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, tile))
        o = gl.load(O + b.to(gl.int64) * stride_ob + h.to(gl.int64) * stride_oh + rows_o[:, None] * stride_om
                    + cols_o[None, :], mask=rows_o[:, None] < SQ, other=0.0)
        s_zero = gl.zeros([ROWS_PER_GROUP, BLOCK_N], gl.float32, s_layout)
        mbarrier.wait(ready, 0)
        # Delta = rowsum(dO * O) in float32, as backward.py's Delta kernel sums it (dO's rows past SQ are TMA's 0)
        delta = gl.convert_layout(gl.sum(o.to(gl.float32) * do.load(tile).to(gl.float32), axis=1), rows_s)
        gl.store(Delta + row, delta, mask=offs_m < SQ)

        for i in range(n_blocks):
            stage = i % STAGES
            phase = (i // STAGES) & 1
            start_n = (n_begin + i) * BLOCK_N
            k = k_ring.index(stage).reshape([BLOCK_N, HEAD_DIM])
            mbarrier.wait(k_ready.index(stage), phase)
            qk = warpgroup_mma(q, k.permute((1, 0)), s_zero, use_acc=False, is_async=True)
            mbarrier.wait(v_ready.index(stage), phase)
            # dP - Delta straight from the matmul (its accumulator starts at -Delta).
            dp = warpgroup_mma(do, v_ring.index(stage).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)),
                               s_zero - delta[:, None], is_async=True)
            qk = warpgroup_mma_wait(num_outstanding=1, deps=(qk,))
            # The exponentials sit in a branch that is always taken, so that they run while dP is in flight (ptxas
            # would otherwise wait for both matmuls at once, as in hopper_forward.py).
            if SKV > 0:
                factor = _ds_factor(qk, lse, start_n, offs_m, rows, score, BLOCK_N, CAUSAL, HAS_PADDING, HAS_WINDOW,
                                    HAS_HOLES, HAS_DOC, SOFTCAP, s_layout)
            else:
                factor = qk
            dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp,))
            mbarrier.arrive(v_empty.index(stage), count=1)
            ds = gl.convert_layout((factor * dp).to(dtype), ds_layout)
            dq = warpgroup_mma(ds, k, dq, is_async=True)
            dq, ds = warpgroup_mma_wait(num_outstanding=0, deps=(dq, ds))
            mbarrier.arrive(k_empty.index(stage), count=1)
    else:  # rows that see no key: P is 0 there, but the dK/dV kernel multiplies Delta by it, so not memory's garbage
        gl.store(Delta + row, gl.zeros([ROWS_PER_GROUP], gl.float32, rows_s), mask=offs_m < SQ)

    stride_b, stride_h, stride_m = dq_strides
    rows_dq = start_m + gl.arange(0, ROWS_PER_GROUP, layout=gl.SliceLayout(1, dq_layout))
    cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, dq_layout))
    ptrs = DQ + b.to(gl.int64) * stride_b + h.to(gl.int64) * stride_h + rows_dq[:, None] * stride_m + cols[None, :]
    gl.store(ptrs, (dq * score[1]).to(dtype), mask=rows_dq[:, None] < SQ)


@gluon.jit
def attention_bwd_dq_hopper_kernel(
        q_desc, k_desc, v_desc, do_desc, DQ, O, Lse, Delta, KvLo, KvHi, Holes, KeyKeep, DocStart,
        qk_scale, sm_scale, softcap, window, stride_dqb, stride_dqh, stride_dqm, stride_ob, stride_oh, stride_om,
        stride_keep_b, stride_doc_b,
        H, GROUP, SQ, SKV, BH, SECTION,
        HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
        HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_HOLES: gl.constexpr, HAS_DOC: gl.constexpr,
        SOFTCAP: gl.constexpr):
    """Launched with num_warps=4 (the first consumer group); the second group and the loader are added warps.
    q_desc and do_desc read (1, 1, 64, HEAD_DIM) tiles of Q and dO (B, H, SQ, D), k_desc and v_desc
    (1, 1, BLOCK_N, HEAD_DIM) tiles of K and V (B, HK, SKV, D); DQ and the forward's output O (B, H, SQ, D) with
    the given strides; Lse (B, H, SQ) float32, Delta (B, H, SQ) float32 written here; the mask arguments, BH = B * H
    and SECTION as hopper_forward.py takes them; grid (cdiv(SQ, 128) * B * H,): one program per tile, the tiles in
    hopper_forward.py's order."""
    gl.static_assert(STAGES >= 2, "a group reads K and V of one block while the next block loads")
    dtype: gl.constexpr = q_desc.dtype
    q_smem = gl.allocate_shared_memory(dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    do_smem = gl.allocate_shared_memory(dtype, [2] + do_desc.block_type.shape, do_desc.layout)
    k_ring = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_ring = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_ready = barriers(2, 1)  # Q and dO of each group
    k_ready = barriers(STAGES, 1)
    v_ready = barriers(STAGES, 1)
    k_empty = barriers(STAGES, 2)  # both consumer groups release a buffer
    v_empty = barriers(STAGES, 2)

    # io with K's and V's descriptors where the forward's loader reads them
    io = (q_desc, k_desc, v_desc, do_desc, DQ, Lse, Delta, (stride_dqb, stride_dqh, stride_dqm), O,
          (stride_ob, stride_oh, stride_om))
    shape = (H, GROUP, SQ, SKV)
    mask = (KvLo, KvHi, window, DocStart, stride_doc_b, Holes, KeyKeep, stride_keep_b)
    score = (qk_scale, sm_scale, softcap)
    tiles = (BH, SECTION)
    bufs = (q_smem, k_ring, v_ring, q_ready, k_ready, v_ready, k_empty, v_empty, do_smem)
    gl.warp_specialize([
        (_consumer, (io, shape, tiles, mask, score, bufs, HEAD_DIM, BLOCK_N, STAGES, CAUSAL, HAS_PADDING,
                     HAS_WINDOW, HAS_HOLES, HAS_DOC, SOFTCAP, 0)),
        (_consumer, (io, shape, tiles, mask, score, bufs, HEAD_DIM, BLOCK_N, STAGES, CAUSAL, HAS_PADDING,
                     HAS_WINDOW, HAS_HOLES, HAS_DOC, SOFTCAP, 1)),
        (_loader, (io, shape, tiles, mask, (k_ring, v_ring, k_ready, v_ready, k_empty, v_empty), None, BLOCK_N,
                   STAGES, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_DOC, False, 0)),
    ], [4, 1], [CONSUMER_REGISTERS, LOADER_REGISTERS])
