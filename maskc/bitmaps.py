"""Block-sparse tiles: the lists and partial-tile bitmaps of a mask, from its rows or its interval vectors.

From rows, :class:`BitmapBuilder` classifies one query tile row at a time, so memory stays bounded
by one row block whatever the mask's size. From interval vectors, :func:`bitmap_arrays` rebuilds
each partial tile's bits in time proportional to the partial tiles instead of ``N × N``. Both store
each distinct bitmap once, numbered by first appearance in row-list order, so the same mask gives
the same arrays either way.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from maskc.runtime.format import FULL_TILE, INTERVAL_TILE, LIST_ARRAYS, LTE, LTS, UTE, UTS, Plan


def _i32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype="<i4")


class _Bitmaps:
    """Distinct partial-tile bitmaps, each stored once, numbered in order of first appearance."""

    def __init__(self) -> None:
        self.ids: dict[bytes, int] = {}
        self.words: list[np.ndarray] = []

    def add(self, tile_bits: np.ndarray) -> int:
        words = np.packbits(tile_bits, axis=-1, bitorder="little").view("<u4")
        key = words.tobytes()
        tid = self.ids.get(key)
        if tid is None:
            tid = self.ids[key] = len(self.words)
            self.words.append(words)
        return tid


class BitmapBuilder:
    """The block-sparse arrays of a mask, built one query tile row at a time: a row-reading sink
    (:func:`maskc.scan.read_rows`) fed with a step of ``bm`` rows."""

    def __init__(self, shape: tuple[int, int, int, int], bm: int, bn: int):
        self.shape, self.bm, self.bn = shape, bm, bn
        B, H, nq, nk = shape
        self.tiles_m, self.tiles_n = -(-nq // bm), -(-nk // bn)
        self.col_extent = np.minimum(bn, nk - np.arange(self.tiles_n) * bn)
        self.bitmaps = _Bitmaps()
        self.entries: list[np.ndarray] = []  # per row: [k, 4] = (row id, col, tile id, is_partial)
        self.row_full = np.zeros(B * H * self.tiles_m, dtype=np.int64)

    def add(self, s: int, start: int, rows: np.ndarray) -> None:
        """Classify the tiles of the query tile row starting at row ``start`` of slice ``s`` from its
        rows ``[<= bm, kv_len]``."""
        height, nk = rows.shape
        row = s * self.tiles_m + start // self.bm
        padded = np.zeros((self.bm, self.tiles_n * self.bn), dtype=bool)
        padded[:height, :nk] = rows
        tiles = padded.reshape(self.bm, self.tiles_n, self.bn)
        counts = tiles.sum(axis=(0, 2), dtype=np.int64)
        full = np.flatnonzero(counts == height * self.col_extent)
        partial = np.flatnonzero((counts > 0) & (counts < height * self.col_extent))
        ids = [self.bitmaps.add(tiles[:, n, :]) for n in partial]
        row_entries = np.empty((full.size + partial.size, 4), dtype=np.int64)
        row_entries[:, 0] = row
        row_entries[:, 1] = np.concatenate([full, partial])
        row_entries[:, 2] = np.concatenate([np.full(full.size, FULL_TILE), np.asarray(ids, dtype=np.int64)])
        row_entries[:, 3] = np.concatenate([np.zeros(full.size), np.ones(partial.size)])
        self.entries.append(row_entries)
        self.row_full[row] = full.size

    def arrays(self) -> dict[str, np.ndarray]:
        """The lists, bitmaps and (empty) interval vectors of a block-sparse plan."""
        B, H, nq, nk = self.shape
        allrows = np.concatenate(self.entries) if self.entries else np.zeros((0, 4), dtype=np.int64)
        words = self.bitmaps.words
        arrays = _csr_arrays(allrows, self.row_full, B * H, self.tiles_m, self.tiles_n)
        arrays["bitmaps"] = np.stack(words) if words else np.zeros((0, self.bm, self.bn // 32), dtype="<u4")
        arrays["intervals"] = np.zeros((0, 4, nk), dtype="<i4")
        return arrays


def _csr_arrays(rows: np.ndarray, row_full: np.ndarray, slices: int, tiles_m: int, tiles_n: int) -> dict[str, np.ndarray]:
    """Row CSR in compile order (full tiles first) and its transpose, the column CSR, full first too."""
    row_id, col, tile, is_partial = rows.T
    row_counts = np.bincount(row_id, minlength=slices * tiles_m)
    s, m = np.divmod(row_id, tiles_m)
    col_id = s * tiles_n + col
    order = np.lexsort((m, is_partial, col_id))
    col_counts = np.bincount(col_id, minlength=slices * tiles_n)
    col_full = np.bincount(col_id[is_partial == 0], minlength=slices * tiles_n)
    return {
        "row_ptr": _i32(np.concatenate([[0], np.cumsum(row_counts)])),
        "row_full": _i32(row_full),
        "row_col": _i32(col),
        "row_tile": _i32(tile),
        "col_ptr": _i32(np.concatenate([[0], np.cumsum(col_counts)])),
        "col_full": _i32(col_full),
        "col_row": _i32(m[order]),
        "col_tile": _i32(tile[order]),
    }


def bitmap_arrays(lists: dict[str, np.ndarray], vectors: np.ndarray, q_len: int, bm: int, bn: int, chunk: int = 512) -> dict[str, np.ndarray]:
    """What turns the lists of an interval plan (:func:`maskc.runtime.format.tile_lists` of
    ``vectors [slices, 4, kv_len]``) into a block-sparse plan's: the partial entries' tile ids, the
    bitmaps, each partial tile's bits rebuilt from the vectors (``chunk`` tiles at a time), and empty
    interval vectors."""
    slices, _, nk = vectors.shape
    tiles_m, tiles_n = -(-q_len // bm), -(-nk // bn)
    partial = np.flatnonzero(lists["row_tile"] == INTERVAL_TILE)
    row_id = np.repeat(np.arange(slices * tiles_m), np.diff(lists["row_ptr"].astype(np.int64)))[partial]
    s, m = np.divmod(row_id, tiles_m)
    n = lists["row_col"][partial].astype(np.int64)
    # key columns past kv_len are masked on every row; rows past q_len are cleared below
    iv = np.zeros((slices, 4, tiles_n * bn), dtype=np.int64)
    iv[:, LTS, :], iv[:, LTE, :], iv[:, UTS, :], iv[:, UTE, :] = q_len, q_len, 0, q_len
    iv[:, :, :nk] = vectors
    packed = np.empty((partial.size, bm, bn // 32), dtype="<u4")
    for lo in range(0, partial.size, chunk):
        hi = min(lo + chunk, partial.size)
        cols = n[lo:hi, None] * bn + np.arange(bn)  # [tiles, bn]
        bounds = iv[s[lo:hi, None], :, cols]  # [tiles, bn, 4]
        rows = (m[lo:hi, None] * bm + np.arange(bm))[:, :, None]  # [tiles, bm, 1]
        masked = ((bounds[:, None, :, LTS] <= rows) & (rows < bounds[:, None, :, LTE])) | (
            (bounds[:, None, :, UTS] <= rows) & (rows < bounds[:, None, :, UTE]))
        visible = ~masked & (rows < q_len)
        packed[lo:hi] = np.packbits(visible, axis=-1, bitorder="little").view("<u4")
    row_tile, col_tile = lists["row_tile"], lists["col_tile"]
    if partial.size:  # number the distinct bitmaps by first appearance
        flat = packed.reshape(partial.size, -1)
        _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
        rank = np.empty(first.size, dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(first.size)
        tile_id = rank[inverse.ravel()]
        row_tile = row_tile.astype(np.int64)
        row_tile[partial] = tile_id
        # the column lists' partial entries: the same tiles, found by (slice, row, column)
        key = (s * tiles_m + m) * tiles_n + n
        col_partial = np.flatnonzero(col_tile == INTERVAL_TILE)
        col_id = np.repeat(np.arange(slices * tiles_n), np.diff(lists["col_ptr"].astype(np.int64)))[col_partial]
        cs, cn = np.divmod(col_id, tiles_n)
        col_key = (cs * tiles_m + lists["col_row"][col_partial].astype(np.int64)) * tiles_n + cn
        by_key = np.argsort(key)
        col_tile = col_tile.astype(np.int64)
        col_tile[col_partial] = tile_id[by_key[np.searchsorted(key, col_key, sorter=by_key)]]
        packed = packed[np.sort(first)]
    return {"row_tile": _i32(row_tile), "col_tile": _i32(col_tile), "bitmaps": np.ascontiguousarray(packed, dtype="<u4"),
            "intervals": np.zeros((0, 4, nk), dtype="<i4")}


def bitmap_plan(plan: Plan, chunk: int = 512) -> Plan:
    """The block-sparse plan of an interval plan's mask: the same lists, with bitmaps
    (:func:`bitmap_arrays`). It keeps the interval hash of the mask (``hash_of="intervals"``) and
    drops the interval plan's predictions, which were made for another variant."""
    lists = {name: plan.arrays[name] for name in LIST_ARRAYS}
    made = bitmap_arrays(lists, plan.arrays["intervals"], plan.q_len, plan.block_m, plan.block_n, chunk)
    return replace(plan, arrays={**plan.arrays, **made}, variant="block_sparse", predictions=None)
