"""The Triton path of binding: visible runs to interval vectors and ELL tile lists in three launches.

1. :func:`_columns_kernel`, one program per (slice, key tile): clamps its columns' runs, writes
   their canonical interval vectors, the query-tile range where the key tile is full (from the
   largest run start and the smallest run end), and adds each non-empty run's query-tile range
   ``[start // block_m, (end - 1) // block_m]`` to the key tile's difference array (atomics; a
   range equal to the previous column's is skipped: the union, all that is read, is the same).
2. :func:`_column_lists_kernel`, one program per (slice, key tile): a prefix sum of the difference
   array marks the query tiles some run meets; full ones (a contiguous range) go first, partial
   ones after, each ascending; it also writes its key tile's classes (``[slices, tiles_n, tiles_m]``:
   each program writes one contiguous row) for step 3.
3. :func:`_row_lists_kernel`, one program per (slice, ``ROWS`` query tiles): two passes over their
   columns of classes write the full, then the partial key tiles of each.

Work is O(kv_len + tiles), no host synchronisation, and every shape and launch grid depends only on
the sizes: the same compiled kernels serve every step. Long lists are walked in chunks with a
carried prefix, so one program never holds more than ``MAX_VALUES`` values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from maskc.runtime.family.lists import EMPTY, FULL, PARTIAL, TileLists
from maskc.runtime.format import FULL_TILE, INTERVAL_TILE, LTE, LTS, UTE, UTS

MAX_VALUES = 4096  # tile classes one program holds at once when walking its lists
ROWS = 8  # row lists per program of the row-list kernel (their classes are read 8 bytes at a time)

# Kernels may only read globals that are tl.constexpr.
_LTS, _LTE, _UTS, _UTE = (tl.constexpr(row) for row in (LTS, LTE, UTS, UTE))
_FULL_TILE, _INTERVAL_TILE = tl.constexpr(FULL_TILE), tl.constexpr(INTERVAL_TILE)
_EMPTY, _FULL, _PARTIAL = tl.constexpr(EMPTY), tl.constexpr(FULL), tl.constexpr(PARTIAL)


@triton.jit
def _clamped_runs(start_ptr, end_ptr, cols, inside, q_len):
    """The runs of columns ``cols`` clamped to ``[0, q_len]``, an empty one as ``[q_len, q_len)``."""
    start = tl.minimum(tl.maximum(tl.load(start_ptr + cols, mask=inside, other=0), 0), q_len).to(tl.int32)
    end = tl.minimum(tl.maximum(tl.load(end_ptr + cols, mask=inside, other=0), 0), q_len).to(tl.int32)
    empty = start >= end
    return tl.where(empty, q_len, start), tl.where(empty, q_len, end), empty


@triton.jit
def _columns_kernel(start_ptr, end_ptr, iv_ptr, diff_ptr, full_ptr, q_len, kv_len, tiles_m, tiles_n,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # slice * tiles_n + key tile
    s = pid // tiles_n
    n = pid % tiles_n
    start_ptr += s * kv_len
    end_ptr += s * kv_len
    cols = n * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = cols < kv_len
    start, end, empty = _clamped_runs(start_ptr, end_ptr, cols, inside, q_len)

    iv = iv_ptr + s * 4 * kv_len + cols
    tl.store(iv + _LTS * kv_len, end, mask=inside)
    tl.store(iv + _LTE * kv_len, tl.zeros_like(end) + q_len, mask=inside)
    tl.store(iv + _UTS * kv_len, tl.zeros_like(start), mask=inside)
    tl.store(iv + _UTE * kv_len, start, mask=inside)

    max_start = tl.max(tl.where(inside, start, 0), axis=0)
    min_end = tl.min(tl.where(inside, end, q_len), axis=0)
    full_lo = (max_start + BLOCK_M - 1) // BLOCK_M
    full_hi = tl.where(min_end >= q_len, tiles_m, min_end // BLOCK_M)
    tl.store(full_ptr + 2 * pid, full_lo)
    tl.store(full_ptr + 2 * pid + 1, tl.maximum(full_hi, full_lo))

    # The union of the columns' query-tile ranges: a column whose range is its left neighbour's adds
    # nothing to it, so only the others are counted (neighbouring columns mostly share both ends,
    # and atomics on one address would otherwise serialise).
    first, last = start // BLOCK_M, (end - 1) // BLOCK_M
    left_inside = inside & (cols > n * BLOCK_N)
    left_start, left_end, left_empty = _clamped_runs(start_ptr, end_ptr, cols - 1, left_inside, q_len)
    repeat = left_inside & ~left_empty & (left_start // BLOCK_M == first) & ((left_end - 1) // BLOCK_M == last)
    counted = inside & ~empty & ~repeat
    diff = diff_ptr + pid * (tiles_m + 1)
    ones = tl.full([BLOCK_N], 1, tl.int32)
    tl.atomic_add(diff + first, ones, mask=counted)
    tl.atomic_add(diff + last + 1, -ones, mask=counted)


@triton.jit
def _column_lists_kernel(diff_ptr, full_ptr, classes_ptr, lo_ptr, hi_ptr, nfull_ptr, other_ptr, tile_ptr,
                         tiles_m, tiles_n, CHUNK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # slice * tiles_n + key tile
    full_lo = tl.load(full_ptr + 2 * pid)
    full_hi = tl.load(full_ptr + 2 * pid + 1)
    n_full = full_hi - full_lo
    lo = pid * tiles_m
    covering = n_full * 0  # runs covering the query tile before this chunk (a carried prefix sum)
    n_partial = n_full * 0
    for c0 in range(0, tiles_m, CHUNK):
        m = c0 + tl.arange(0, CHUNK)
        inside = m < tiles_m
        d = tl.load(diff_ptr + pid * (tiles_m + 1) + m, mask=inside, other=0)
        covered = (covering + tl.cumsum(d, axis=0)) > 0
        covering += tl.sum(d, axis=0)
        full = (m >= full_lo) & (m < full_hi)
        partial = covered & ~full & inside
        ahead = tl.cumsum(partial.to(tl.int32), axis=0) - 1
        pos = tl.where(full, m - full_lo, n_full + n_partial + ahead)
        listed = full | partial
        tl.store(other_ptr + lo + pos, m, mask=listed)
        tl.store(tile_ptr + lo + pos, tl.where(full, _FULL_TILE, _INTERVAL_TILE), mask=listed)
        tile_class = tl.where(full, _FULL, tl.where(partial, _PARTIAL, _EMPTY)).to(tl.int8)
        tl.store(classes_ptr + lo + m, tile_class, mask=inside)
        n_partial += tl.sum(partial.to(tl.int32), axis=0)
    tl.store(lo_ptr + pid, lo.to(tl.int32))
    tl.store(hi_ptr + pid, (lo + n_full + n_partial).to(tl.int32))
    tl.store(nfull_ptr + pid, n_full)


@triton.jit
def _row_lists_kernel(classes_ptr, lo_ptr, hi_ptr, nfull_ptr, other_ptr, tile_ptr, tiles_m, tiles_n,
                      CHUNK: tl.constexpr, ROWS: tl.constexpr):
    groups = tl.cdiv(tiles_m, ROWS)
    pid = tl.program_id(0)  # slice * groups + group of ROWS query tiles
    s = (pid // groups).to(tl.int64)
    m0 = (pid % groups) * ROWS
    rows = m0 + tl.arange(0, ROWS)
    inside = rows < tiles_m
    lo = (s * tiles_m + rows) * tiles_n
    classes_ptr += s * tiles_n * tiles_m + m0  # columns m0.. of the slice's [tiles_n, tiles_m] classes
    n_full = _write_entries(classes_ptr, other_ptr, tile_ptr, lo, inside, tl.zeros([ROWS], tl.int32), tiles_m, tiles_n,
                            _FULL, _FULL_TILE, CHUNK, ROWS)
    count = _write_entries(classes_ptr, other_ptr, tile_ptr, lo, inside, n_full, tiles_m, tiles_n,
                           _PARTIAL, _INTERVAL_TILE, CHUNK, ROWS)
    tl.store(lo_ptr + s * tiles_m + rows, lo.to(tl.int32), mask=inside)
    tl.store(hi_ptr + s * tiles_m + rows, (lo + count).to(tl.int32), mask=inside)
    tl.store(nfull_ptr + s * tiles_m + rows, n_full, mask=inside)


@triton.jit
def _write_entries(classes_ptr, other_ptr, tile_ptr, lo, inside, count, tiles_m, tiles_n,
                   CLASS: tl.constexpr, TILE_ID: tl.constexpr, CHUNK: tl.constexpr, ROWS: tl.constexpr):
    """Append the key tiles of class ``CLASS`` of ROWS row lists (starting at ``lo``, ``count``
    entries in already), in ascending order; returns the new counts."""
    for c0 in range(0, tiles_n, CHUNK):
        n = c0 + tl.arange(0, CHUNK)
        ok = (n < tiles_n)[:, None] & inside[None, :]
        hit = tl.load(classes_ptr + n[:, None] * tiles_m + tl.arange(0, ROWS)[None, :], mask=ok, other=_EMPTY) == CLASS
        pos = count[None, :] + tl.cumsum(hit.to(tl.int32), axis=0) - 1
        tl.store(other_ptr + lo[None, :] + pos, n[:, None] + tl.zeros([CHUNK, ROWS], tl.int32), mask=hit)
        tl.store(tile_ptr + lo[None, :] + pos, tl.full([CHUNK, ROWS], TILE_ID, tl.int32), mask=hit)
        count += tl.sum(hit.to(tl.int32), axis=0)
    return count


def bind_triton(start: torch.Tensor, end: torch.Tensor, q_len: int, block_m: int, block_n: int) -> tuple[torch.Tensor, TileLists]:
    """Interval vectors ``[S, 4, kv]`` and ELL lists of runs ``[S, kv]``, by the three kernels above."""
    slices, kv_len = start.shape
    tiles_m, tiles_n = -(-q_len // block_m), -(-kv_len // block_n)
    device = start.device
    start, end = start.contiguous(), end.contiguous()
    intervals = empty((slices, 4, kv_len), torch.int32, device)
    diff = torch.zeros(slices * tiles_n * (tiles_m + 1), dtype=torch.int32, device=device)
    full_range = empty((slices * tiles_n * 2,), torch.int32, device)
    classes = empty((slices * tiles_m * tiles_n,), torch.int8, device)
    rows = [empty((slices * tiles_m,), torch.int32, device) for _ in range(3)]
    cols = [empty((slices * tiles_n,), torch.int32, device) for _ in range(3)]
    row_entries = [empty((slices * tiles_m * tiles_n,), torch.int32, device) for _ in range(2)]
    col_entries = [empty((slices * tiles_m * tiles_n,), torch.int32, device) for _ in range(2)]

    _columns_kernel[(slices * tiles_n,)](start, end, intervals, diff, full_range, q_len, kv_len, tiles_m, tiles_n,
                                         BLOCK_M=block_m, BLOCK_N=block_n)
    _column_lists_kernel[(slices * tiles_n,)](diff, full_range, classes, *cols, *col_entries, tiles_m, tiles_n,
                                              CHUNK=_chunk(tiles_m, 1))
    _row_lists_kernel[(slices * triton.cdiv(tiles_m, ROWS),)](classes, *rows, *row_entries, tiles_m, tiles_n,
                                                             CHUNK=_chunk(tiles_n, ROWS), ROWS=ROWS)
    lists = TileLists(*rows, *row_entries, *cols, *col_entries, q_len=q_len, kv_len=kv_len, block_m=block_m, block_n=block_n,
                      slices=slices)
    return intervals, lists


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate a kernel output (the kernels write every element that is read; tests swap in a poison fill)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _chunk(tiles: int, lists: int) -> int:
    """Tiles of each of ``lists`` lists one program loads at once: the lists' length rounded up to
    a power of two, and at most MAX_VALUES in all."""
    return max(1, min(triton.next_power_of_2(tiles), MAX_VALUES // lists))
