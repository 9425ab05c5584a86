"""Validation: every dimension and index of a plan is checked before anything reaches a kernel.

A plan that passes :func:`validate` cannot make a kernel read or write out of bounds, and the work
validating it costs is bounded by the size of what it stores, or — for the lists an interval or
dense plan leaves to its reader — by :data:`MAX_DERIVED_TILES`, checked before anything is derived.
The first fault found raises :class:`PlanError` with a one-line reason.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from maskc.runtime.format.intervals import LTE, LTS, MAX_DERIVED_TILES, UTE, UTS, masked_pairs, tile_lists
from maskc.runtime.format.plan import (
    ARRAY_SPECS, DENSE_VARIANTS, DERIVED_LISTS, FULL_TILE, HASH_OF, LIST_ARRAYS, MAX_DIM, MAX_PIECES, PIECE_FIELDS, VARIANTS, Plan,
    PlanError,
)
from maskc.runtime.format.policy import TILE_SIZES
from maskc.runtime.format.readback import bitmap_bits, interval_vectors, piece_pairs

MAX_META_DEPTH = 8  # meta.predictions and options are plain nested data, at most this deep


def validate(plan: Plan) -> None:
    """Check every dimension and index of a plan; raise PlanError naming the first fault."""
    check_header(plan)
    _check_orders(plan)
    _check_pieces(plan)
    check_plain(dict(plan.options), "options", MAX_META_DEPTH)
    if plan.predictions is not None:
        check_plain(dict(plan.predictions), "predictions", MAX_META_DEPTH)
    if plan.variant in DERIVED_LISTS:
        expected = _interval_lists(plan)
        for name in LIST_ARRAYS:
            if not np.array_equal(plan.arrays[name], expected[name]):
                raise PlanError(f"plan {name} is not what its intervals make: the lists must be exactly the tiles the intervals leave non-empty, full ones first")
        _check_interval_pairs(plan)
        _check_pieces_in_intervals(plan)
        return
    n_partial = plan.arrays["bitmaps"].shape[0]
    rows = _check_lists(plan, "row", plan.tiles_m, plan.tiles_n, n_partial)
    cols = _check_lists(plan, "col", plan.tiles_n, plan.tiles_m, n_partial)
    # The column lists must be exactly the transpose of the row lists.
    (r_s, r_m, r_n, r_t), (c_s, c_n, c_m, c_t) = rows, cols
    key_r = (r_s * plan.tiles_m + r_m) * plan.tiles_n + r_n
    key_c = (c_s * plan.tiles_m + c_m) * plan.tiles_n + c_n
    order_r, order_c = np.argsort(key_r, kind="stable"), np.argsort(key_c, kind="stable")
    if not (np.array_equal(key_r[order_r], key_c[order_c]) and np.array_equal(r_t[order_r], c_t[order_c])):
        raise PlanError("plan column lists are not the transpose of the row lists")
    if key_r.size and np.any(np.diff(key_r[order_r]) == 0):
        raise PlanError("plan row lists visit a tile twice")
    pairs = _count_visible(plan, r_m, r_n, r_t)
    if pairs != plan.visible_pairs:
        raise PlanError(f"plan visible_pairs={plan.visible_pairs} but its tiles hold {pairs}")
    _check_pieces_in_tiles(plan, key_r[order_r], r_t[order_r])


def with_derived_lists(plan: Plan) -> Plan:
    """An interval or dense plan read from a file (which leaves all eight lists out) with its lists
    derived from its interval vectors, everything else checked; the work is bounded first."""
    check_header(plan)
    _check_orders(plan)
    stored = [name for name in LIST_ARRAYS if plan.arrays[name].size]
    if stored:
        raise PlanError(f"plan stores {stored[0]} but not row_ptr: an {plan.variant} plan stores all eight lists or none")
    plan = replace(plan, arrays={**plan.arrays, **_interval_lists(plan)})
    _check_pieces(plan)
    check_plain(dict(plan.options), "options", MAX_META_DEPTH)
    if plan.predictions is not None:
        check_plain(dict(plan.predictions), "predictions", MAX_META_DEPTH)
    _check_interval_pairs(plan)
    _check_pieces_in_intervals(plan)
    return plan


def check_plain(value, where: str, depth: int) -> None:
    """Refuse anything in ``value`` but nested maps with string keys, lists, strings, numbers,
    booleans and nil, at most ``depth`` levels deep (so a plan's metadata always re-encodes)."""
    if isinstance(value, dict):
        if depth <= 0:
            raise PlanError(f"plan field {where} is nested too deeply")
        for k, v in value.items():
            if not isinstance(k, str):
                raise PlanError(f"plan field {where} has a key that is not a string")
            check_plain(v, f"{where}.{k}", depth - 1)
    elif isinstance(value, (list, tuple)):
        if depth <= 0:
            raise PlanError(f"plan field {where} is nested too deeply")
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]", depth - 1)
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise PlanError(f"plan field {where} holds a {type(value).__name__}; only plain data is allowed")


def check_header(plan: Plan) -> None:
    """Dimensions, tile sizes, variant, hash, the shapes of the bitmap and interval arrays, and the
    bound on derived work — all before anything proportional to the plan's dimensions is made."""
    for k in ("q_len", "kv_len", "batch", "heads"):
        v = getattr(plan, k)
        if not 1 <= v <= MAX_DIM:
            raise PlanError(f"plan {k}={v} is out of range [1, {MAX_DIM}]")
    for k in ("block_m", "block_n"):
        if getattr(plan, k) not in TILE_SIZES:
            raise PlanError(f"plan {k}={getattr(plan, k)} is not one of {TILE_SIZES}")
    if plan.variant not in VARIANTS:
        raise PlanError(f"plan variant {plan.variant!r} is not one of {VARIANTS}")
    if plan.hash_of not in HASH_OF:
        raise PlanError(f"plan hash_of {plan.hash_of!r} is not one of {HASH_OF}")
    if not isinstance(plan.mask_sha256, str) or len(plan.mask_sha256) != 64 or any(c not in "0123456789abcdef" for c in plan.mask_sha256):
        raise PlanError("plan mask_sha256 is not a 64-digit lowercase hex string")
    if not 0 <= plan.visible_pairs <= plan.slices * plan.q_len * plan.kv_len:
        raise PlanError(f"plan visible_pairs={plan.visible_pairs} is outside [0, {plan.slices * plan.q_len * plan.kv_len}]")
    if set(plan.arrays) != set(ARRAY_SPECS):
        raise PlanError(f"plan arrays {sorted(plan.arrays)} do not match {sorted(ARRAY_SPECS)}")
    bitmap_free = plan.variant != "block_sparse"
    bm = plan.arrays["bitmaps"]
    if bm.shape[1:] != (plan.block_m, plan.words_per_row) or (bitmap_free and bm.shape[0] != 0):
        expected = f"[{'0' if bitmap_free else 'P'}, {plan.block_m}, {plan.words_per_row}]"
        raise PlanError(f"plan bitmaps shape {list(bm.shape)} is not {expected} for a {plan.variant} plan of {plan.block_m}x{plan.block_n} tiles")
    intervals = plan.variant == "intervals"
    iv = plan.arrays["intervals"]
    slices = plan.slices if intervals else 0
    if iv.shape != (slices, 4, plan.kv_len):
        raise PlanError(f"plan intervals shape {list(iv.shape)} is not [{slices}, 4, {plan.kv_len}] for a {plan.variant} plan")
    if plan.variant == "dense_causal" and plan.q_len != plan.kv_len:
        raise PlanError(f"a dense_causal plan must be square; q_len={plan.q_len}, kv_len={plan.kv_len}")
    tiles = plan.slices * plan.tiles_m * plan.tiles_n
    if plan.variant in DERIVED_LISTS and tiles > MAX_DERIVED_TILES:
        raise PlanError(f"plan has {plan.slices} slices of {plan.tiles_m}x{plan.tiles_n} tiles; an {plan.variant} plan may have at most "
                        f"{MAX_DERIVED_TILES} tiles in all (its lists are derived on load)")
    if intervals:
        ends_ok = (iv[:, 0::2] >= 0) & (iv[:, 0::2] <= iv[:, 1::2]) & (iv[:, 1::2] <= plan.q_len)
        if not ends_ok.all():
            s, pair, j = map(int, np.argwhere(~ends_ok)[0])
            name = ("LTS/LTE", "UTS/UTE")[pair]
            raise PlanError(f"plan intervals {name} of slice {s}, key {j} are {iv[s, 2 * pair, j]}/{iv[s, 2 * pair + 1, j]}; they must satisfy 0 <= start <= end <= q_len={plan.q_len}")


def _interval_lists(plan: Plan) -> dict[str, np.ndarray]:
    """The row and column lists an interval or dense plan's (checked) vectors make. A dense plan's
    slices are all the same mask: one slice's lists, repeated (work proportional to its tiles)."""
    if plan.variant not in DENSE_VARIANTS:
        return tile_lists(interval_vectors(plan), plan.q_len, plan.block_m, plan.block_n)
    one = tile_lists(interval_vectors(plan)[:1], plan.q_len, plan.block_m, plan.block_n)
    out = {}
    for prefix, lists in (("row", plan.tiles_m), ("col", plan.tiles_n)):
        ptr = one[f"{prefix}_ptr"].astype(np.int64)
        starts = np.arange(plan.slices, dtype=np.int64)[:, None] * ptr[-1] + ptr[None, :-1]
        out[f"{prefix}_ptr"] = np.append(starts.ravel(), plan.slices * ptr[-1])
        for name in (f"{prefix}_full", f"{prefix}_{'col' if prefix == 'row' else 'row'}", f"{prefix}_tile"):
            out[name] = np.tile(one[name], plan.slices)
    return {name: np.ascontiguousarray(a, dtype="<i4") for name, a in out.items()}


def _check_interval_pairs(plan: Plan) -> None:
    vectors = interval_vectors(plan)
    masked = masked_pairs(vectors) if plan.variant not in DENSE_VARIANTS else plan.slices * masked_pairs(vectors[:1])
    pairs = plan.slices * plan.q_len * plan.kv_len - masked
    if pairs != plan.visible_pairs:
        raise PlanError(f"plan visible_pairs={plan.visible_pairs} but its intervals leave {pairs}")


def _check_permutation(values: np.ndarray, n: int, groups: int, name: str) -> None:
    """``values`` is ``groups`` consecutive permutations of ``[0, n)``."""
    if values.shape != (groups * n,):
        raise PlanError(f"plan {name} has {values.shape[0]} entries, expected 0 or {groups * n}")
    v = values.astype(np.int64)
    if np.any(v < 0) or np.any(v >= n):
        raise PlanError(f"plan {name} holds an index outside [0, {n})")
    seen = np.bincount(v + np.repeat(np.arange(groups, dtype=np.int64) * n, n), minlength=groups * n)
    if np.any(seen != 1):
        raise PlanError(f"plan {name} is not a permutation: an index appears {'twice' if seen.max() > 1 else 'never'}")


def _check_orders(plan: Plan) -> None:
    """``perm`` is absent or a permutation of the tokens (self-attention only); ``row_order`` and
    ``col_order`` are absent or, slice by slice, permutations of the tile rows and columns."""
    perm = plan.arrays["perm"]
    if perm.size:
        if plan.variant in DENSE_VARIANTS:
            raise PlanError(f"a {plan.variant} plan cannot be reordered: it stores no permutation")
        if plan.q_len != plan.kv_len:
            raise PlanError(f"plan has a permutation but q_len={plan.q_len} differs from kv_len={plan.kv_len}; only self-attention masks are reordered")
        _check_permutation(perm, plan.q_len, 1, "perm")
    for name, per_slice in (("row_order", plan.tiles_m), ("col_order", plan.tiles_n)):
        order = plan.arrays[name]
        if order.size and plan.variant in DENSE_VARIANTS:
            raise PlanError(f"a {plan.variant} plan runs no tile kernel: it stores no {name}")
        if order.size:
            _check_permutation(order, per_slice, plan.slices, name)


def _check_lists(plan: Plan, prefix: str, n_lists: int, n_other: int, n_partial: int):
    """Validate one CSR (rows or columns); return each entry's (slice, list index, other index, tile id)."""
    ptr_raw, full_raw = plan.arrays[f"{prefix}_ptr"], plan.arrays[f"{prefix}_full"]
    n = plan.slices * n_lists
    if ptr_raw.shape != (n + 1,) or full_raw.shape != (n,):  # checked before any copy proportional to n
        raise PlanError(f"plan {prefix}_ptr/{prefix}_full have {ptr_raw.shape[0]}/{full_raw.shape[0]} entries, expected {n + 1}/{n}")
    ptr, full = ptr_raw.astype(np.int64), full_raw.astype(np.int64)
    other = plan.arrays[f"{prefix}_{'col' if prefix == 'row' else 'row'}"].astype(np.int64)
    tile = plan.arrays[f"{prefix}_tile"].astype(np.int64)
    if ptr[0] != 0 or np.any(np.diff(ptr) < 0) or ptr[-1] != other.shape[0] or other.shape != tile.shape:
        raise PlanError(f"plan {prefix}_ptr is not a monotone offset array over {other.shape[0]} entries")
    counts = np.diff(ptr)
    if np.any(full < 0) or np.any(full > counts):
        raise PlanError(f"plan {prefix}_full exceeds its list length")
    if np.any(other < 0) or np.any(other >= n_other):
        raise PlanError(f"plan {prefix} lists hold a tile index outside [0, {n_other})")
    owner = np.repeat(np.arange(n, dtype=np.int64), counts)
    position = np.arange(other.shape[0], dtype=np.int64) - ptr[owner]
    is_full = position < full[owner]
    if np.any(tile[is_full] != FULL_TILE) or np.any(tile[~is_full] < 0) or np.any(tile[~is_full] >= n_partial):
        raise PlanError(f"plan {prefix}_tile ids do not match full/partial entries or exceed {n_partial} bitmaps")
    # Full entries ascend within their list: the kernels address a run of consecutive full tiles
    # from its first tile alone.
    follows = is_full[1:] & is_full[:-1] & (owner[1:] == owner[:-1])
    if np.any(other[1:][follows] <= other[:-1][follows]):
        raise PlanError(f"plan {prefix} lists must give their full tiles in ascending order")
    return owner // n_lists, owner % n_lists, other, tile


BITS_CHUNK = 4096  # bitmaps unpacked at a time: memory stays bounded whatever the plan's size


def _count_visible(plan: Plan, m: np.ndarray, n: np.ndarray, tile: np.ndarray) -> int:
    """The visible pairs the listed tiles hold: full tiles' areas plus partial tiles' set bits,
    clipped to the mask (bits past ``q_len``/``kv_len`` in an edge tile do not count)."""
    rows = np.minimum(plan.block_m, plan.q_len - m * plan.block_m)
    cols = np.minimum(plan.block_n, plan.kv_len - n * plan.block_n)
    full = tile < 0
    total = int(np.sum(rows[full] * cols[full]))
    partial = np.flatnonzero(~full)
    for start in range(0, partial.size, BITS_CHUNK):
        pick = partial[start:start + BITS_CHUNK]
        bits = bitmap_bits(plan, tile[pick])
        inside = (np.arange(plan.block_m)[None, :, None] < rows[pick, None, None]) & (np.arange(plan.block_n)[None, None, :] < cols[pick, None, None])
        total += int(np.count_nonzero(bits & inside))
    return total


def _check_pieces(plan: Plan) -> None:
    """``pieces`` is absent or at most :data:`MAX_PIECES` in-bounds, causal-square, pairwise disjoint
    rectangles of a one-slice tile plan in token order that hold exactly its visible pairs (that
    each of their pairs is visible, which makes them the mask, is checked with the lists)."""
    pieces = plan.arrays["pieces"]
    if pieces.shape[1:] != (len(PIECE_FIELDS),):
        raise PlanError(f"plan pieces has shape {list(pieces.shape)}, expected [n, {len(PIECE_FIELDS)}]")
    if pieces.shape[0] == 0:
        return
    if plan.variant not in ("block_sparse", "intervals") or plan.slices != 1 or plan.reordered:
        raise PlanError(f"only a one-slice block_sparse or intervals plan in token order may carry pieces; this is a {plan.variant} plan of {plan.slices} slices{', reordered' if plan.reordered else ''}")
    if pieces.shape[0] > MAX_PIECES:
        raise PlanError(f"plan has {pieces.shape[0]} pieces; at most {MAX_PIECES} are allowed")
    q0, q1, k0, k1, causal = (pieces[:, i].astype(np.int64) for i in range(len(PIECE_FIELDS)))
    if np.any(q0 < 0) or np.any(q1 > plan.q_len) or np.any(q0 >= q1) or np.any(k0 < 0) or np.any(k1 > plan.kv_len) or np.any(k0 >= k1):
        raise PlanError(f"plan pieces must satisfy 0 <= q0 < q1 <= q_len={plan.q_len} and 0 <= k0 < k1 <= kv_len={plan.kv_len}")
    if np.any((causal != 0) & (causal != 1)) or np.any((causal == 1) & (q1 - q0 != k1 - k0)):
        raise PlanError("plan pieces' causal flag must be 0 or 1, and a causal piece must be square")
    apart = (q1[:, None] <= q0[None, :]) | (q1[None, :] <= q0[:, None]) | (k1[:, None] <= k0[None, :]) | (k1[None, :] <= k0[:, None])
    if not np.all(apart | np.eye(len(q0), dtype=bool)):
        raise PlanError("plan pieces overlap: their rectangles must be disjoint")
    pairs = int(piece_pairs(pieces).sum())
    if pairs != plan.visible_pairs:
        raise PlanError(f"plan pieces hold {pairs} pairs but the plan's mask has visible_pairs={plan.visible_pairs}")


# Disjoint pieces that hold visible_pairs pairs, all of them visible, are exactly the mask: the two
# checks below look only for a piece pair the plan masks, in O(kv_len) for interval plans and in
# the tiles the pieces touch for bitmap plans.


def _piece_rows(q0: int, q1: int, k0: int, causal: int, cols: np.ndarray) -> np.ndarray:
    """The first query row of each of ``cols`` that a piece covers (its rows run to ``q1``)."""
    return q0 + (cols - k0) if causal else np.full(cols.shape, q0, dtype=np.int64)


def _not_the_mask(i: int, q0: int, q1: int, k0: int, k1: int) -> PlanError:
    return PlanError(f"plan piece {i} (rows {q0}:{q1}, keys {k0}:{k1}) covers pairs the plan's mask leaves out: "
                     "its pieces must be exactly its mask")


def _check_pieces_in_intervals(plan: Plan) -> None:
    """Every pair of every piece is visible in the (one-slice) interval vectors."""
    iv = interval_vectors(plan)
    for i, (q0, q1, k0, k1, causal) in enumerate(plan.arrays["pieces"].astype(np.int64).tolist()):
        cols = np.arange(k0, k1, dtype=np.int64)
        first = _piece_rows(q0, q1, k0, causal, cols)
        for lo, hi in ((LTS, LTE), (UTS, UTE)):
            if np.any(np.maximum(first, iv[0, lo, k0:k1]) < np.minimum(q1, iv[0, hi, k0:k1])):
                raise _not_the_mask(i, q0, q1, k0, k1)


def _check_pieces_in_tiles(plan: Plan, keys: np.ndarray, tiles: np.ndarray) -> None:
    """Every pair of every piece lies in a listed tile, and in a partial tile on a set bit.
    ``keys`` (sorted) and ``tiles`` are the plan's entries as ``m * tiles_n + n`` and tile ids."""
    bm, bn = plan.block_m, plan.block_n
    for i, (q0, q1, k0, k1, causal) in enumerate(plan.arrays["pieces"].astype(np.int64).tolist()):
        m = np.arange(q0 // bm, (q1 - 1) // bm + 1, dtype=np.int64)
        n = np.arange(k0 // bn, (k1 - 1) // bn + 1, dtype=np.int64)
        # A causal piece reaches tile (m, n) when the tile's last row of the piece sees its first key:
        # a prefix of the key tiles in every tile row. Every reached tile must be listed, so the
        # count is checked against the entries before the tiles are enumerated.
        last_row = np.minimum((m + 1) * bm, q1) - 1
        first_col = np.maximum(n * bn, k0)
        reach = np.searchsorted(first_col - k0, last_row - q0, side="right") if causal else np.full(m.size, n.size)
        if int(reach.sum()) > keys.size:
            raise _not_the_mask(i, q0, q1, k0, k1)
        tm = np.repeat(np.arange(m.size), reach)
        tn = np.arange(tm.size) - np.repeat(np.cumsum(reach) - reach, reach)
        wanted = m[tm] * plan.tiles_n + n[tn]
        at = np.minimum(np.searchsorted(keys, wanted), max(keys.size - 1, 0))
        if keys.size == 0 or np.any(keys[at] != wanted):
            raise _not_the_mask(i, q0, q1, k0, k1)
        partial = np.flatnonzero(tiles[at] >= 0)
        for start in range(0, partial.size, BITS_CHUNK):  # bounded memory: a chunk of tiles' bits at a time
            pick = partial[start:start + BITS_CHUNK]
            bits = bitmap_bits(plan, tiles[at[pick]])
            rows = (m[tm[pick]] * bm)[:, None, None] + np.arange(bm)[None, :, None]
            cols = (n[tn[pick]] * bn)[:, None, None] + np.arange(bn)[None, None, :]
            first = _piece_rows(q0, q1, k0, causal, cols)
            needed = (rows >= first) & (rows < q1) & (cols >= k0) & (cols < k1)
            if np.any(needed & ~bits):
                raise _not_the_mask(i, q0, q1, k0, k1)
