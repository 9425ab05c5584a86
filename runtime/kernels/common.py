"""The pieces of the forward, dQ and dK/dV programs that they share: which program works on what,
head base pointers, loads and stores of a head's rows (through the plan's permutation), and the
partial tiles' masks (bitmaps and intervals).

Index conventions used by every kernel in this package
------------------------------------------------------
* Query batch ``b`` and query head ``h`` read mask slice ``s = b * slice_stride_b + h * slice_stride_h``
  where ``slice_stride_b = plan.heads if plan.batch > 1 else 0`` and ``slice_stride_h = 1 if plan.heads > 1
  else 0``: a broadcast dimension has stride 0, so the kernels never branch on the mask's shape.
* GQA: query head ``h`` reads key/value head ``h // group`` with ``group = Hq // Hkv``.
* A partial tile's bitmap is ``block_m * (block_n // 32)`` int32 words, row-major: the bit for tile
  row ``i`` and tile column ``j`` is bit ``j % 32`` (LSB first) of word ``i * WORDS + j // 32``.
* An interval plan masks query row ``i`` of key column ``j`` iff ``LTS <= i < LTE`` or
  ``UTS <= i < UTE`` with the bounds ``intervals[s, 0..3, j]`` (``[slices, 4, Nk]`` int32).
* Token order, per slice and per side: a reordered plan's positions of slice ``s`` are the caller's
  query tokens ``perm_q[s, 0], perm_q[s, 1], ...`` and key tokens ``perm_k[s, 0], ...``; the
  kernels address every q, o and dq row through ``perm_q`` and every k, v, dk and dv row through
  ``perm_k`` (constexpr ``GATHER``, :func:`slice_perm`, :func:`perm_rows`, :func:`seq_ptrs`), while
  the lse and delta they keep for themselves stay in plan positions. A static plan's one
  permutation serves every slice and both sides (slice stride 0).
* Launch order: with the plan's ``row_order``/``col_order`` (constexpr ``ORDERED``), program ``i``
  of a slice takes tile ``order[s * tiles + i]`` (heaviest first) instead of tile ``i``.
* Grid: ``(tiles, B·H)``, or with ``HEADS_FAST`` (``launches.heads_fast``) ``(B·H, tiles)``, so the
  first (heaviest) lists of every head launch before the later ones of any (:func:`program_ids`).
* Batch/head base offsets are computed in int64 (B*H*N*D overflows int32 at long contexts,
  :func:`head_base`); offsets inside one head stay int32 after the tile's first row has been
  folded into an int64 base pointer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

FULL_TILE = tl.constexpr(-1)  # a list entry's tile id when the tile is full (no bitmap, no mask)
LOG2E_F = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e)); host-side float
# Kernels may only read globals that are tl.constexpr.
LOG2E = tl.constexpr(LOG2E_F)
LN2 = tl.constexpr(0.6931471805599453)  # ln(2): ln(x) = log2(x) * ln(2)
KERNEL_VARIANTS = ("block_sparse", "intervals")  # dense variants go to a dense library kernel instead


@triton.jit
def program_ids(HEADS_FAST: tl.constexpr):
    """This program's (tile program, batch·head) indices. The grid is ``(tiles, B·H)`` (CUDA starts
    blocks along the first axis first: one head's tiles, then the next head's) or, ``HEADS_FAST``,
    ``(B·H, tiles)``: the first tile program of every head, then the second of every head, ..."""
    if HEADS_FAST:
        pid_tile = tl.program_id(1)
        pid_bh = tl.program_id(0)
    else:
        pid_tile = tl.program_id(0)
        pid_bh = tl.program_id(1)
    return pid_tile, pid_bh


@triton.jit
def slice_of(b, h, slice_b, slice_h):
    """The mask slice query batch ``b`` and query head ``h`` read (slice strides are 0 where the
    mask broadcasts)."""
    return b * slice_b + h * slice_h


@triton.jit
def launch_tile(order, mask_slice, tiles, tile, ORDERED: tl.constexpr):
    """The tile that a slice's ``tile``-th program takes: the plan's launch order (heaviest lists
    first) where it has one, else ``tile`` itself."""
    if ORDERED:
        pid = tl.load(order + mask_slice * tiles + tile)
    else:
        pid = tile
    return pid


@triton.jit
def list_entries(list_lo, list_hi, full, index):
    """The entries ``[lo, hi)`` of list ``index`` (a row or column list), of which the first
    ``n_full`` are full tiles: ``lo = list_lo[index]``, ``hi = list_hi[index]`` (a static plan's
    CSR offsets ``ptr[index]``, ``ptr[index + 1]``; a bound family's ELL ranges)."""
    lo = tl.load(list_lo + index)
    n_full = tl.load(full + index)
    hi = tl.load(list_hi + index)
    return lo, n_full, hi


@triton.jit
def slice_perm(perm, mask_slice, stride):
    """The permutation of mask slice ``mask_slice`` in ``perm`` (``stride`` apart; 0 when one
    permutation serves every slice)."""
    return perm + mask_slice.to(tl.int64) * stride


@triton.jit
def row_program(Q, K, V, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_vb, stride_vh,
                row_lo, row_hi, row_full, row_order, intervals, perm_q, perm_k,
                Hq, group, Nq, Nk, slice_b, slice_h, tiles_m, perm_q_stride, perm_k_stride,
                HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, ROWS: tl.constexpr, EVEN_M: tl.constexpr,
                ORDERED: tl.constexpr, HEADS_FAST: tl.constexpr, GATHER: tl.constexpr):
    """The prologue a forward and a dQ program share: what the program works on, and its query rows.

    Returns, in order: its ``pid_bh = b * Hq + h``, batch ``b`` and query head ``h``; its mask
    slice's intervals (``[4, Nk]``, interval plans) and key permutation; the base pointers of its
    key/value head; its ``ROWS`` query rows - the first, ``start_m`` (a plan position), their
    offsets ``offs_i`` from it, inside the query tile (``offs_m_tile``, bitmap rows) and absolute
    (``offs_m``), which exist (``m_ok``), and the caller's rows they are (``q_rows``,
    :func:`perm_rows`); the head dims ``offs_d`` and which exist (``d_ok``); the rows of q
    ``[ROWS, D_PAD]``; and the entries ``[lo, hi)`` of the tile's row list, of which the first
    ``n_full`` are full. The query tile is taken in the plan's launch order, and ``BLOCK_M //
    ROWS`` programs share it.
    """
    SPLIT: tl.constexpr = BLOCK_M // ROWS  # programs per query tile (usually 1)
    pid_tile, pid_bh = program_ids(HEADS_FAST=HEADS_FAST)
    b = pid_bh // Hq
    h = pid_bh % Hq
    h_kv = h // group  # GQA: `group` consecutive query heads share one key/value head
    mask_slice = slice_of(b, h, slice_b, slice_h)
    pid_m = launch_tile(row_order, mask_slice, tiles_m, pid_tile // SPLIT, ORDERED=ORDERED)
    row0 = (pid_tile % SPLIT) * ROWS
    lo, n_full, hi = list_entries(row_lo, row_hi, row_full, mask_slice * tiles_m + pid_m)
    slice_intervals = intervals + mask_slice.to(tl.int64) * 4 * Nk  # interval plans only
    k_perm = slice_perm(perm_k, mask_slice, perm_k_stride)  # reordered plans only

    start_m = pid_m * BLOCK_M + row0
    Q_head = head_base(Q, b, h, stride_qb, stride_qh)
    K_head = head_base(K, b, h_kv, stride_kb, stride_kh)
    V_head = head_base(V, b, h_kv, stride_vb, stride_vh)
    offs_i = tl.arange(0, ROWS)
    offs_m_tile = row0 + offs_i
    offs_m = pid_m * BLOCK_M + offs_m_tile
    offs_d = tl.arange(0, D_PAD)
    m_ok = offs_m < Nq
    d_ok = offs_d < HEAD_DIM
    q_rows = perm_rows(slice_perm(perm_q, mask_slice, perm_q_stride), start_m, offs_i, m_ok, GATHER=GATHER)
    q_ptrs = seq_ptrs(Q_head, start_m, offs_i, stride_qm, offs_d, q_rows, GATHER=GATHER, TRANSPOSED=False)
    q = load_rows(q_ptrs, m_ok, d_ok, TRANSPOSED=False, CHECK_ROWS=not EVEN_M, CHECK_D=HEAD_DIM != D_PAD)
    return (pid_bh, b, h, slice_intervals, k_perm, K_head, V_head,
            start_m, offs_i, offs_m_tile, offs_m, m_ok, q_rows, offs_d, d_ok, q, lo, n_full, hi)


@triton.jit
def head_base(X, b, h, stride_b, stride_h):
    """Pointer to head ``h`` of batch ``b`` of a ``[B, H, N, D]`` tensor, offset in int64."""
    return X + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


@triton.jit
def full_run(index, lo, n_full):
    """Where a list's full entries ``[lo, lo + n_full)`` form one run of consecutive tiles (most
    masks): the run's first tile and its length, ``n_full``; else length 0. Plans give full tiles
    in ascending order (validated), so they are a run exactly when the last is ``n_full - 1`` past
    the first. The forward addresses a run's tiles from its first instead of reading the list at
    every step (a load each step waits on); full tiles outside a run go with the partial ones,
    unmasked. (The backward kernels measured slower this way and read their lists throughout.)"""
    first = tl.load(index + lo, mask=n_full > 0, other=0)
    last = tl.load(index + lo + n_full - 1, mask=n_full > 0, other=-1)
    return first, tl.where(last - first == n_full - 1, n_full, 0)


@triton.jit
def list_step(index, it, offs, n, perm, BLOCK: tl.constexpr, SUB: tl.constexpr, GATHER: tl.constexpr):
    """Step ``it`` of a walk over list entries that visits each tile (``BLOCK`` positions along the
    walked side) in ``BLOCK // SUB`` steps of ``SUB``: the entry, the step's first position inside
    its tile, the first position (``index[entry] * BLOCK`` + that), the step's positions
    (``offs`` from the first), which of them exist (``< n``), and the caller's rows they are
    (:func:`perm_rows`)."""
    STEPS: tl.constexpr = BLOCK // SUB
    entry = it // STEPS
    offset = (it % STEPS) * SUB
    first = tl.load(index + entry) * BLOCK + offset
    positions = first + offs
    ok = positions < n
    rows = perm_rows(perm, first, offs, ok, GATHER=GATHER)
    return entry, offset, first, positions, ok, rows


@triton.jit
def perm_rows(perm, first, offs, ok, GATHER: tl.constexpr):
    """The caller's token rows (int64) at plan positions ``first + offs`` of a reordered plan
    (``GATHER``): ``perm[first + offs]``, loaded once per block for every tensor the block reads or
    writes (:func:`seq_ptrs`); positions past the end (``ok`` false) read row
    0. Without ``GATHER`` positions are rows and nothing is loaded (``offs`` is returned, unused)."""
    if GATHER:
        rows = tl.load(perm + first + offs, mask=ok, other=0).to(tl.int64)
    else:
        rows = offs
    return rows


@triton.jit
def seq_ptrs(head, first, offs, stride, offs_d, rows, GATHER: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Pointers to the plan positions ``first + offs`` of one head's ``[N, D]`` sequence (row
    stride ``stride``), head dims ``offs_d``: a ``[rows, D]`` block, or ``[D, rows]`` if ``TRANSPOSED``.

    With ``GATHER`` (a reordered plan) the block's rows are the caller's tokens ``rows`` from
    :func:`perm_rows`: the kernels read and write the caller's tensors through the permutation, so
    reordering costs no copy of q, k, v or of the outputs. Without it the offset of ``first`` is
    folded into an int64 base pointer and the block's own offsets stay int32.
    """
    if GATHER:
        if TRANSPOSED:
            ptrs = head + rows[None, :] * stride + offs_d[:, None]
        else:
            ptrs = head + rows[:, None] * stride + offs_d[None, :]
    else:
        base = head + first.to(tl.int64) * stride
        if TRANSPOSED:
            ptrs = base + offs[None, :] * stride + offs_d[:, None]
        else:
            ptrs = base + offs[:, None] * stride + offs_d[None, :]
    return ptrs


@triton.jit
def load_tile(ptrs, a_ok, b_ok, CHECK_A: tl.constexpr, CHECK_B: tl.constexpr):
    """``tl.load`` with the bounds masks only where needed (zeros out of bounds).

    ``a_ok``/``b_ok`` are broadcastable masks for the two axes; a constexpr ``CHECK_*`` flag of False
    drops that mask at compile time, so full interior tiles compile to plain vectorised loads.
    """
    if CHECK_A and CHECK_B:
        x = tl.load(ptrs, mask=a_ok & b_ok, other=0.0)
    elif CHECK_A:
        x = tl.load(ptrs, mask=a_ok, other=0.0)
    elif CHECK_B:
        x = tl.load(ptrs, mask=b_ok, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def load_rows(ptrs, ok, d_ok, TRANSPOSED: tl.constexpr, CHECK_ROWS: tl.constexpr, CHECK_D: tl.constexpr):
    """Load a block of one head's rows from :func:`seq_ptrs`, ``[rows, D]`` or ``[D, rows]`` if
    ``TRANSPOSED``: zeros where ``ok`` (rows) or ``d_ok`` (head dims) is false, each checked only
    if its ``CHECK_*`` flag says the block can reach past the end."""
    if TRANSPOSED:
        x = load_tile(ptrs, d_ok[:, None], ok[None, :], CHECK_A=CHECK_D, CHECK_B=CHECK_ROWS)
    else:
        x = load_tile(ptrs, ok[:, None], d_ok[None, :], CHECK_A=CHECK_ROWS, CHECK_B=CHECK_D)
    return x


@triton.jit
def store_rows(ptrs, x, ok, d_ok):
    """Store ``x [rows, D]``, cast to the tensor's dtype, at :func:`seq_ptrs` ``ptrs`` where ``ok``
    (rows) and ``d_ok`` (head dims) hold."""
    tl.store(ptrs, x.to(ptrs.dtype.element_ty), mask=ok[:, None] & d_ok[None, :])


@triton.jit
def tile_words(bitmaps, tile, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Pointer to the first word of partial tile ``tile``'s bitmap (``BLOCK_M`` rows of ``BLOCK_N // 32`` words)."""
    return bitmaps + tile.to(tl.int64) * (BLOCK_M * (BLOCK_N // 32))


@triton.jit
def tile_bits(words, rows, cols, col0, BLOCK_N: tl.constexpr, SPAN: tl.constexpr):
    """Expand a partial tile's packed bitmap (``words``, from :func:`tile_words`) to booleans for a
    block of ``SPAN`` tile columns.

    ``rows`` (tile rows) and ``cols`` (offsets ``0 .. SPAN-1`` from the block's first tile column
    ``col0``) are broadcastable the two ways, e.g. ``rows[:, None]`` and ``cols[None, :]`` for a
    [rows, cols] block, or ``rows[None, :]`` and ``cols[:, None]`` for its transpose. ``col0`` is a
    multiple of ``min(SPAN, 32)``, so the block spans ``ceil(SPAN / 32)`` whole words per row: each
    row loads those few words once (a vector load per word) and the bits are fanned out along the
    columns with shifts, not per-bit loads.
    """
    WORDS: tl.constexpr = BLOCK_N // 32  # words per tile row
    row_words = words + rows * WORDS + col0 // 32
    word = tl.load(row_words) + cols * 0  # broadcast one word per row to the block's shape
    for w in tl.static_range(1, (SPAN + 31) // 32):
        word = tl.where(cols // 32 == w, tl.load(row_words + w), word)
    return ((word >> ((col0 + cols) % 32)) & 1) != 0


@triton.jit
def load_intervals(slice_intervals, keys, key_ok, Nk):
    """The four interval bounds LTS, LTE, UTS, UTE of key columns ``keys`` (interval plans).

    ``slice_intervals`` points at the slice's ``[4, Nk]`` int32 block. Keys past ``Nk`` read empty
    intervals (nothing masked); the kernels mask them by bounds separately.
    """
    lts = tl.load(slice_intervals + keys, mask=key_ok, other=0)
    lte = tl.load(slice_intervals + Nk + keys, mask=key_ok, other=0)
    uts = tl.load(slice_intervals + 2 * Nk + keys, mask=key_ok, other=0)
    ute = tl.load(slice_intervals + 3 * Nk + keys, mask=key_ok, other=0)
    return lts, lte, uts, ute


@triton.jit
def interval_visible(queries, lts, lte, uts, ute):
    """True where query row ``queries`` lies outside both masked intervals [LTS, LTE) and [UTS, UTE)
    of its key column; all arguments broadcastable (absolute query rows, per-key bounds)."""
    return ((queries < lts) | (queries >= lte)) & ((queries < uts) | (queries >= ute))


@triton.jit
def partial_visible(tile, bitmaps, slice_intervals, offs_m_tile, offs_m, offs_j, col0, keys, key_ok, Nk,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_N: tl.constexpr, INTERVALS: tl.constexpr):
    """Which pairs of a partial tile a forward or dQ step sees, ``[rows, SUB_N]``: the step's query
    rows (``offs_m_tile`` inside the tile, ``offs_m`` absolute) against its ``SUB_N`` keys
    (``offs_j`` from tile column ``col0``, absolute ``keys``), from the tile's bitmap or, in an
    interval plan, from the keys' row intervals (key column j hides query rows [LTS_j, LTE_j) and
    [UTS_j, UTE_j))."""
    if INTERVALS:
        lts, lte, uts, ute = load_intervals(slice_intervals, keys, key_ok, Nk)
        visible = interval_visible(offs_m[:, None], lts[None, :], lte[None, :], uts[None, :], ute[None, :])
    else:
        # bit (col0 + j) % 32 of word (col0 + j) // 32 of tile row i
        words = tile_words(bitmaps, tile, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
        visible = tile_bits(words, offs_m_tile[:, None], offs_j[None, :], col0, BLOCK_N=BLOCK_N, SPAN=SUB_N)
    return visible


def is_interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` when they were first
    imported: Triton decides it at definition), on CPU tensors; else they run on CUDA tensors only."""
    return not isinstance(program_ids, JITFunction)


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """Allocate a kernel output (every element is written by a kernel; tests swap in a NaN fill)."""
    return torch.empty(shape, dtype=dtype, device=device)


def lastdim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels assume unit stride along the head dim (vectorised loads); copy only if not."""
    return t if t.stride(-1) == 1 else t.contiguous()
