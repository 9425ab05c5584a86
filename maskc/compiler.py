"""The compiler: classify every tile of a mask, build the row and column lists, write a Plan.

Two plan variants. A block-sparse plan stores each distinct partial tile as a bitmap; the mask is
read one tile row (``block_m`` query rows) at a time, so memory stays bounded by one row block
whatever the mask's size. An interval plan stores, per key column, the masked query rows as two
intervals; it is built from a structured source's vectors in O(kv_len + tiles), or from rows read
the same way as for bitmaps while the form is detected. The result is deterministic: the same mask
and options give a byte-identical plan, from whichever source.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from maskc.errors import MaskError
from maskc.intervals import RunTracker, canonical, intervals_sha256
from maskc.runtime.format import Plan
from maskc.runtime.intervals import MAX_TILES_PER_SLICE, masked_pairs, tile_lists
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


class _BitmapPlan:
    """A block-sparse plan built one tile row at a time: the tiles' classes, lists and bitmaps."""

    def __init__(self, shape: tuple[int, int, int, int], bm: int, bn: int):
        self.shape, self.bm, self.bn = shape, bm, bn
        B, H, nq, nk = shape
        self.tiles_m, self.tiles_n = -(-nq // bm), -(-nk // bn)
        self.col_extent = np.minimum(bn, nk - np.arange(self.tiles_n) * bn)
        self.bitmaps = _Bitmaps()
        self.entries: list[np.ndarray] = []  # per row: [k, 4] = (row id, col, tile id, is_partial)
        self.row_full = np.zeros(B * H * self.tiles_m, dtype=np.int64)
        self.visible = 0

    def add(self, s: int, m: int, rows: np.ndarray) -> None:
        """Classify the tiles of query tile row ``m`` of slice ``s`` from its rows ``[<= bm, kv_len]``."""
        height, nk = rows.shape
        row = s * self.tiles_m + m
        padded = np.zeros((self.bm, self.tiles_n * self.bn), dtype=bool)
        padded[:height, :nk] = rows
        tiles = padded.reshape(self.bm, self.tiles_n, self.bn)
        counts = tiles.sum(axis=(0, 2), dtype=np.int64)
        self.visible += int(counts.sum())
        full = np.flatnonzero(counts == height * self.col_extent)
        partial = np.flatnonzero((counts > 0) & (counts < height * self.col_extent))
        ids = [self.bitmaps.add(tiles[:, n, :]) for n in partial]
        row_entries = np.empty((full.size + partial.size, 4), dtype=np.int64)
        row_entries[:, 0] = row
        row_entries[:, 1] = np.concatenate([full, partial])
        row_entries[:, 2] = np.concatenate([np.full(full.size, -1), np.asarray(ids, dtype=np.int64)])
        row_entries[:, 3] = np.concatenate([np.zeros(full.size), np.ones(partial.size)])
        self.entries.append(row_entries)
        self.row_full[row] = full.size

    def plan(self, bits_sha256: str) -> Plan:
        B, H, nq, nk = self.shape
        allrows = np.concatenate(self.entries) if self.entries else np.zeros((0, 4), dtype=np.int64)
        words = self.bitmaps.words
        arrays = _csr_arrays(allrows, self.row_full, B * H, self.tiles_m, self.tiles_n)
        arrays["bitmaps"] = np.stack(words) if words else np.zeros((0, self.bm, self.bn // 32), dtype="<u4")
        arrays["intervals"] = np.zeros((0, 4, nk), dtype="<i4")
        return Plan(
            q_len=nq,
            kv_len=nk,
            batch=B,
            heads=H,
            block_m=self.bm,
            block_n=self.bn,
            visible_pairs=self.visible,
            mask_sha256=bits_sha256,
            arrays=arrays,
            options={"block": [self.bm, self.bn]},
        )


VARIANTS = ("auto", "intervals", "block_sparse")
# auto's rule until a cost model measured on the GPU replaces it (see auto_variant)
AUTO_BITMAP_BYTES = 1 << 20
AUTO_PAIRS = 1 << 30


def check_variant(variant: Any) -> str:
    """``variant`` if it is one of :data:`VARIANTS`, else a MaskError."""
    if variant not in VARIANTS:
        raise MaskError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
    return variant


def auto_variant(lists: dict[str, np.ndarray], shape: tuple[int, int, int, int], block: tuple[int, int]) -> str:
    """The variant ``variant="auto"`` picks for a mask that fits the interval form.

    Intervals when the bitmap plan could store more than ``AUTO_BITMAP_BYTES`` of partial-tile bits
    (one bitmap per partial tile, before sharing identical ones), or when the mask has
    ``AUTO_PAIRS`` pairs or more (32768² and up: bitmaps would cost O(N²) to build from a
    structured source). Otherwise bitmaps, the kernel every backend has run longest. A placeholder
    rule, to be replaced by measured kernel costs; it depends only on the mask, so equal masks get
    the same variant from any source.
    """
    partial = int(lists["row_ptr"][-1]) - int(lists["row_full"].sum(dtype=np.int64))
    bitmap_bytes = partial * block[0] * block[1] // 8
    pairs = int(np.prod(shape, dtype=np.int64))
    return "intervals" if bitmap_bytes > AUTO_BITMAP_BYTES or pairs >= AUTO_PAIRS else "block_sparse"


def compile(
    mask: Any,
    block: Any = (128, 128),
    progress: Progress | None = None,
    variant: str = "auto",
) -> Plan:
    """Compile a mask (path, spec, array, sparse matrix or MaskSource) into an execution plan.

    ``variant`` is ``"block_sparse"`` (partial tiles as bitmaps), ``"intervals"`` (partial tiles
    rebuilt from per-column row intervals; a MaskError if the mask does not fit that form) or
    ``"auto"``: intervals where the mask fits and :func:`auto_variant` prefers them, else bitmaps.
    A source that gives its intervals from its structure is compiled to intervals without reading
    a single row; any other source is read once, one tile row at a time.
    """
    source = open_mask(mask)
    bm, bn = parse_block(block)
    variant = check_variant(variant)
    if variant == "block_sparse":
        return _read_rows(source, bm, progress, _BitmapPlan(source.shape, bm, bn), track=False).plan
    tiles = -(-source.q_len // bm) * -(-source.kv_len // bn)
    if variant == "intervals" and tiles > MAX_TILES_PER_SLICE:
        raise MaskError(f"{source.name}: {tiles} tiles per slice is more than an interval plan may have ({MAX_TILES_PER_SLICE}); use larger tiles")
    bitmap_plan = None
    vectors = structured_intervals(source)
    if vectors is None:  # one pass: detect the form, and for auto build the bitmaps it may fall back to
        scan = _read_rows(source, bm, progress, _BitmapPlan(source.shape, bm, bn) if variant == "auto" else None, track=True)
        if scan.intervals is None and variant == "intervals":
            raise MaskError(f"{source.name} does not fit the interval form: {scan.failure}; compile it with variant 'block_sparse' or 'auto'")
        vectors, bitmap_plan = scan.intervals, scan.plan
    elif progress is not None:
        progress(1, 1)
    if vectors is not None and tiles <= MAX_TILES_PER_SLICE:
        lists = tile_lists(vectors, source.q_len, bm, bn)
        if variant == "intervals" or auto_variant(lists, source.shape, (bm, bn)) == "intervals":
            return _interval_plan(source.shape, vectors, lists, bm, bn)
    return bitmap_plan or _read_rows(source, bm, progress, _BitmapPlan(source.shape, bm, bn), track=False).plan


def structured_intervals(source: MaskSource) -> np.ndarray | None:
    """The source's canonical interval vectors from its structure (never its rows), or None."""
    vectors = source.intervals()
    if vectors is None:
        return None
    vectors = np.asarray(vectors)
    expected = (source.batch * source.heads, 4, source.kv_len)
    if vectors.shape != expected:
        raise MaskError(f"{source.name}: intervals() gave shape {list(vectors.shape)}, expected {list(expected)}")
    ok = (vectors[:, 0::2] >= 0) & (vectors[:, 0::2] <= vectors[:, 1::2]) & (vectors[:, 1::2] <= source.q_len)
    if not ok.all():
        raise MaskError(f"{source.name}: intervals() gave a start or end outside 0 <= start <= end <= q_len={source.q_len}")
    return canonical(vectors, source.q_len)


def _interval_plan(shape: tuple[int, int, int, int], vectors: np.ndarray, lists: dict[str, np.ndarray], bm: int, bn: int) -> Plan:
    B, H, nq, nk = shape
    arrays = dict(lists)
    arrays["bitmaps"] = np.zeros((0, bm, bn // 32), dtype="<u4")
    arrays["intervals"] = np.ascontiguousarray(vectors, dtype="<i4")
    return Plan(
        q_len=nq,
        kv_len=nk,
        batch=B,
        heads=H,
        block_m=bm,
        block_n=bn,
        visible_pairs=B * H * nq * nk - masked_pairs(vectors),
        mask_sha256=intervals_sha256(shape, vectors),
        arrays=arrays,
        variant="intervals",
        hash_of="intervals",
        options={"block": [bm, bn]},
    )


@dataclass
class _Scan:
    """What one pass over a source's rows found."""

    bits_sha256: str | None = None  # None when the pass stopped early
    plan: Plan | None = None  # the block-sparse plan, when a builder was given
    intervals: np.ndarray | None = None  # the canonical vectors, when tracked and the mask fits
    failure: str | None = None  # why the mask does not fit, when tracked


def _read_rows(source: MaskSource, step: int, progress: Progress | None, builder: _BitmapPlan | None, track: bool) -> _Scan:
    """Read the mask once, ``step`` query rows at a time (``builder.bm`` when building bitmaps):
    hash its bits, feed each tile row to ``builder``, and with ``track`` detect its interval form.
    Without a builder, the pass stops as soon as the mask is known not to fit."""
    B, H, nq, nk = source.shape
    steps_per_slice = -(-nq // step)
    hasher = _mask_hasher(source.shape)
    found: list[np.ndarray] = []
    failure = None
    for s in range(B * H):
        b, h = divmod(s, H)
        tracker = RunTracker(nq, nk) if track and failure is None else None
        for i, start in enumerate(range(0, nq, step)):
            stop = min(start + step, nq)
            rows = source.rows(b, h, start, stop)
            if rows.shape != (stop - start, nk):
                raise MaskError(f"{source.name}: rows {start}:{stop} came back with shape {list(rows.shape)}, expected {[stop - start, nk]}")
            hasher.update(np.packbits(rows, axis=-1, bitorder="little").tobytes())
            if tracker is not None and not tracker.update(rows):
                failure, tracker = f"slice {s}: {tracker.failure}", None
                if builder is None:
                    return _Scan(failure=failure)
            if builder is not None:
                builder.add(s, i, rows)
            if progress is not None:
                progress(s * steps_per_slice + i + 1, B * H * steps_per_slice)
        if tracker is not None:
            vectors = tracker.finish()
            if vectors is None:
                failure = f"slice {s}: {tracker.failure}"
                if builder is None:
                    return _Scan(failure=failure)
            found.append(vectors)
    scan = _Scan(bits_sha256=hasher.hexdigest(), failure=failure)
    if builder is not None:
        scan.plan = builder.plan(scan.bits_sha256)
    if track and failure is None:
        scan.intervals = np.stack(found)
    return scan


def _mask_hasher(shape: tuple[int, int, int, int]):
    """SHA-256 over the canonical bits: the shape as four uint64, then each row's bits packed LSB-first."""
    hasher = hashlib.sha256(b"maskc-mask-v1")
    hasher.update(struct.pack("<4Q", *shape))
    return hasher


def mask_sha256(mask: Any) -> str:
    """The canonical hash of a mask's bits, as recorded in a block-sparse plan, without compiling it."""
    return _read_rows(open_mask(mask), 1024, None, None, track=False).bits_sha256


def detect_intervals(source: MaskSource, block_rows: int = 1024) -> tuple[np.ndarray | None, str | None]:
    """Read a source once to find its canonical interval vectors: ``(vectors, None)`` when it fits
    the interval form, ``(None, why not)`` otherwise."""
    scan = _read_rows(source, block_rows, None, None, track=True)
    return scan.intervals, scan.failure


def fingerprint(mask: Any, variant: str = "auto") -> tuple[str, str]:
    """``(hash, hash_of)`` naming ``mask`` for the plan cache, without compiling it.

    Unless ``variant`` is ``"block_sparse"``, a mask that fits the interval form is named by its
    interval hash (``hash_of="intervals"``), so the same mask from a spec and from a dense file
    share one cache entry; otherwise by its bit hash. A structured source costs O(kv_len); any
    other is read once.
    """
    source = open_mask(mask)
    variant = check_variant(variant)
    if variant != "block_sparse":
        vectors = structured_intervals(source)
        if vectors is not None:
            return intervals_sha256(source.shape, vectors), "intervals"
        scan = _read_rows(source, 1024, None, None, track=True)
        if scan.intervals is not None:
            return intervals_sha256(source.shape, scan.intervals), "intervals"
        if scan.bits_sha256 is not None:
            return scan.bits_sha256, "bits"
    return mask_sha256(source), "bits"


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
