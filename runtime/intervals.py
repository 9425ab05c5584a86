"""The column-interval form of a mask, with numpy only: its rows, its tile classes, its tile lists.

Per mask slice and key column ``j``, the masked query rows are ``[LTS_j, LTE_j) ∪ [UTS_j, UTE_j)``
(FlashMask's vectors), stored as one int32 array ``[slices, 4, kv_len]`` whose rows are LTS, LTE,
UTS, UTE. An interval plan is classified from these vectors alone: for every tile, the number of
masked pairs it holds is a sum over its columns of interval lengths clipped to its rows, which a
difference array over query tiles gives in ``O(kv_len + tiles)`` per slice, exactly (FlashMask's
per-tile minima and maxima are a cheaper but conservative test; a plan needs the exact class). The
reader derives an interval plan's row and column lists here, so this module stays in the runtime.
"""

from __future__ import annotations

import numpy as np

LTS, LTE, UTS, UTE = range(4)
FULL_TILE = -1  # tile id of a full entry, in every variant
INTERVAL_TILE = -2  # tile id of a partial entry of an interval plan (no bitmap: rebuilt from the vectors)
LIST_ARRAYS = ("row_ptr", "row_full", "row_col", "row_tile", "col_ptr", "col_full", "col_row", "col_tile")
# Deriving lists costs O(tiles) memory while the file is O(kv_len): bound the tiles a plan may ask for
# (2^26 = 8192 x 8192 tiles per slice: 1M tokens in 128-tiles, 262144 in 32-tiles).
MAX_TILES_PER_SLICE = 1 << 26


def masked_rows(iv: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Whether each of ``rows`` (shape ``[r, 1]``) is masked in each column of one slice ``iv [4, kv]``."""
    return ((rows >= iv[LTS]) & (rows < iv[LTE])) | ((rows >= iv[UTS]) & (rows < iv[UTE]))


def visible_rows(iv: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of one slice's mask as bools ``[stop - start, kv_len]`` (True = may attend)."""
    return ~masked_rows(iv, np.arange(start, stop, dtype=np.int64)[:, None])


def _pieces(iv: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """The masked set of each column as signed intervals: the two stored ones, minus their overlap."""
    iv = iv.astype(np.int64)
    overlap = (np.maximum(iv[UTS], iv[LTS]), np.minimum(iv[UTE], iv[LTE]))
    return [(iv[UTS], iv[UTE], 1), (iv[LTS], iv[LTE], 1), (*overlap, -1)]


def masked_pairs(intervals: np.ndarray) -> int:
    """The number of masked (query, key) pairs of all slices of ``intervals [S, 4, kv]``."""
    total = 0
    for iv in intervals:
        for a, b, sign in _pieces(iv):
            total += sign * int(np.maximum(b - a, 0).sum())
    return total


def tile_masked_counts(iv: np.ndarray, q_len: int, block_m: int, block_n: int) -> np.ndarray:
    """Masked pairs per tile of one slice, int64 ``[tiles_m, tiles_n]``, in O(kv_len + tiles).

    An interval ``[a, b)`` of column ``j`` puts ``min(b, (mf+1)·bm) - a`` rows in its first query
    tile ``mf``, ``block_m`` rows in every tile strictly between, and ``b - ml·bm`` in its last tile
    ``ml``: six signed entries of a difference array over query tiles, summed per key tile.
    """
    tiles_m, tiles_n = -(-q_len // block_m), -(-iv.shape[1] // block_n)
    key_tile = np.arange(iv.shape[1], dtype=np.int64) // block_n
    index, weight = [], []
    for a, b, sign in _pieces(iv):
        keep = a < b
        a, b, base = a[keep], b[keep], key_tile[keep] * (tiles_m + 1)
        first, last = a // block_m, (b - 1) // block_m
        spans = last > first
        head = np.minimum(b, (first + 1) * block_m) - a
        tail = np.where(spans, b - last * block_m, 0)
        middle = np.where(spans, block_m, 0)
        index += [base + first, base + first + 1, base + first + 1, base + last, base + last, base + last + 1]
        weight += [sign * head, -sign * head, sign * middle, -sign * middle, sign * tail, -sign * tail]
    diff = np.bincount(np.concatenate(index), np.concatenate(weight).astype(np.float64), minlength=tiles_n * (tiles_m + 1))
    counts = np.rint(np.cumsum(diff.reshape(tiles_n, tiles_m + 1), axis=1)[:, :tiles_m]).astype(np.int64)
    return counts.T


def tile_classes(iv: np.ndarray, q_len: int, block_m: int, block_n: int) -> np.ndarray:
    """Tile classes of one slice as int8 ``[tiles_m, tiles_n]``: 0 empty, 1 full, 2 partial."""
    kv_len = iv.shape[1]
    masked = tile_masked_counts(iv, q_len, block_m, block_n)
    heights = np.minimum(block_m, q_len - np.arange(masked.shape[0]) * block_m)
    widths = np.minimum(block_n, kv_len - np.arange(masked.shape[1]) * block_n)
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


def tile_lists(intervals: np.ndarray, q_len: int, block_m: int, block_n: int) -> dict[str, np.ndarray]:
    """The row and column lists that ``intervals [S, 4, kv]`` make, as a plan stores them (int32).

    Within each list, full tiles come first, then partial tiles (tile id -2), each by ascending tile
    index: the only order an interval plan may have, so equal masks give identical lists.
    """
    rows: list[tuple] = []
    cols: list[tuple] = []
    for iv in intervals:
        classes = tile_classes(iv, q_len, block_m, block_n)
        rows.append(_lists(classes))
        cols.append(_lists(np.ascontiguousarray(classes.T)))
    out = {}
    for prefix, other_name, per_slice in (("row", "col", rows), ("col", "row", cols)):
        counts, n_full, other, tile = (np.concatenate(part) for part in zip(*per_slice))
        out[f"{prefix}_ptr"] = np.concatenate([[0], np.cumsum(counts)])
        out[f"{prefix}_full"], out[f"{prefix}_{other_name}"], out[f"{prefix}_tile"] = n_full, other, tile
    return {name: np.ascontiguousarray(out[name], dtype="<i4") for name in LIST_ARRAYS}
