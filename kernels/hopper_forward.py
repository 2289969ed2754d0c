"""The forward on Hopper in Gluon, scheduled as FlashAttention-3 schedules it (Shah et al., 2024).

Triton's `tl.dot` cannot say which warps run the matmuls while others run the softmax: two programs per SM interleave
as the warp schedulers happen to pick them (benchmarks/NOTES.md entries 4 and 8). Gluon, Triton's lower-level
language, writes the schedule out. A tile is 128 query rows of one head; a program takes tiles one after another
(persistent: one program per SM, each drawing its next tile from a shared counter when it is done with the last;
or one tile each) and runs three partitions:

- a loader warp loads each tile's Q and streams K and V blocks into rings of STAGES shared-memory buffers through
  TMA. A K buffer is released once both groups' S = Q K^T has run, a V buffer once their O += P V has, so the next
  K block loads while the previous V block is still read;
- two consumer warpgroups take 64 rows each. They issue their matmuls in turns (ping-pong): a warpgroup waits for
  its turn, issues S_j = Q K_j^T and O += P_{j-1} V_{j-1} asynchronously, and hands the turn over, so that one
  warpgroup's exponentials run while the other's matmuls occupy the tensor cores. Inside a warpgroup the softmax
  of S_j runs while its own O += P V is still in flight (the intra-warpgroup overlap). The blocks of all a
  program's tiles run through that one loop: a tile's last P V goes with the next tile's first Q K^T, and the
  tile's output leaves (through shared memory and TMA stores) while the next one runs.

A program of 9 warps at up to 240 registers fills an SM, so with one program per tile every tile paid for its
program's start, its first loads and its stores with idle tensor cores (short sequences: 4 key blocks a tile at 512
tokens). Persistent, the loader fetches the next tile's Q and blocks while the consumers finish this one. Tiles
drawn in order (heaviest causal rows first) keep the programs' work even where fixed turns (tile t to program t
mod programs) would not: with MHA a program's turns fall on the same few row blocks of every head
(benchmarks/NOTES.md entry 25).

Scope (ops.py sends every other input to forward.py): fp16/bf16, head sizes 64, 128 and 256 (ops sends 128 and 256,
where it measured faster: benchmarks/NOTES.md entry 14), causal (aligned to the last key) or not, GQA, a positive
scale, a padding mask (read per key only in batch rows whose kept keys have gaps), a sliding window, logit
softcapping, packed documents (each row's keys from its document's start on); no dropout.
Outputs are forward.py's: O, and the row log-sum-exp in log2 units (zeros and +inf for a row that sees no key).
"""
import functools

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from .tiles import FIXED_MAX_TOP, LOG2E

# The TMA load's name: async_copy_global_to_shared in Triton 3.6, async_load from 3.7 on (the old name raises there).
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
# The TMA store's likewise: async_copy_shared_to_global in 3.6, async_store from 3.7 on.
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
# A barrier of the calling partition's warps: thread_barrier in 3.6, barrier in 3.9.
warpgroup_barrier = getattr(gl, "barrier", None) or gl.thread_barrier

ROWS_PER_GROUP = gl.constexpr(64)  # query rows per consumer warpgroup; a program takes two
LOADER_REGISTERS = gl.constexpr(24)
CONSUMER_REGISTERS = gl.constexpr(240)


@gluon.constexpr_function
def mma_layout(columns):
    """The layout of one warpgroup's MMA accumulator with the given columns (the MMA's N); 16 rows per warp."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, columns, 16])


@gluon.constexpr_function
def register_operand(columns):
    """The layout of a matmul's first operand held in registers, for an accumulator of the given columns."""
    return gl.DotOperandLayout(operand_index=0, parent=mma_layout(columns), k_width=2)


@gluon.jit
def load_block(desc, b, head, start, bar, dest):
    mbarrier.expect(bar, desc.block_type.nbytes)
    _tma_load(desc, [b, head, start, 0], bar, dest)


@gluon.jit
def barriers(n: gl.constexpr, count: gl.constexpr):
    """n mbarriers, each completing a phase after count arrivals."""
    bars = gl.allocate_shared_memory(gl.int64, [n, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(n):
        mbarrier.init(bars.index(i), count=count)
    return bars


@gluon.jit
def hardware_tanh(x):
    """tanh.approx.f32: one instruction, its relative error (about 2**-11) below the 16-bit inputs' resolution."""
    return gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=gl.float32, is_pure=True, pack=1)


@gluon.jit
def _tile(t, shape, BH, SECTION):
    """Tile t's first query row and batch * head row. Tiles go in sections of SECTION heads (as many as share the L2
    cache, ops.section_heads); inside a section the heaviest causal row blocks (the last rows) of all its heads come
    first: the tail of the grid is short work, and a persistent grid's fixed turns (tile t to program t mod
    programs) get about equal causal work."""
    SQ = shape[2]
    num_m = gl.cdiv(SQ, 2 * ROWS_PER_GROUP)
    section = t // (SECTION * num_m)
    heads = gl.minimum(SECTION, BH - section * SECTION)
    r = t - section * SECTION * num_m
    heaviest = r // heads
    return (num_m - 1 - heaviest) * (2 * ROWS_PER_GROUP), section * SECTION + r - heaviest * heads


@gluon.jit
def _key_range(start_m, b, shape, mask, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr, HAS_PADDING: gl.constexpr,
               HAS_WINDOW: gl.constexpr, HAS_DOC: gl.constexpr):
    """The key blocks [n_begin, n_begin + n_blocks) that some of the 128 rows from start_m of batch row b see: the
    same in all three partitions, which is what keeps their barriers in step."""
    H, _, SQ, SKV = shape
    KvLo, KvHi, window, DocStart, stride_doc_b, _, _, _ = mask
    lo, hi = padding_range(KvLo, KvHi, b, SKV, HAS_PADDING)
    if CAUSAL:
        hi = gl.minimum(hi, gl.minimum(start_m + 2 * ROWS_PER_GROUP, SQ) + SKV - SQ)
    if HAS_WINDOW:
        lo = gl.maximum(lo, start_m + SKV - SQ - window + 1)
    if HAS_DOC:  # the first row's document starts where the program's keys can start
        lo = gl.maximum(lo, gl.load(DocStart + b * stride_doc_b + start_m))
    lo = gl.maximum(lo, 0)
    n_begin = lo // BLOCK_N
    return n_begin, gl.where(hi > lo, gl.cdiv(hi, BLOCK_N) - n_begin, 0)


@gluon.jit
def group_tile(t, shape, tiles, mask, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr, HAS_PADDING: gl.constexpr,
               HAS_WINDOW: gl.constexpr, HAS_DOC: gl.constexpr, GROUP_ID: gl.constexpr):
    """Tile t as consumer group GROUP_ID works on it: its batch * head row, batch row, head, the group's first query
    row (its 64 of the tile's 128) and the tile's key blocks (n_begin, n_blocks)."""
    start_m, bh = _tile(t, shape, tiles[0], tiles[1])
    H = shape[0]
    b = bh // H
    n_begin, n_blocks = _key_range(start_m, b, shape, mask, BLOCK_N, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_DOC)
    return bh, b, bh % H, start_m + GROUP_ID * ROWS_PER_GROUP, n_begin, n_blocks


@gluon.jit
def padding_range(KvLo, KvHi, b, SKV, HAS_PADDING: gl.constexpr):
    """Batch b's keys [lo, hi) that a padding mask leaves."""
    if HAS_PADDING:
        return gl.load(KvLo + b), gl.load(KvHi + b)
    return 0, SKV


@gluon.jit
def _loader(io, shape, tiles, mask, ring, queries, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
            CAUSAL: gl.constexpr, HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_DOC: gl.constexpr,
            DYNAMIC: gl.constexpr, Q_BUFFERS: gl.constexpr):
    """One warp: the K and V blocks of the program's tiles, one after another, into their rings; a buffer is refilled
    once both consumers have released it, so the next tile's first blocks load while this tile's last ones are used.
    It draws the program's next tile once this one's loads are issued (_draw_tile). io: Q's, K's and V's
    descriptors at 0, 1 and 2; ring: (K ring, V ring, their ready barriers, their empty ones). With Q_BUFFERS > 0
    it loads each tile's Q first, both groups' rows, into the next of Q_BUFFERS buffers a group (queries: the
    buffers, group g's i-th at 2 * i + g, their ready and empty barriers): a tile with keys has its Q in shared
    memory before its group needs it; the dQ kernel's consumers load their own (Q_BUFFERS 0, queries None)."""
    k_desc, v_desc = io[1], io[2]
    GROUP = shape[1]
    k_ring, v_ring, k_ready, v_ready, k_empty, v_empty = ring
    loaded = 0  # the g-th block of the program goes to stage g % STAGES, its (g // STAGES)-th use
    q_loaded = 0  # tiles whose Q the loader has loaded: buffer q_loaded % Q_BUFFERS, its (q_loaded // Q_BUFFERS)-th use
    num_tiles = _num_tiles(shape, tiles)
    t = gl.program_id(0)
    drawn = 0
    while t < num_tiles:
        bh, b, h, start_m, n_begin, n_blocks = group_tile(t, shape, tiles, mask, BLOCK_N, CAUSAL, HAS_PADDING,
                                                          HAS_WINDOW, HAS_DOC, 0)
        if Q_BUFFERS > 0:
            if n_blocks > 0:  # a tile that sees no key loads no Q (a padded batch has many)
                q_smem, q_ready, q_empty = queries
                free = ((q_loaded // Q_BUFFERS) & 1) ^ 1  # a fresh barrier passes parity 1
                for group in gl.static_range(2):
                    buf = 2 * (q_loaded % Q_BUFFERS) + group
                    mbarrier.wait(q_empty.index(buf), free)
                    load_block(io[0], b, h, start_m + group * ROWS_PER_GROUP, q_ready.index(buf), q_smem.index(buf))
                q_loaded += 1
        hk = h // GROUP
        for i in range(n_blocks):
            stage = loaded % STAGES
            free = ((loaded // STAGES) & 1) ^ 1  # a fresh barrier passes parity 1
            start_n = (n_begin + i) * BLOCK_N
            mbarrier.wait(k_empty.index(stage), free)
            load_block(k_desc, b, hk, start_n, k_ready.index(stage), k_ring.index(stage))
            mbarrier.wait(v_empty.index(stage), free)
            load_block(v_desc, b, hk, start_n, v_ready.index(stage), v_ring.index(stage))
            loaded += 1
        t = _draw_tile(t, tiles, drawn, DYNAMIC)
        drawn += 1
    if DYNAMIC:
        _retire(tiles)


@gluon.jit
def _draw_tile(t, tiles, drawn, DYNAMIC: gl.constexpr):
    """The loader's next tile after t, its drawn-th since the program's first (tile program_id). Fixed turns: t +
    programs. DYNAMIC: programs + the next ticket of a counter in global memory that every program draws from, so
    that a program takes the next tile in _tile's order when its loader is done with the last one: the heaviest tiles
    go first and the lightest fill the gaps (the hardware's scheduler does the same for one program per tile). The
    ticket goes to the consumer groups through two slots of the program's own (a slot is written once both groups
    read what it held: _take_tile)."""
    if DYNAMIC:
        _, _, counter, ready, taken = tiles
        t = gl.num_programs(0) + gl.atomic_add(counter, 1)
        slot = drawn % 2
        mbarrier.wait(taken.index(slot), ((drawn // 2) & 1) ^ 1)  # a fresh barrier passes parity 1
        gl.store(counter + 2 + 2 * gl.program_id(0) + slot, t)
        mbarrier.arrive(ready.index(slot), count=1)
        return t
    return t + gl.num_programs(0)


@gluon.jit
def _take_tile(t, tiles, taken_count, DYNAMIC: gl.constexpr):
    """A consumer group's next tile after t, the taken_count-th since the program's first: what _draw_tile drew."""
    if DYNAMIC:
        _, _, counter, ready, taken = tiles
        slot = taken_count % 2
        mbarrier.wait(ready.index(slot), (taken_count // 2) & 1)
        t = gl.load(counter + 2 + 2 * gl.program_id(0) + slot, volatile=True)
        mbarrier.arrive(taken.index(slot), count=1)
        return t
    return t + gl.num_programs(0)


@gluon.jit
def _retire(tiles):
    """The loader after its last ticket: the last program's resets the counter (and the count of programs done) to
    zero, so that the next launch on the stream finds them so without a memset of its own."""
    counter = tiles[2]
    if gl.atomic_add(counter + 1, 1) == gl.num_programs(0) - 1:
        gl.store(counter, 0)
        gl.store(counter + 1, 0)


@gluon.jit
def _num_tiles(shape, tiles):
    """128-row blocks times batch * heads."""
    return gl.cdiv(shape[2], 2 * ROWS_PER_GROUP) * tiles[0]


@gluon.jit
def row_masks(shape, mask, start_m, b, offs_m, CAUSAL: gl.constexpr, HAS_PADDING: gl.constexpr,
              HAS_WINDOW: gl.constexpr, HAS_HOLES: gl.constexpr, HAS_DOC: gl.constexpr):
    """What hides keys from the 64 rows offs_m (from start_m) of batch row b: (lo, hi, full_lo, full_hi, offset,
    window, doc_rows, keep_row). Keys outside [full_lo, full_hi) are hidden from some row (past its diagonal,
    outside its window, before its document, padding, past the last key; every key where the padding mask has gaps,
    which keep_row, the batch row's mask, then decides), so a block reaching out of it is masked (masked_block,
    visible)."""
    H, _, SQ, SKV = shape
    KvLo, KvHi, window, DocStart, stride_doc_b, Holes, KeyKeep, stride_keep_b = mask
    offset = SKV - SQ
    lo, hi = padding_range(KvLo, KvHi, b, SKV, HAS_PADDING)
    full_lo = lo
    full_hi = hi
    if CAUSAL:
        full_hi = gl.minimum(full_hi, start_m + offset + 1)
    last_m = gl.minimum(start_m + ROWS_PER_GROUP, SQ) - 1
    if HAS_WINDOW:
        full_lo = gl.maximum(full_lo, last_m + offset - window + 1)
    doc_rows = offs_m  # unused without documents
    if HAS_DOC:  # each row's document start; every row sees keys from the last row's on
        docs = DocStart + b * stride_doc_b
        doc_rows = gl.load(docs + offs_m, mask=offs_m < SQ, other=0)
        full_lo = gl.maximum(full_lo, gl.load(docs + last_m))
    keep_row = (KeyKeep, b * stride_keep_b)  # read with HAS_HOLES; an int32 offset spares registers
    if HAS_HOLES:
        if gl.load(Holes + b) != 0:
            full_hi = full_lo  # every block is masked
    return lo, hi, full_lo, full_hi, offset, window, doc_rows, keep_row


@gluon.jit
def masked_block(start_n, rows, BLOCK_N: gl.constexpr):
    """Whether the key block from start_n reaches out of the keys that every row sees (row_masks)."""
    return (start_n < rows[2]) | (start_n + BLOCK_N > rows[3])


@gluon.jit
def visible(start_n, offs_m, rows, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr, HAS_PADDING: gl.constexpr,
            HAS_WINDOW: gl.constexpr, HAS_HOLES: gl.constexpr, HAS_DOC: gl.constexpr, s_layout: gl.constexpr):
    """The (rows, keys) pairs of the key block from start_n that attend (rows: row_masks'). Causal without padding
    needs no key range, as in tiles.tile_mask: one compare per pair for the causal mask alone."""
    lo, hi, _, _, offset, window, doc_rows, keep_row = rows
    offs_n = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    if CAUSAL and not HAS_PADDING:
        keep = offs_n[None, :] <= offs_m[:, None] + offset
    else:
        keep = (offs_n[None, :] >= lo) & (offs_n[None, :] < hi)
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None] + offset)
    if HAS_WINDOW:
        keep = keep & (offs_n[None, :] > offs_m[:, None] + offset - window)
    if HAS_DOC:
        keep = keep & (offs_n[None, :] >= doc_rows[:, None])
    if HAS_HOLES:
        key_keep, row_offset = keep_row
        keep = keep & (gl.load(key_keep + row_offset + offs_n, mask=offs_n < hi, other=0) != 0)[None, :]
    return keep


@gluon.jit
def _scores(qk, start_n, offs_m, score, m_i, rows, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr,
            HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_HOLES: gl.constexpr, HAS_DOC: gl.constexpr,
            SOFTCAP: gl.constexpr, FIXED_MAX: gl.constexpr, s_layout: gl.constexpr):
    """The block's new row maxima, the maxima its exponentials are taken against, and the exponentials, in the log2
    domain. score = (qk_scale, sm_scale, softcap), as ops passes them to every kernel: without softcap the scores are
    qk * qk_scale (qk_scale = sm_scale * log2(e)), with it softcap * log2(e) * tanh(qk * sm_scale / softcap), through
    the hardware tanh (16-bit inputs only reach here). Either factor is positive (ops sends the Gluon forward positive
    scales only), so the maxima are taken before it and it rides on the exponent's FFMA. rows: row_masks'; a row that
    has seen no key yet keeps -inf as its maximum and takes exponentials against 0 (they are all 0). FIXED_MAX: m_i
    is _max_start's and stays (capped scores are bounded: ops.fixed_max_fits), so every exponent is finite: the
    exponentials are taken first, a quarter of them on the FMA pipe, and the hidden pairs zeroed after
    (benchmarks/NOTES.md entry 47)."""
    qk_scale, sm_scale, softcap = score
    if SOFTCAP:
        qk = hardware_tanh(qk * (sm_scale / softcap))
        qk_scale = softcap * LOG2E
    if FIXED_MAX:  # every exponent finite and >= -120: exponentials first, hidden pairs zeroed after
        p = _exp2_quarter_on_fma(qk * qk_scale - m_i[:, None])
        if masked_block(start_n, rows, BLOCK_N):
            p = gl.where(visible(start_n, offs_m, rows, BLOCK_N, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC,
                                 s_layout), p, 0.0)
        return m_i, m_i, p
    if masked_block(start_n, rows, BLOCK_N):
        qk = gl.where(visible(start_n, offs_m, rows, BLOCK_N, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC,
                              s_layout), qk,
                      float("-inf"))
        m_new = gl.maximum(m_i, gl.max(qk, axis=1) * qk_scale)
        m_ref = gl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new = gl.maximum(m_i, gl.max(qk, axis=1) * qk_scale)
        m_ref = m_new
    return m_new, m_ref, gl.exp2(qk * qk_scale - m_ref[:, None])


# 2^f on [-1/2, 1/2] by f -> C0 + f (C1 + f (C2 + f C3)): relative error 7.5e-5 (weighted least squares towards the
# minimax fit), below bfloat16's 2^-9, in which P V takes P.
EXP2_C0, EXP2_C1, EXP2_C2, EXP2_C3 = (gl.constexpr(c) for c in (0.9999280735783096, 0.6932609862225375,
                                                                  0.2426111218771512, 0.055171664930303795))
ROUNDING = gl.constexpr(12582912.0)  # 1.5 * 2^23: x + ROUNDING holds x rounded to an integer in its low bits


@gluon.jit
def _exp2_fma(x):
    """2^x for -126 <= x < 128 on the FMA pipe: x = n + f (n the nearest integer), 2^f by the EXP2_C cubic,
    and n added to its exponent bits (FlashAttention-4 takes some of its exponentials so on Blackwell)."""
    t = x + ROUNDING
    f = x - (t - ROUNDING)
    p = ((EXP2_C3 * f + EXP2_C2) * f + EXP2_C1) * f + EXP2_C0
    return (p.to(gl.int32, bitcast=True) + (t.to(gl.int32, bitcast=True) << 23)).to(gl.float32, bitcast=True)


@gluon.jit
def _exp2_quarter_on_fma(x):
    """2^x of a (rows, keys) tile in the MMA layout, a quarter of it by _exp2_fma: with softcap the MUFU takes a tanh
    and an exponential per score, as many cycles as the tensor cores take for the block's two matmuls (16 results a
    clock and SM against 64 x 128 x 128 x 2 x 2 FLOP per group), so it shares the load with the FMA pipe. A thread
    holds columns 8k + 2q + j (q its lane in the quad): those of odd k and j = 1 go to the FMA pipe, the split and
    join moving no data."""
    ROWS: gl.constexpr = x.shape[0]
    COLS: gl.constexpr = x.shape[1]
    # (rows, k // 2, k % 2, 2q + j) -> k % 2 last
    even_k, odd_k = gl.split(x.reshape([ROWS, COLS // 16, 2, 8]).permute((0, 1, 3, 2)))
    odd_j0, odd_j1 = gl.split(odd_k.reshape([ROWS, COLS // 16, 4, 2]))
    odd_k = gl.join(gl.exp2(odd_j0), _exp2_fma(odd_j1)).reshape([ROWS, COLS // 16, 8])
    even_k = gl.exp2(even_k)  # the conversions below map registers to the same pairs: they move nothing
    odd_k = gl.convert_layout(odd_k, even_k.type.layout)
    return gl.convert_layout(gl.join(even_k, odd_k).permute((0, 1, 3, 2)).reshape([ROWS, COLS]), x.type.layout)


@gluon.jit
def _max_start(score, FIXED_MAX: gl.constexpr, rows_s: gl.constexpr):
    """A tile's row maxima before its first block, in log2 units: -inf, or with FIXED_MAX the fixed maximum
    max(0, C - FIXED_MAX_TOP) for the scores' bound C = softcap * log2(e), which they keep."""
    if FIXED_MAX:
        start = gl.full([ROWS_PER_GROUP], 0.0, gl.float32, rows_s) \
            + gl.maximum(score[2] * LOG2E - FIXED_MAX_TOP, 0.0)
    else:
        start = gl.full([ROWS_PER_GROUP], float("-inf"), gl.float32, rows_s)
    return start


# The output leaves in column chunks of at most this many through a group's shared-memory buffer and a TMA store. At
# head size 256, Q and the rings take 192 of 227 KB, leaving room for two (64, 128) buffers but not for (64, 256).
OUT_COLUMNS = gl.constexpr(128)


@gluon.constexpr_function
def q_buffers(head_dim):
    """Q buffers a group: two up to head size 128, so that the loader loads the next tile's Q while this one's is
    read (224 of 227 KB with the output's and the rings'); one at 256, the loader waiting for the tile's last Q K^T."""
    return 2 if head_dim <= 128 else 1


@gluon.jit
def _store_staged(o_desc, coord, o_buf, out):
    """out, a group's (64, D) output tile, into o_buf and from there to global memory by one TMA store that the next
    call waits for (a tile's time later), not this one. Plain stores from the MMA layout write 4 bytes a thread:
    half of each 32-byte sector at a time, twice the sectors the output needs, queueing behind one another at the
    end of every tile (at 512 tokens a quarter of a consumer's time; benchmarks/NOTES.md entry 28)."""
    tma.store_wait(0)  # the thread that issued the last store waits for it to have read o_buf...
    warpgroup_barrier()  # ...and the others for that thread
    o_buf.reshape(out.shape).store(out)
    fence_async_shared()
    warpgroup_barrier()  # every thread's part written before the store is issued
    _tma_store(o_desc, coord, o_buf)


@gluon.jit
def _partial_row_sums(p):
    """p's row sums over the columns each thread holds, (rows, 4): in the MMA layout a row's columns are spread over
    the 4 threads of a quad, 2 adjacent columns in every 8, so summing those needs no shuffle. The quad's 4 partial
    sums are added up once a tile (_row_sums), not once a block (FlashAttention-3 keeps its row sums so too)."""
    ROWS: gl.constexpr = p.shape[0]
    COLS: gl.constexpr = p.shape[1]
    return gl.sum(gl.sum(p.reshape([ROWS, COLS // 8, 4, 2]), axis=3), axis=1)


@gluon.jit
def _row_sums(partial, rows_s: gl.constexpr):
    """The row sums from _partial_row_sums' partials, in rows_s."""
    return gl.convert_layout(gl.sum(partial, axis=1), rows_s)


@gluon.jit
def _write_lse(Lse, SQ, bh, start_m, m_i, l_i, rows_s: gl.constexpr):
    """The log-sum-exp of a group's 64 rows from start_m of batch * head bh, in log2 units: +inf for a row that saw
    no key (all padding, above the diagonal when there are more rows than keys, a tile that sees no key), as
    forward.py writes it."""
    offs_m = start_m + gl.arange(0, ROWS_PER_GROUP, layout=rows_s)
    empty = l_i == 0.0
    lse = gl.where(empty, float("inf"), m_i + gl.log2(gl.where(empty, 1.0, l_i)))
    gl.store(Lse + bh.to(gl.int64) * SQ + offs_m, lse, mask=offs_m < SQ)


@gluon.jit
def _write_out(o_desc, tile, acc, l_i, o_buf, HEAD_DIM: gl.constexpr):
    """A group's 64 output rows of tile = (batch, head, first row) from its accumulator and row sums (a row that saw
    no key has both at zero, and gets zeros), in o_buf's column chunks: one up to head size 128, two at 256."""
    b, h, start_m = tile
    scale = 1.0 / gl.where(l_i == 0.0, 1.0, l_i)
    if HEAD_DIM <= OUT_COLUMNS:
        _store_staged(o_desc, [b, h, start_m, 0], o_buf, _normalized(acc, scale, o_desc.dtype))
    else:  # columns c and c + 128 sit in one thread's registers: the split moves no data
        left, right = gl.split(acc.reshape([ROWS_PER_GROUP, 2, OUT_COLUMNS]).permute((0, 2, 1)))
        _store_staged(o_desc, [b, h, start_m, 0], o_buf, _normalized(left, scale, o_desc.dtype))
        _store_staged(o_desc, [b, h, start_m, OUT_COLUMNS], o_buf, _normalized(right, scale, o_desc.dtype))


@gluon.jit
def _normalized(acc, scale, dtype: gl.constexpr):
    """acc's rows times scale, in dtype."""
    return (acc * gl.convert_layout(scale, gl.SliceLayout(1, acc.type.layout))[:, None]).to(dtype)


@gluon.jit
def _consumer(io, shape, tiles, mask, score, bufs, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
              STAGES: gl.constexpr, CAUSAL: gl.constexpr, HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr,
              HAS_HOLES: gl.constexpr, HAS_DOC: gl.constexpr, SOFTCAP: gl.constexpr, FIXED_MAX: gl.constexpr,
              DYNAMIC: gl.constexpr, GROUP_ID: gl.constexpr):
    """One warpgroup: 64 query rows of each of the program's tiles against their key blocks, its matmuls issued in
    turns with the other group's. The key blocks of all the program's tiles run through one loop body: block j's
    turn issues S_j = Q K_j^T and the P V of the block before it, whichever tile that was, so a tile's last P V
    runs with the next tile's first Q K^T and its output is written while the next tile's blocks run. A tile has
    no first block of its own (its softmax written once; at 512 tokens a tile has 1 to 4 blocks and the consumers
    waited on instruction fetch, benchmarks/NOTES.md entries 28-30), and no turn of its own for its last P V."""
    Q_BUFFERS: gl.constexpr = q_buffers(HEAD_DIM)
    _, _, SQ, SKV = shape
    o_desc, Lse = io[3], io[4]
    q_smem, o_smem, k_ring, v_ring, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty, turn = bufs
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = mma_layout(BLOCK_N)
    o_layout: gl.constexpr = mma_layout(HEAD_DIM)
    p_layout: gl.constexpr = register_operand(HEAD_DIM)
    rows_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    rows_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    my_turn = turn.index(GROUP_ID)
    their_turn = turn.index(1 - GROUP_ID)
    o_buf = o_smem.index(GROUP_ID)
    s_zero = gl.zeros([ROWS_PER_GROUP, BLOCK_N], gl.float32, s_layout)

    # The P V pending at turn g: block g - 1's, into acc; the program's first turn has none and adds a zero P
    # times V_0 (every turn issues both matmuls: a branch around one makes ptxas wait for each at once, entry 29).
    acc = gl.zeros([ROWS_PER_GROUP, HEAD_DIM], gl.float32, o_layout)
    p_op = gl.zeros([ROWS_PER_GROUP, BLOCK_N], dtype, p_layout)
    alpha = gl.full([ROWS_PER_GROUP], 1.0, gl.float32, rows_s)
    m_start = _max_start(score, FIXED_MAX, rows_s)
    m_i = m_start
    l_zero = _partial_row_sums(s_zero)
    l_i = l_zero  # the row sums, as partial sums per quad thread
    used = 0  # key blocks the program has consumed: block g sits in stage g % STAGES, its (g // STAGES)-th use
    before = 0  # the pending P V's block (V_0 on the program's first turn)
    q_uses = 0  # tiles with keys so far: their Q in buffer q_uses % Q_BUFFERS
    tiles_done = 0
    num_tiles = _num_tiles(shape, tiles)
    t = gl.program_id(0)
    # The tile of the pending P V (batch * head, batch, head, first row), set by the first tile with keys.
    pending = (t, t, t, t)
    while t < num_tiles:
        bh, b, h, start_m, n_begin, n_blocks = group_tile(t, shape, tiles, mask, BLOCK_N, CAUSAL, HAS_PADDING,
                                                          HAS_WINDOW, HAS_DOC, GROUP_ID)
        tiles_done += 1
        if n_blocks > 0:
            offs_m = start_m + gl.arange(0, ROWS_PER_GROUP, layout=rows_s)
            rows = row_masks(shape, mask, start_m, b, offs_m, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC)
            q_index = 2 * (q_uses % Q_BUFFERS) + GROUP_ID
            q = q_smem.index(q_index).reshape([ROWS_PER_GROUP, HEAD_DIM])
            mbarrier.wait(q_ready.index(q_index), (q_uses // Q_BUFFERS) & 1)
            # The pending tile's row statistics are final: its LSE leaves now, its output once its last P V has
            # run. This tile's start afresh (block 0's alpha is then 0: the accumulator starts at zero on the turn
            # after).
            l_done = _row_sums(l_i, rows_s)
            if used > 0:
                _write_lse(Lse, SQ, pending[0], pending[3], m_i, l_done, rows_s)
            m_i = m_start
            l_i = l_zero
            # No MMA is in flight here; without this wait ptxas makes the first group wait for each Q K^T to finish
            # before it issues the P V (both Tritons; benchmarks/NOTES.md entry 30).
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            for i in range(n_blocks):
                g = used + i
                stage = g % STAGES
                v_stage = before % STAGES
                v_phase = (before // STAGES) & 1
                mbarrier.wait(my_turn, g & 1)
                mbarrier.wait(k_ready.index(stage), (g // STAGES) & 1)
                qk = warpgroup_mma(q, k_ring.index(stage).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), s_zero,
                                   use_acc=False, is_async=True)
                mbarrier.wait(v_ready.index(v_stage), v_phase)
                if not FIXED_MAX:
                    acc = acc * gl.convert_layout(alpha, rows_o)[:, None]  # O to the previous maxima while S_j runs
                acc = warpgroup_mma(p_op, v_ring.index(v_stage).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
                mbarrier.arrive(their_turn, count=1)
                qk = warpgroup_mma_wait(num_outstanding=1, deps=(qk,))  # S_j is ready; O += P V still runs
                mbarrier.arrive(k_empty.index(stage), count=1)
                # The softmax sits in a branch that is always taken (SKV >= 1): ptxas schedules the wait for P V
                # below right after the one above when both share a block, which would leave nothing to overlap
                # (benchmarks/NOTES.md entry 13); it does not move that wait into the branch.
                if SKV > 0:
                    m_new, m_ref, p = _scores(qk, (n_begin + i) * BLOCK_N, offs_m, score, m_i, rows, BLOCK_N,
                                              CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_HOLES, HAS_DOC, SOFTCAP,
                                              FIXED_MAX, s_layout)
                    if FIXED_MAX:  # the row sums of the P that P V takes (ops.fixed_max_fits)
                        p = (p.to(gl.int32, bitcast=True) & -65536).to(gl.float32, bitcast=True)
                        l_new = l_i + _partial_row_sums(p)
                    else:
                        alpha = gl.exp2(m_i - m_ref)
                        l_new = l_i * gl.convert_layout(alpha, gl.SliceLayout(1, l_zero.type.layout))[:, None] \
                            + _partial_row_sums(p)
                    p_next = gl.convert_layout(p.to(dtype), p_layout)
                else:
                    m_new, l_new, p_next = m_i, l_i, p_op
                m_i, l_i = m_new, l_new
                acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))
                mbarrier.arrive(v_empty.index(v_stage), count=1, pred=g > 0)
                p_op = p_next
                before = g
                if (i == 0) & (g > 0):  # the pending tile's last P V has run: its output leaves
                    _write_out(o_desc, pending[1:], acc, l_done, o_buf, HEAD_DIM)
                    # Block 0's alpha zeroes acc on the next turn; said here, acc ends at the stores, which then
                    # spill nothing in the key loop at head size 256 (ptxas 12.8). FIXED_MAX has no alpha.
                    if (HEAD_DIM > OUT_COLUMNS) or FIXED_MAX:
                        acc = gl.zeros_like(acc)
            mbarrier.arrive(q_empty.index(q_index), count=1)  # the tile's last Q K^T has run
            pending = (bh, b, h, start_m)
            used += n_blocks
            q_uses += 1
        else:  # a tile that sees no key: zeros (the pending tile's output waits for its P V)
            no_key = gl.zeros([ROWS_PER_GROUP], gl.float32, rows_s)
            _write_lse(Lse, SQ, bh, start_m, no_key, no_key, rows_s)
            _write_out(o_desc, (b, h, start_m), gl.zeros([ROWS_PER_GROUP, HEAD_DIM], gl.float32, o_layout), no_key,
                       o_buf, HEAD_DIM)
        t = _take_tile(t, tiles, tiles_done - 1, DYNAMIC)

    if used > 0:  # the last tile's last P V, on a turn of its own
        last = (used - 1) % STAGES
        mbarrier.wait(my_turn, used & 1)
        if not FIXED_MAX:
            acc = acc * gl.convert_layout(alpha, rows_o)[:, None]
        mbarrier.wait(v_ready.index(last), ((used - 1) // STAGES) & 1)
        acc = warpgroup_mma(p_op, v_ring.index(last).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
        mbarrier.arrive(their_turn, count=1)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(v_empty.index(last), count=1)
        l_done = _row_sums(l_i, rows_s)
        _write_lse(Lse, SQ, pending[0], pending[3], m_i, l_done, rows_s)
        _write_out(o_desc, pending[1:], acc, l_done, o_buf, HEAD_DIM)
    tma.store_wait(0)  # the shared memory stays allocated until the last store has read it


@gluon.jit
def attention_fwd_hopper_kernel(
        q_desc, k_desc, v_desc, o_desc, Lse, KvLo, KvHi, Holes, KeyKeep, DocStart, qk_scale, sm_scale, softcap,
        window, stride_keep_b, stride_doc_b,
        H, GROUP, SQ, SKV, BH, SECTION, Tickets,
        HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
        HAS_PADDING: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_HOLES: gl.constexpr, HAS_DOC: gl.constexpr,
        SOFTCAP: gl.constexpr, FIXED_MAX: gl.constexpr, DYNAMIC: gl.constexpr):
    """Launched with num_warps=4 (the first consumer group); the second group and the loader are added warps. q_desc
    reads (1, 1, 64, HEAD_DIM) tiles of Q (B, H, SQ, D) and o_desc writes (1, 1, 64, min(HEAD_DIM, OUT_COLUMNS))
    tiles of O, k_desc and v_desc (1, 1, BLOCK_N, HEAD_DIM) tiles of K and V
    (B, HK, SKV, D); KvLo/KvHi (B,) int32 the keys [lo, hi) a padding mask leaves (read with HAS_PADDING); Holes (B,)
    int8 whether batch row b's kept keys have gaps and KeyKeep (B, SKV) int8 rows stride_keep_b apart the mask itself
    (read with HAS_HOLES); window the sliding window in keys (with HAS_WINDOW); DocStart (B, SQ) int32 rows
    stride_doc_b apart, each row's packed document start (with HAS_DOC); qk_scale the scale times log2(e),
    sm_scale the scale, softcap the cap (read with SOFTCAP; FIXED_MAX: its exponentials against a fixed maximum,
    ops.fixed_max_fits); BH = B * H; SECTION the heads of a section (_tile).
    Grid (programs,): program p takes tile p of the cdiv(SQ, 128) * BH, then p + programs, ... or, DYNAMIC, the
    tiles it draws (_draw_tile) from Tickets, int32 (2 + 2 * programs,) that starts and ends as zeros; a grid of one
    program per multiprocessor keeps every program resident and its loader streaming from one tile into the next."""
    # A group reads block j's K and block j - 1's V at once: with one stage the loads and the matmuls would take
    # turns.
    gl.static_assert(STAGES >= 2, "the K and V rings need at least two stages")
    dtype: gl.constexpr = q_desc.dtype
    q_smem = gl.allocate_shared_memory(dtype, [2 * q_buffers(HEAD_DIM)] + q_desc.block_type.shape, q_desc.layout)
    o_smem = gl.allocate_shared_memory(dtype, [2] + o_desc.block_type.shape, o_desc.layout)
    k_ring = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_ring = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_ready = barriers(2 * q_buffers(HEAD_DIM), 1)
    q_empty = barriers(2 * q_buffers(HEAD_DIM), 1)
    turn = barriers(2, 1)
    k_ready = barriers(STAGES, 1)
    v_ready = barriers(STAGES, 1)
    k_empty = barriers(STAGES, 2)  # both consumer groups release a buffer
    v_empty = barriers(STAGES, 2)
    mbarrier.arrive(turn.index(0), count=1)  # group 0 issues first

    io = (q_desc, k_desc, v_desc, o_desc, Lse)
    shape = (H, GROUP, SQ, SKV)
    mask = (KvLo, KvHi, window, DocStart, stride_doc_b, Holes, KeyKeep, stride_keep_b)
    score = (qk_scale, sm_scale, softcap)
    if DYNAMIC:  # a drawn tile's two slots: written (count 1), read by both groups (count 2)
        tiles = (BH, SECTION, Tickets, barriers(2, 1), barriers(2, 2))
    else:
        tiles = (BH, SECTION)
    bufs = (q_smem, o_smem, k_ring, v_ring, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty, turn)
    gl.warp_specialize([
        (_consumer, (io, shape, tiles, mask, score, bufs, HEAD_DIM, BLOCK_N, STAGES, CAUSAL, HAS_PADDING,
                     HAS_WINDOW, HAS_HOLES, HAS_DOC, SOFTCAP, FIXED_MAX, DYNAMIC, 0)),
        (_consumer, (io, shape, tiles, mask, score, bufs, HEAD_DIM, BLOCK_N, STAGES, CAUSAL, HAS_PADDING,
                     HAS_WINDOW, HAS_HOLES, HAS_DOC, SOFTCAP, FIXED_MAX, DYNAMIC, 1)),
        (_loader, (io, shape, tiles, mask, (k_ring, v_ring, k_ready, v_ready, k_empty, v_empty),
                   (q_smem, q_ready, q_empty), BLOCK_N, STAGES, CAUSAL, HAS_PADDING, HAS_WINDOW, HAS_DOC, DYNAMIC,
                   q_buffers(HEAD_DIM))),
    ], [4, 1], [CONSUMER_REGISTERS, LOADER_REGISTERS])


@functools.lru_cache(maxsize=None)
def shared_layout(block_shape: tuple, dtype_name: str):
    """The swizzled shared-memory layout that TMA fills and the warpgroup MMAs read ("float16" or "bfloat16"); kept
    per shape, since working it out takes about 10 us, three times a call."""
    return gl.NVMMASharedLayout.get_default_for(list(block_shape), getattr(gl, dtype_name))
