"""The compiler: classify every tile of a mask, build the row and column lists, write a Plan.

The mask is read one tile row (``block_m`` query rows) at a time, so memory stays bounded by one
row block whatever the mask's size. The result is deterministic: the same mask and options give a
byte-identical plan.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, Callable

import numpy as np

from maskc.errors import MaskError
from maskc.runtime.format import Plan
from maskc.sources import MaskSource, open_mask

Progress = Callable[[int, int], None]
TILE_SIZES = (32, 64, 128)


def parse_block(block: Any) -> tuple[int, int]:
    """Accept ``128``, ``(128, 64)`` or ``"128x64"`` and check both sides are supported tile sizes."""
    if isinstance(block, str):
        parts = block.lower().split("x")
        try:
            if len(parts) > 2:
                raise ValueError
            block = tuple(int(p) for p in parts) if len(parts) == 2 else int(parts[0])
        except ValueError:
            raise MaskError(f"block size {block!r} is not of the form 128x128") from None
    if isinstance(block, int):
        block = (block, block)
    if not (isinstance(block, (tuple, list)) and len(block) == 2 and all(isinstance(v, int) for v in block)):
        raise MaskError(f"block size {block!r} is not of the form 128x128")
    bm, bn = block
    if bm not in TILE_SIZES or bn not in TILE_SIZES:
        raise MaskError(f"block size {bm}x{bn} is not supported; each side must be one of {', '.join(map(str, TILE_SIZES))}")
    return bm, bn


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


def compile(
    mask: Any,
    block: Any = (128, 128),
    progress: Progress | None = None,
) -> Plan:
    """Compile a mask (path, array, sparse matrix or MaskSource) into an execution plan."""
    source = open_mask(mask)
    bm, bn = parse_block(block)
    B, H, nq, nk = source.shape
    tiles_m, tiles_n = -(-nq // bm), -(-nk // bn)
    col_extent = np.minimum(bn, nk - np.arange(tiles_n) * bn)
    hasher = _mask_hasher(source.shape)
    bitmaps = _Bitmaps()
    entries: list[np.ndarray] = []  # per row: [k, 4] = (row id, col, tile id, is_partial)
    row_full = np.zeros(B * H * tiles_m, dtype=np.int64)
    visible = 0
    total_rows = B * H * tiles_m
    for s in range(B * H):
        b, h = divmod(s, H)
        for m in range(tiles_m):
            start, stop = m * bm, min((m + 1) * bm, nq)
            block_rows = source.rows(b, h, start, stop)
            if block_rows.shape != (stop - start, nk):
                raise MaskError(f"{source.name}: rows {start}:{stop} came back with shape {list(block_rows.shape)}, expected {[stop - start, nk]}")
            hasher.update(np.packbits(block_rows, axis=-1, bitorder="little").tobytes())
            row = s * tiles_m + m
            padded = np.zeros((bm, tiles_n * bn), dtype=bool)
            padded[: stop - start, :nk] = block_rows
            tiles = padded.reshape(bm, tiles_n, bn)
            counts = tiles.sum(axis=(0, 2), dtype=np.int64)
            visible += int(counts.sum())
            full = np.flatnonzero(counts == (stop - start) * col_extent)
            partial = np.flatnonzero((counts > 0) & (counts < (stop - start) * col_extent))
            ids = [bitmaps.add(tiles[:, n, :]) for n in partial]
            row_entries = np.empty((full.size + partial.size, 4), dtype=np.int64)
            row_entries[:, 0] = row
            row_entries[:, 1] = np.concatenate([full, partial])
            row_entries[:, 2] = np.concatenate([np.full(full.size, -1), np.asarray(ids, dtype=np.int64)])
            row_entries[:, 3] = np.concatenate([np.zeros(full.size), np.ones(partial.size)])
            entries.append(row_entries)
            row_full[row] = full.size
            if progress is not None:
                progress(row + 1, total_rows)
    allrows = np.concatenate(entries) if entries else np.zeros((0, 4), dtype=np.int64)
    words = np.stack(bitmaps.words) if bitmaps.words else np.zeros((0, bm, bn // 32), dtype="<u4")
    arrays = _csr_arrays(allrows, row_full, B * H, tiles_m, tiles_n)
    arrays["bitmaps"] = words
    return Plan(
        q_len=nq,
        kv_len=nk,
        batch=B,
        heads=H,
        block_m=bm,
        block_n=bn,
        visible_pairs=visible,
        mask_sha256=hasher.hexdigest(),
        arrays=arrays,
        options={"block": [bm, bn]},
    )


def _mask_hasher(shape: tuple[int, int, int, int]):
    """SHA-256 over the canonical bits: the shape as four uint64, then each row's bits packed LSB-first."""
    hasher = hashlib.sha256(b"maskc-mask-v1")
    hasher.update(struct.pack("<4Q", *shape))
    return hasher


def mask_sha256(mask: Any) -> str:
    """The canonical hash of a mask's bits, as recorded in its plan, without compiling it."""
    source = open_mask(mask)
    hasher = _mask_hasher(source.shape)
    step = 1024
    for b in range(source.batch):
        for h in range(source.heads):
            for start in range(0, source.q_len, step):
                rows = source.rows(b, h, start, min(start + step, source.q_len))
                hasher.update(np.packbits(rows, axis=-1, bitorder="little").tobytes())
    return hasher.hexdigest()


def _csr_arrays(rows: np.ndarray, row_full: np.ndarray, slices: int, tiles_m: int, tiles_n: int) -> dict[str, np.ndarray]:
    """Row CSR in compile order (full tiles first) and its transpose, the column CSR, full first too."""
    row_id, col, tile, is_partial = rows.T
    row_counts = np.bincount(row_id, minlength=slices * tiles_m)
    s, m = np.divmod(row_id, tiles_m)
    col_id = s * tiles_n + col
    order = np.lexsort((m, is_partial, col_id))
    col_counts = np.bincount(col_id, minlength=slices * tiles_n)
    col_full = np.bincount(col_id[is_partial == 0], minlength=slices * tiles_n)
    i32 = lambda a: np.ascontiguousarray(a, dtype="<i4")  # noqa: E731
    return {
        "row_ptr": i32(np.concatenate([[0], np.cumsum(row_counts)])),
        "row_full": i32(row_full),
        "row_col": i32(col),
        "row_tile": i32(tile),
        "col_ptr": i32(np.concatenate([[0], np.cumsum(col_counts)])),
        "col_full": i32(col_full),
        "col_row": i32(m[order]),
        "col_tile": i32(tile[order]),
    }
