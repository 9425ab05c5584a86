"""The build: the plan of a chosen candidate, made from the analysis in one construction.

A dense plan stores nothing but its shape (its lists are those of the all-true or causal mask, which
readers derive). An interval plan stores the analysis' vectors. A block-sparse plan takes the tiles
the analysis built during its read when there are some at this tile size; for a structured source
of ``AUTO_PAIRS`` pairs and more it rebuilds its bitmaps from the interval vectors, in time
proportional to the partial tiles; otherwise it reads the rows (the compile's second read). A
reordered plan reads the permuted mask. The plan's hash names the mask's bits when the tiles came
from its rows, its interval vectors otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from maskc.analysis import Analysis, derivable_error, lists_derivable
from maskc.bitmaps import BitmapBuilder, bitmap_arrays
from maskc.choice import AUTO_PAIRS, Choice
from maskc.runtime.format import DENSE_VARIANTS, Plan, dense_intervals, list_traits, tile_lists
from maskc.scan import Progress, read_rows


@dataclass(frozen=True)
class _Tiles:
    """A plan's arrays before its pieces and launch orders, and the hash that names its mask."""

    arrays: dict[str, np.ndarray]
    mask_sha256: str
    hash_of: str
    options: dict[str, Any]


def build(analysis: Analysis, choice: Choice, progress: Progress | None = None) -> Plan:
    """The plan of ``choice.candidate`` for the analysed mask; ``progress`` reports a read of rows,
    when the build needs one."""
    candidate, source = choice.candidate, analysis.source
    tiles = _tiles(analysis, choice, progress)
    arrays = dict(tiles.arrays)
    if candidate.pieces:
        arrays["pieces"] = analysis.pieces
    bm, bn = candidate.block
    if analysis.options.schedule == "lpt" and candidate.variant not in DENSE_VARIANTS:
        arrays.update(launch_orders(arrays, source.batch * source.heads, -(-source.q_len // bm), -(-source.kv_len // bn)))
    B, H, nq, nk = source.shape
    return Plan(nq, nk, B, H, bm, bn, analysis.pairs, tiles.mask_sha256, arrays, variant=candidate.variant, hash_of=tiles.hash_of,
                options=tiles.options, predictions=choice.predictions)


def _tiles(analysis: Analysis, choice: Choice, progress: Progress | None) -> _Tiles:
    candidate, source = choice.candidate, analysis.source
    block, variant = candidate.block, candidate.variant
    bm, bn = block
    options: dict[str, Any] = {"block": [bm, bn]}
    empty_bitmaps = np.zeros((0, bm, bn // 32), dtype="<u4")
    if variant in DENSE_VARIANTS:
        if not lists_derivable(source, block):
            raise derivable_error(source, block, variant)
        vectors = dense_intervals(variant, source.batch * source.heads, source.q_len, source.kv_len)
        arrays = {**tile_lists(vectors, source.q_len, bm, bn), "bitmaps": empty_bitmaps, "intervals": np.zeros((0, 4, source.kv_len), dtype="<i4")}
        return _Tiles(arrays, analysis.intervals_sha256(), "intervals", options)
    if variant == "intervals":
        arrays = {**analysis.lists(block), "bitmaps": empty_bitmaps, "intervals": np.ascontiguousarray(analysis.vectors, dtype="<i4")}
        return _Tiles(arrays, analysis.intervals_sha256(), "intervals", options)
    if candidate.reordered:
        arrays = analysis.reordering.arrays(block, progress)
        return _Tiles(arrays, analysis.bits_sha256, "bits", {**options, "reorder": analysis.reordering.record(analysis.classes[block], arrays)})
    if analysis.bitmaps is not None and analysis.bitmaps[0] == block:
        return _Tiles(analysis.bitmaps[1], analysis.bits_sha256, "bits", options)
    if analysis.bits_sha256 is None and int(np.prod(source.shape, dtype=np.int64)) >= AUTO_PAIRS:
        lists = analysis.lists(block)
        return _Tiles({**lists, **bitmap_arrays(lists, analysis.vectors, source.q_len, bm, bn)}, analysis.intervals_sha256(), "intervals", options)
    builder = BitmapBuilder(source.shape, bm, bn)
    scan = read_rows(source, bm, progress, [builder], track=False)
    return _Tiles(builder.arrays(), scan.bits_sha256, "bits", options)


def launch_orders(arrays: dict[str, np.ndarray], slices: int, tiles_m: int, tiles_n: int) -> dict[str, np.ndarray]:
    """``row_order`` and ``col_order`` of a tile plan's lists by longest processing time first: per
    slice, the tile rows (columns) by descending visited tiles, then descending partial tiles, then
    ascending index.

    Only for lists that are unbalanced or share most of their tiles
    (:func:`maskc.runtime.format.list_traits`): there the heaviest lists must start first, and the
    rows read the same keys in any order. Other lists keep their natural order, whose neighbouring
    rows read neighbouring keys: on an H100, packed documents at N = 131072 ran 1.45 ms forward in
    natural order against 2.00 ms heaviest-first (benchmarks/NOTES.md). An order that is ascending in
    every slice is left out (shape ``[0]``)."""
    empty = np.zeros(0, dtype="<i4")
    out = {}
    for name, prefix, n, other in (("row_order", "row", tiles_m, tiles_n), ("col_order", "col", tiles_n, tiles_m)):
        if not any(list_traits(arrays[f"{prefix}_ptr"], other)):
            out[name] = empty
            continue
        visited = np.diff(arrays[f"{prefix}_ptr"].astype(np.int64)).reshape(slices, n)
        partial = visited - arrays[f"{prefix}_full"].astype(np.int64).reshape(slices, n)
        index = np.broadcast_to(np.arange(n), visited.shape)
        order = np.lexsort((index, -partial, -visited), axis=-1)
        out[name] = empty if np.array_equal(order, index) else np.ascontiguousarray(order.ravel(), dtype="<i4")
    return out
