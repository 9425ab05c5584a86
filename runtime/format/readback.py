"""Reading a plan's mask back: its bitmaps' bits, its rows (one tile row at a time), its tile map.

These walk the plan's own lists, so a mask rebuilt here is exactly the one the kernels run; they
never build more than one tile row of the mask unless asked for the whole of it.
"""

from __future__ import annotations

import numpy as np

from maskc.runtime.format.intervals import LTE, LTS, UTE, UTS, masked_rows
from maskc.runtime.format.plan import DENSE_VARIANTS, DERIVED_LISTS, Plan


def bitmap_bits(plan: Plan, tiles: np.ndarray | None = None) -> np.ndarray:
    """Unpack the partial bitmaps (those of tile ids ``tiles``, else all) to booleans
    ``[P, block_m, block_n]``."""
    bitmaps = plan.arrays["bitmaps"]
    words = np.ascontiguousarray(bitmaps if tiles is None else bitmaps[tiles], dtype="<u4")
    bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
    return bits.reshape(words.shape[0], plan.block_m, plan.block_n).astype(bool)


def dense_intervals(variant: str, slices: int, q_len: int, kv_len: int) -> np.ndarray:
    """The canonical interval vectors ``[slices, 4, kv_len]`` of a dense variant's mask: nothing
    masked (``"dense"``), or key ``j`` masked for queries ``[0, j)`` (``"dense_causal"``). Every
    slice is the same, so they are one slice's vectors broadcast (read-only, no copies)."""
    one = np.empty((1, 4, kv_len), dtype="<i4")
    one[0, LTS] = q_len
    one[0, LTE] = q_len
    one[0, UTS] = 0
    one[0, UTE] = np.arange(kv_len) if variant == "dense_causal" else 0
    return np.broadcast_to(one, (slices, 4, kv_len))


def interval_vectors(plan: Plan) -> np.ndarray:
    """The interval vectors the lists of an interval or dense plan follow from: stored, or implied."""
    if plan.variant in DENSE_VARIANTS:
        return dense_intervals(plan.variant, plan.slices, plan.q_len, plan.kv_len)
    return plan.arrays["intervals"]


def piece_pairs(pieces: np.ndarray) -> np.ndarray:
    """The visible pairs of each dense piece (``[n, 5]`` rows ``q0, q1, k0, k1, causal``), int64."""
    rows = pieces[:, 1].astype(np.int64) - pieces[:, 0]
    keys = pieces[:, 3].astype(np.int64) - pieces[:, 2]
    return np.where(pieces[:, 4] == 1, rows * (rows + 1) // 2, rows * keys)


def tile_row(plan: Plan, s: int, m: int, bits: np.ndarray | None = None) -> np.ndarray:
    """Rows of query tile row ``m`` of slice ``s`` of the plan's own mask (the permuted one, for a
    reordered plan): bools ``[rows in the tile, kv_len]``.

    Built from the tiles the row list visits: full tiles are all True, partial tiles come from the
    bitmaps (``bits``, from :func:`bitmap_bits`, saves unpacking them per call) or the intervals.
    """
    start = m * plan.block_m
    return _plan_rows(plan, s, m, np.arange(min(plan.block_m, plan.q_len - start)), bits)


def _plan_rows(plan: Plan, s: int, m: int, offsets: np.ndarray, bits: np.ndarray | None) -> np.ndarray:
    """Rows ``m * block_m + offsets`` of slice ``s`` of the plan's own mask, from tile row ``m``'s list."""
    bm, bn = plan.block_m, plan.block_n
    row = s * plan.tiles_m + m
    lo, hi = int(plan.arrays["row_ptr"][row]), int(plan.arrays["row_ptr"][row + 1])
    n_full = int(plan.arrays["row_full"][row])
    out = np.zeros((offsets.size, plan.tiles_n * bn), dtype=bool)
    from_intervals = plan.variant in DERIVED_LISTS
    if from_intervals:
        partial_bits = np.zeros((offsets.size, plan.tiles_n * bn), dtype=bool)
        if hi - lo > n_full:
            rows = (m * bm + offsets.astype(np.int64))[:, None]
            partial_bits[:, : plan.kv_len] = ~masked_rows(interval_vectors(plan)[s], rows)
    elif hi - lo > n_full:
        bits = bitmap_bits(plan) if bits is None else bits
    for e in range(lo, hi):
        n, t = int(plan.arrays["row_col"][e]), int(plan.arrays["row_tile"][e])
        cols = slice(n * bn, (n + 1) * bn)
        if e - lo < n_full:
            out[:, cols] = True
        else:
            out[:, cols] = partial_bits[:, cols] if from_intervals else bits[t][offsets]
    return out[:, : plan.kv_len]


def mask_rows(plan: Plan, s: int, start: int, stop: int, bits: np.ndarray | None = None) -> np.ndarray:
    """Rows ``start:stop`` of slice ``s`` of the mask the plan stands for, in the original token
    order: bools ``[stop - start, kv_len]``. For a reordered plan each original row ``t`` is row
    ``inverse[t]`` of the plan's mask with its columns taken back through the inverse permutation;
    rows are rebuilt one by one from their tile rows' lists, never a whole tile row more than needed.
    """
    bm = plan.block_m
    if not plan.reordered:
        first, last = start // bm, -(-stop // bm)
        parts = [tile_row(plan, s, m, bits) for m in range(first, last)]
        block = np.concatenate(parts) if parts else np.zeros((0, plan.kv_len), dtype=bool)
        return block[start - first * bm : stop - first * bm]
    inverse = inverse_permutation(plan.arrays["perm"])
    wanted = inverse[start:stop].astype(np.int64)
    out = np.empty((stop - start, plan.kv_len), dtype=bool)
    tile_of = wanted // bm
    for m in np.unique(tile_of):
        pick = np.flatnonzero(tile_of == m)
        out[pick] = _plan_rows(plan, s, int(m), wanted[pick] - m * bm, bits)
    return out[:, inverse]


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
    """``inverse`` with ``inverse[perm[i]] = i`` (int32)."""
    inverse = np.empty(perm.shape[0], dtype="<i4")
    inverse[perm] = np.arange(perm.shape[0], dtype="<i4")
    return inverse


def tile_map(plan: Plan, s: int = 0) -> np.ndarray:
    """Tile classes of slice ``s`` as int8 ``[tiles_m, tiles_n]``: 0 empty, 1 full, 2 partial (of the
    plan's own, possibly permuted, mask: the tiles the kernels visit)."""
    out = np.zeros((plan.tiles_m, plan.tiles_n), dtype=np.int8)
    ptr = plan.arrays["row_ptr"].astype(np.int64)
    first = s * plan.tiles_m
    lo, hi = ptr[first], ptr[first + plan.tiles_m]
    counts = np.diff(ptr[first : first + plan.tiles_m + 1])
    m = np.repeat(np.arange(plan.tiles_m), counts)
    position = np.arange(lo, hi) - ptr[first + m]
    is_full = position < plan.arrays["row_full"][first + m]
    out[m, plan.arrays["row_col"][lo:hi]] = np.where(is_full, 1, 2)
    return out


def decode_mask(plan: Plan) -> np.ndarray:
    """Rebuild the dense mask ``[batch, heads, q_len, kv_len]`` from the plan's row lists, in the
    original token order (a reordered plan's permutation is undone)."""
    bits = bitmap_bits(plan)
    out = np.empty((plan.slices, plan.q_len, plan.kv_len), dtype=bool)
    for s in range(plan.slices):
        for m in range(plan.tiles_m):
            out[s, m * plan.block_m:(m + 1) * plan.block_m] = tile_row(plan, s, m, bits)
    if plan.reordered:
        inverse = inverse_permutation(plan.arrays["perm"])
        out = out[:, inverse][:, :, inverse]
    return out.reshape(plan.batch, plan.heads, plan.q_len, plan.kv_len)
