"""The column-interval form of a mask, with numpy only: its rows, its tile classes, its tile lists.

Per mask slice and key column ``j``, the masked query rows are ``[LTS_j, LTE_j) ∪ [UTS_j, UTE_j)``
(FlashMask's vectors), stored as one int32 array ``[slices, 4, kv_len]`` whose rows are LTS, LTE,
UTS, UTE. An interval plan is classified from these vectors alone: for every tile, the number of
masked pairs it holds is a sum over its columns of interval lengths clipped to its rows, which a
difference array over query tiles gives in ``O(kv_len + tiles)`` per slice, exactly (FlashMask's
per-tile minima and maxima are a cheaper but conservative test; a plan needs the exact class). The
reader derives an interval plan's row and column lists here, and the compiler builds them here.
"""

from __future__ import annotations

import numpy as np

from maskc.runtime.format.plan import FULL_TILE, INTERVAL_TILE, LIST_ARRAYS

LTS, LTE, UTS, UTE = range(4)
MAX_DERIVED_TILES = 1 << 26
"""The most tiles, over all its slices, of a plan whose lists readers derive (interval and dense
plans): deriving costs O(tiles) time and memory while such a file is O(kv_len), so the bound is
checked before anything is derived. 2^26 is 8192 x 8192 tiles: one slice of 1M tokens in 128-tiles,
or 16 slices of 131072 tokens in 64-tiles; the derived lists then take at most 1 GiB."""


def masked_rows(iv: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Whether each of ``rows`` (shape ``[r, 1]``) is masked in each column of one slice ``iv [4, kv]``."""
    return ((rows >= iv[LTS]) & (rows < iv[LTE])) | ((rows >= iv[UTS]) & (rows < iv[UTE]))


def visible_rows(iv: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of one slice's mask as bools ``[stop - start, kv_len]`` (True = may attend)."""
    return ~masked_rows(iv, np.arange(start, stop, dtype=np.int64)[:, None])


def _pieces(iv: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """The masked set of each column as signed intervals: the two stored ones, minus their overlap
    (``iv`` is ``[..., 4, kv]``; the bounds come back as ``[..., kv]``)."""
    iv = iv.astype(np.int64)
    lts, lte, uts, ute = (iv[..., i, :] for i in (LTS, LTE, UTS, UTE))
    return [(uts, ute, 1), (lts, lte, 1), (np.maximum(uts, lts), np.minimum(ute, lte), -1)]


def masked_pairs(intervals: np.ndarray) -> int:
    """The number of masked (query, key) pairs of all slices of ``intervals [S, 4, kv]``."""
    return sum(sign * int(np.maximum(b - a, 0).sum(dtype=np.int64)) for a, b, sign in _pieces(intervals))


def tile_masked_counts(iv: np.ndarray, q_len: int, block_m: int, block_n: int) -> np.ndarray:
    """Masked pairs per tile, int64 ``[tiles_m, tiles_n]`` for one slice ``iv [4, kv]`` (or
    ``[S, tiles_m, tiles_n]`` for ``[S, 4, kv]``), in O(kv_len + tiles) per slice.

    An interval ``[a, b)`` of column ``j`` puts ``min(b, (mf+1)·bm) - a`` rows in its first query
    tile ``mf``, ``block_m`` rows in every tile strictly between, and ``b - ml·bm`` in its last tile
    ``ml``: six signed entries of a difference array over query tiles, summed per key tile.
    """
    batch = iv[None] if iv.ndim == 2 else iv
    slices, kv_len = batch.shape[0], batch.shape[2]
    tiles_m, tiles_n = -(-q_len // block_m), -(-kv_len // block_n)
    column = np.arange(slices, dtype=np.int64)[:, None] * tiles_n + np.arange(kv_len, dtype=np.int64)[None, :] // block_n
    index, weight = [], []
    for a, b, sign in _pieces(batch):
        keep = a < b
        a, b, base = a[keep], b[keep], column[keep] * (tiles_m + 1)
        first, last = a // block_m, (b - 1) // block_m
        spans = last > first
        head = np.minimum(b, (first + 1) * block_m) - a
        tail = np.where(spans, b - last * block_m, 0)
        middle = np.where(spans, block_m, 0)
        index += [base + first, base + first + 1, base + first + 1, base + last, base + last, base + last + 1]
        weight += [sign * head, -sign * head, sign * middle, -sign * middle, sign * tail, -sign * tail]
    diff = np.bincount(np.concatenate(index), np.concatenate(weight).astype(np.float64), minlength=slices * tiles_n * (tiles_m + 1))
    counts = np.rint(np.cumsum(diff.reshape(slices, tiles_n, tiles_m + 1), axis=2)[:, :, :tiles_m]).astype(np.int64)
    counts = counts.transpose(0, 2, 1)
    return counts[0] if iv.ndim == 2 else counts


def tile_classes(iv: np.ndarray, q_len: int, block_m: int, block_n: int) -> np.ndarray:
    """Tile classes as int8 ``[tiles_m, tiles_n]`` of one slice ``iv [4, kv]`` (or
    ``[S, tiles_m, tiles_n]`` for ``[S, 4, kv]``): 0 empty, 1 full, 2 partial."""
    kv_len = iv.shape[-1]
    masked = tile_masked_counts(iv, q_len, block_m, block_n)
    heights = np.minimum(block_m, q_len - np.arange(masked.shape[-2]) * block_m)
    widths = np.minimum(block_n, kv_len - np.arange(masked.shape[-1]) * block_n)
    size = heights[:, None] * widths[None, :]
    return np.where(masked == 0, 1, np.where(masked == size, 0, 2)).astype(np.int8)


def _lists(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CSR lists of a class matrix ``[lists, other]``: per list its length and full count, then each
    entry's other index and tile id; full entries first, each group by ascending index, no sorting."""
    full, partial = classes == 1, classes == 2
    n_full, n_partial = full.sum(1), partial.sum(1)
    counts = n_full + n_partial
    ptr = np.concatenate([[0], np.cumsum(counts)])
    other = np.empty(int(ptr[-1]), dtype=np.int64)
    tile = np.empty(int(ptr[-1]), dtype=np.int64)
    for group, offset, value, mask in ((n_full, ptr[:-1], FULL_TILE, full), (n_partial, ptr[:-1] + n_full, INTERVAL_TILE, partial)):
        owner, index = np.nonzero(mask)  # row-major: by owner, then by ascending index
        position = offset[owner] + np.arange(owner.size) - (np.cumsum(group) - group)[owner]
        other[position] = index
        tile[position] = value
    return counts, n_full, other, tile


LIST_CHUNK_TILES = 1 << 20  # tiles classified at a time: temporaries stay bounded whatever the plan's size


def tile_lists(intervals: np.ndarray, q_len: int, block_m: int, block_n: int) -> dict[str, np.ndarray]:
    """The row and column lists that ``intervals [S, 4, kv]`` make, as a plan stores them (int32).

    Within each list, full tiles come first, then partial tiles (tile id -2), each by ascending tile
    index: the only order an interval plan may have, so equal masks give identical lists. Tiles are
    classified at most :data:`LIST_CHUNK_TILES` at a time (many small slices together, a large
    slice a band of query tiles at a time), so the memory beyond the lists themselves is bounded.
    """
    slices, kv_len = intervals.shape[0], intervals.shape[2]
    tiles_m, tiles_n = -(-q_len // block_m), -(-kv_len // block_n)
    rows: list[tuple] = []
    cols: list[tuple] = []
    if tiles_m * tiles_n <= LIST_CHUNK_TILES:
        step = LIST_CHUNK_TILES // (tiles_m * tiles_n)
        for lo in range(0, slices, step):
            classes = tile_classes(intervals[lo:lo + step], q_len, block_m, block_n)
            rows.append(_lists(classes.reshape(-1, tiles_n)))
            cols.append(_lists(np.ascontiguousarray(classes.transpose(0, 2, 1)).reshape(-1, tiles_m)))
    else:
        for iv in intervals:
            slice_rows, slice_cols = _large_slice_lists(iv, q_len, block_m, block_n)
            rows += slice_rows
            cols.append(slice_cols)
    out = {}
    for prefix, other_name, parts in (("row", "col", rows), ("col", "row", cols)):
        counts, n_full, other, tile = (np.concatenate(part) for part in zip(*parts))
        out[f"{prefix}_ptr"] = np.concatenate([[0], np.cumsum(counts)])
        out[f"{prefix}_full"], out[f"{prefix}_{other_name}"], out[f"{prefix}_tile"] = n_full, other, tile
    return {name: np.ascontiguousarray(out[name], dtype="<i4") for name in LIST_ARRAYS}


def _large_slice_lists(iv: np.ndarray, q_len: int, block_m: int, block_n: int) -> tuple[list[tuple], tuple]:
    """The row lists (a part per band of query tiles) and the column lists of one slice too large to
    classify at once. The bands are classified twice: once for the row lists and the column lists'
    lengths, once to place each column entry (full ones first, each group by ascending query tile)."""
    tiles_m, tiles_n = -(-q_len // block_m), -(-iv.shape[1] // block_n)
    step = max(1, LIST_CHUNK_TILES // tiles_n)
    bands = range(0, tiles_m, step)
    rows = []
    n_full, n_partial = np.zeros(tiles_n, dtype=np.int64), np.zeros(tiles_n, dtype=np.int64)
    for m0 in bands:
        classes = _band_classes(iv, q_len, block_m, block_n, m0, m0 + step)
        rows.append(_lists(classes))
        n_full += (classes == 1).sum(0)
        n_partial += (classes == 2).sum(0)
    counts = n_full + n_partial
    start = np.cumsum(counts) - counts
    other = np.empty(int(counts.sum()), dtype=np.int64)
    tile = np.empty_like(other)
    placed = {1: np.zeros(tiles_n, dtype=np.int64), 2: np.zeros(tiles_n, dtype=np.int64)}
    for m0 in bands:
        classes = _band_classes(iv, q_len, block_m, block_n, m0, m0 + step)
        for cls, base, value in ((1, start, FULL_TILE), (2, start + n_full, INTERVAL_TILE)):
            n, m = np.nonzero((classes == cls).T)  # by key tile, then ascending query tile
            per_column = np.bincount(n, minlength=tiles_n)
            position = base[n] + placed[cls][n] + np.arange(n.size) - (np.cumsum(per_column) - per_column)[n]
            other[position], tile[position] = m + m0, value
            placed[cls] += per_column
    return rows, (counts, n_full, other, tile)


def _band_classes(iv: np.ndarray, q_len: int, block_m: int, block_n: int, m0: int, m1: int) -> np.ndarray:
    """Tile classes of query tiles ``[m0, m1)`` of one slice: its intervals clipped to those rows."""
    r0, r1 = m0 * block_m, min(m1 * block_m, q_len)
    return tile_classes(np.clip(iv.astype(np.int64) - r0, 0, r1 - r0), r1 - r0, block_m, block_n)
