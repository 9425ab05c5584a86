"""The plan file: encode, decode and validate, with numpy and msgpack only.

A plan file is safe to load from a stranger: a fixed preamble (magic, version, SHA-256 of the body)
followed by one msgpack map of plain values and raw little-endian arrays. Every index is checked
here, before anything reaches a kernel, so a corrupted or hostile file raises :class:`PlanError`
and never causes an out-of-bounds access. ``plans/FORMAT.md`` is the byte-level specification.

Version 2 adds the interval variant: a plan whose partial tiles are rebuilt from per-column row
intervals instead of bitmaps. Its row and column lists follow from the intervals, so writers leave
them out of the file and readers derive them (``maskc.runtime.intervals``). Version 3 adds the dense
variants (``"dense"``: an all-true mask, ``"dense_causal"``: exactly causal; the runtime hands them
to a dense library kernel and they store no lists), an optional token permutation (``perm``: the
lists describe the mask with its tokens reordered, and every reader that rebuilds the mask undoes
it), the optional launch orders ``row_order``/``col_order``, and the compiler's ``predictions``.
Version 4 adds the optional dense ``pieces``: the mask as a few all-visible or causal rectangles,
through which the runtime runs the backward with a dense attention kernel. Versions 1 to 3 still
load.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np

from maskc.runtime import intervals as iv_form
from maskc.runtime.intervals import (  # noqa: F401  (the compiler reads the interval form and launch traits through this module)
    FULL_TILE, INTERVAL_TILE, LIST_ARRAYS, LTE, LTS, MAX_TILES_PER_SLICE, UTE, UTS, masked_pairs, masked_rows, tile_classes,
    tile_lists, tile_masked_counts, visible_rows,
)
from maskc.runtime.launch import SHARED, UNBALANCED, list_traits  # noqa: F401

MAGIC = b"MASKCPLN"
VERSION = 4
_PREAMBLE = struct.Struct("<8sI32s")  # magic, format version, sha256(body)
MAX_DIM = 2**31 - 1  # kernels index with int32 offsets
VARIANTS = ("block_sparse", "intervals", "dense", "dense_causal")
DENSE_VARIANTS = ("dense", "dense_causal")  # run by a dense library kernel: no lists, bitmaps or intervals stored
DERIVED_LISTS = ("intervals", *DENSE_VARIANTS)  # variants whose lists readers derive (from stored or implied intervals)
HASH_OF = ("bits", "intervals")  # what meta.mask_sha256 was computed over

# name -> (dtype, number of dimensions); every plan carries all of them.
ARRAY_SPECS: dict[str, tuple[str, int]] = {
    "row_ptr": ("<i4", 1),
    "row_full": ("<i4", 1),
    "row_col": ("<i4", 1),
    "row_tile": ("<i4", 1),
    "col_ptr": ("<i4", 1),
    "col_full": ("<i4", 1),
    "col_row": ("<i4", 1),
    "col_tile": ("<i4", 1),
    "bitmaps": ("<u4", 3),
    "intervals": ("<i4", 3),
    "perm": ("<i4", 1),
    "row_order": ("<i4", 1),
    "col_order": ("<i4", 1),
    "pieces": ("<i4", 2),
}
ORDER_ARRAYS = ("perm", "row_order", "col_order")  # version 3; shape [0] means absent (identity)
PIECE_FIELDS = ("q0", "q1", "k0", "k1", "causal")  # one row of ``pieces`` (version 4; [0, 5] means none)
MAX_PIECES = 16
V3_ARRAYS = tuple(name for name in ARRAY_SPECS if name != "pieces")
V2_ARRAYS = tuple(name for name in V3_ARRAYS if name not in ORDER_ARRAYS)
V1_ARRAYS = tuple(name for name in V2_ARRAYS if name != "intervals")
MAX_PREDICTION_DEPTH = 8  # meta.predictions is plain nested data, at most this deep
META_INTS = ("q_len", "kv_len", "batch", "heads", "block_m", "block_n", "visible_pairs")
BLOCK_SIZES = (16, 32, 64, 128, 256)
_UMASK = os.umask(0)
os.umask(_UMASK)


class PlanError(ValueError):
    """A plan file or plan object is malformed, corrupted, or from a newer version."""


@dataclass
class Plan:
    """An execution plan: the mask's tiles as row and column lists, plus how to mask partial tiles.

    ``batch`` and ``heads`` are the mask's own (1 where it broadcasts). Slice ``s = b * heads + h``
    owns rows ``s * tiles_m + m`` of ``row_ptr``/``row_full`` and columns ``s * tiles_n + n`` of
    ``col_ptr``/``col_full``. Within a row, the first ``row_full`` entries are full tiles
    (``row_tile == -1``) in ascending column order; the rest are partial tiles; columns likewise.
    A ``"block_sparse"`` plan masks them with ``bitmaps[row_tile]``; an ``"intervals"`` plan (partial
    tile id -2) with the rows of ``intervals[s]``, whose four rows LTS, LTE, UTS, UTE give each key
    column's masked query rows ``[LTS, LTE) ∪ [UTS, UTE)``. A ``"dense"`` or ``"dense_causal"`` plan
    is run by a dense library kernel; its lists (derived, never stored) are those of the all-true or
    causal mask, with partial tile id -2. ``hash_of`` says whether ``mask_sha256`` hashes the mask's
    bits or its canonical interval vectors.

    ``arrays["perm"]`` (int32 ``[q_len]``, or ``[0]`` when absent) reorders the tokens: the lists,
    bitmaps and intervals describe the permuted mask ``M'[i, j] = M[perm[i], perm[j]]``, while
    ``mask_sha256``, ``visible_pairs`` and :meth:`to_mask` stand for the original ``M``.
    ``arrays["row_order"]`` (``[slices * tiles_m]``) and ``arrays["col_order"]``
    (``[slices * tiles_n]``), when not ``[0]``, give per slice the order in which to launch the
    query-tile rows and key-tile columns (heaviest first); absent means ascending.
    ``predictions`` is the cost model's record of the candidates it compared (plain data).

    ``arrays["pieces"]`` (int32 ``[n, 5]``, or ``[0, 5]`` when absent) is the mask as ``n`` disjoint
    dense pieces, rows ``(q0, q1, k0, k1, causal)``: queries ``[q0, q1)`` see keys ``[k0, k1)``, all of
    them or (``causal``, a square) key ``k0 + t`` from query ``q0 + t`` on. A plan with pieces runs its
    backward through them with a dense attention kernel where one is available (``maskc.pieces``).
    Only a one-slice tile plan in token order carries them.
    """

    q_len: int
    kv_len: int
    batch: int
    heads: int
    block_m: int
    block_n: int
    visible_pairs: int
    mask_sha256: str
    arrays: dict[str, np.ndarray]
    variant: str = "block_sparse"
    hash_of: str = "bits"
    options: dict = field(default_factory=dict)
    predictions: dict | None = None

    def __post_init__(self) -> None:
        for name in ORDER_ARRAYS:  # optional in memory: absent means identity
            if name not in self.arrays:
                self.arrays = {**self.arrays, name: np.zeros(0, dtype="<i4")}
        if "pieces" not in self.arrays:
            self.arrays = {**self.arrays, "pieces": np.zeros((0, len(PIECE_FIELDS)), dtype="<i4")}

    @property
    def slices(self) -> int:
        return self.batch * self.heads

    @property
    def tiles_m(self) -> int:
        return -(-self.q_len // self.block_m)

    @property
    def tiles_n(self) -> int:
        return -(-self.kv_len // self.block_n)

    @property
    def words_per_row(self) -> int:
        return self.block_n // 32

    @property
    def reordered(self) -> bool:
        """Whether the plan's lists describe the mask with its tokens permuted by ``arrays["perm"]``."""
        return self.arrays["perm"].size > 0

    def tile_counts(self) -> dict[str, int]:
        """Empty, full and partial tile counts over all mask slices, and distinct partial bitmaps
        (0 for an interval or dense plan, which store none)."""
        full = int(self.arrays["row_full"].sum(dtype=np.int64))
        visited = int(self.arrays["row_col"].shape[0])
        total = self.slices * self.tiles_m * self.tiles_n
        return {
            "tiles_total": total,
            "tiles_empty": total - visited,
            "tiles_full": full,
            "tiles_partial": visited - full,
            "partial_distinct": int(self.arrays["bitmaps"].shape[0]),
        }

    def to_bytes(self) -> bytes:
        return encode(self)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write(path, encode(self))

    def to_mask(self) -> np.ndarray:
        """The dense boolean mask ``[batch, heads, q_len, kv_len]`` this plan stands for (the original
        token order, whether or not the plan is reordered)."""
        return decode_mask(self)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; a plan is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def encode(plan: Plan) -> bytes:
    """Serialise a validated plan; byte-identical output for identical plans (map keys are sorted)."""
    validate(plan)
    return _pack(plan)


def _pack(plan: Plan) -> bytes:
    arrays = {}
    for name in sorted(plan.arrays):
        dtype, _ = ARRAY_SPECS[name]
        a = np.ascontiguousarray(plan.arrays[name], dtype=np.dtype(dtype))
        if plan.variant in DERIVED_LISTS and name in LIST_ARRAYS:
            a = a[:0]  # derived by every reader: not stored
        arrays[name] = {"dtype": dtype, "shape": list(a.shape), "data": a.tobytes()}
    meta = {
        **{k: int(getattr(plan, k)) for k in META_INTS},
        "mask_sha256": plan.mask_sha256,
        "variant": plan.variant,
        "hash_of": plan.hash_of,
        "reordered": plan.reordered,
    }
    if plan.predictions is not None:
        meta["predictions"] = plan.predictions
    body = {"meta": meta, "options": plan.options, "arrays": arrays}
    payload = msgpack.packb(_sorted(body), use_bin_type=True)
    return _PREAMBLE.pack(MAGIC, VERSION, hashlib.sha256(payload).digest()) + payload


def decode(data: bytes) -> Plan:
    """Parse and fully validate a plan file's bytes."""
    if len(data) < _PREAMBLE.size:
        raise PlanError(f"not a maskc plan: {len(data)} bytes is shorter than the {_PREAMBLE.size}-byte preamble")
    magic, version, digest = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise PlanError("not a maskc plan: bad magic bytes")
    if version > VERSION:
        raise PlanError(f"plan format version {version} is newer than this maskc reads ({VERSION}); upgrade maskc")
    if version < 1:
        raise PlanError(f"plan format version {version} is not valid")
    payload = memoryview(data)[_PREAMBLE.size:]
    if hashlib.sha256(payload).digest() != digest:
        raise PlanError("plan checksum mismatch: the file is truncated or corrupted")
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise PlanError(f"plan body is not valid msgpack: {e}") from None
    plan = _plan_from_body(body, version)
    if plan.variant in DERIVED_LISTS and plan.arrays["row_ptr"].size == 0:
        _derive_lists(plan)
    else:
        validate(plan)
    return plan


def load(path: str | os.PathLike) -> Plan:
    """Read and validate a plan file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PlanError(f"plan file not found: {path}") from None
    except IsADirectoryError:
        raise PlanError(f"plan path is a directory: {path}") from None
    try:
        return decode(data)
    except PlanError as e:
        raise PlanError(f"{path}: {e}") from None


def _sorted(obj):
    if isinstance(obj, dict):
        return {k: _sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [_sorted(v) for v in obj]
    return obj


def _field(mapping, key, kind, where):
    if not isinstance(mapping, dict) or key not in mapping:
        raise PlanError(f"plan field {where}{key} is missing")
    value = mapping[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise PlanError(f"plan field {where}{key} must be an integer, got {type(value).__name__}")
    if kind is not int and not isinstance(value, kind):
        raise PlanError(f"plan field {where}{key} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _plan_from_body(body, version: int) -> Plan:
    if not isinstance(body, dict):
        raise PlanError("plan body must be a map")
    meta = _field(body, "meta", dict, "")
    ints = {k: _field(meta, k, int, "meta.") for k in META_INTS}
    hash_of = _field(meta, "hash_of", str, "meta.") if version >= 2 else "bits"
    raw_arrays = _field(body, "arrays", dict, "")
    names = ARRAY_SPECS if version >= 4 else V3_ARRAYS if version == 3 else V2_ARRAYS if version == 2 else V1_ARRAYS
    arrays = {}
    for name in names:
        dtype, ndim = ARRAY_SPECS[name]
        spec = _field(raw_arrays, name, dict, "arrays.")
        where = f"arrays.{name}."
        if _field(spec, "dtype", str, where) != dtype:
            raise PlanError(f"plan array {name} has dtype {spec['dtype']!r}, expected {dtype!r}")
        shape = _field(spec, "shape", list, where)
        if len(shape) != ndim or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape):
            raise PlanError(f"plan array {name} has invalid shape {shape!r}")
        buf = _field(spec, "data", bytes, where)
        itemsize = np.dtype(dtype).itemsize
        if len(buf) != int(np.prod(shape, dtype=np.int64)) * itemsize:
            raise PlanError(f"plan array {name}: {len(buf)} bytes do not match shape {shape}")
        arrays[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    extra = set(raw_arrays) - set(names)
    if extra:
        raise PlanError(f"plan has unknown arrays {sorted(extra)}")
    if version < 2:  # version 1 plans are all block-sparse: they carry no interval vectors
        arrays["intervals"] = np.zeros((0, 4, max(ints["kv_len"], 0)), dtype="<i4")
    predictions = None
    if version >= 3:
        reordered = _field(meta, "reordered", bool, "meta.")
        if reordered != (arrays["perm"].size > 0):
            raise PlanError(f"plan meta.reordered is {reordered} but it {'stores no' if reordered else 'stores a'} permutation")
        if "predictions" in meta:
            predictions = _field(meta, "predictions", dict, "meta.")
            _check_plain(predictions, "meta.predictions", MAX_PREDICTION_DEPTH)
    options = body.get("options", {})
    if not isinstance(options, dict):
        raise PlanError("plan field options must be a map")
    return Plan(
        **ints,
        mask_sha256=_field(meta, "mask_sha256", str, "meta."),
        variant=_field(meta, "variant", str, "meta."),
        hash_of=hash_of,
        arrays=arrays,
        options=options,
        predictions=predictions,
    )


def _check_plain(value, where: str, depth: int) -> None:
    """Refuse anything in ``value`` but nested maps with string keys, lists, strings, numbers,
    booleans and nil, at most ``depth`` levels deep."""
    if isinstance(value, dict):
        if depth <= 0:
            raise PlanError(f"plan field {where} is nested too deeply")
        for k, v in value.items():
            if not isinstance(k, str):
                raise PlanError(f"plan field {where} has a key that is not a string")
            _check_plain(v, f"{where}.{k}", depth - 1)
    elif isinstance(value, list):
        if depth <= 0:
            raise PlanError(f"plan field {where} is nested too deeply")
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]", depth - 1)
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise PlanError(f"plan field {where} holds a {type(value).__name__}; only plain data is allowed")


def validate(plan: Plan) -> None:
    """Check every dimension and index of a plan; raise PlanError naming the first fault."""
    _check_header(plan)
    _check_orders(plan)
    _check_pieces(plan)
    if plan.predictions is not None:
        if not isinstance(plan.predictions, dict):
            raise PlanError("plan predictions must be a map")
        _check_plain(plan.predictions, "predictions", MAX_PREDICTION_DEPTH)
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
        for lo, hi in ((iv_form.LTS, iv_form.LTE), (iv_form.UTS, iv_form.UTE)):
            if np.any(np.maximum(first, iv[0, lo, k0:k1]) < np.minimum(q1, iv[0, hi, k0:k1])):
                raise _not_the_mask(i, q0, q1, k0, k1)


def _check_pieces_in_tiles(plan: Plan, keys: np.ndarray, tiles: np.ndarray) -> None:
    """Every pair of every piece lies in a listed tile, and in a partial tile on a set bit.
    ``keys`` (sorted) and ``tiles`` are the plan's entries as ``m * tiles_n + n`` and tile ids."""
    bm, bn = plan.block_m, plan.block_n
    for i, (q0, q1, k0, k1, causal) in enumerate(plan.arrays["pieces"].astype(np.int64).tolist()):
        m = np.arange(q0 // bm, (q1 - 1) // bm + 1, dtype=np.int64)
        n = np.arange(k0 // bn, (k1 - 1) // bn + 1, dtype=np.int64)
        # A causal piece reaches tile (m, n) when the tile's last row of the piece sees its first key.
        last_row = np.minimum((m + 1) * bm, q1) - 1
        first_col = np.maximum(n * bn, k0)
        reached = (first_col[None, :] - k0 <= last_row[:, None] - q0) if causal else np.ones((m.size, n.size), dtype=bool)
        tm, tn = np.nonzero(reached)
        wanted = m[tm] * plan.tiles_n + n[tn]
        at = np.minimum(np.searchsorted(keys, wanted), max(keys.size - 1, 0))
        if keys.size == 0 or np.any(keys[at] != wanted):
            raise _not_the_mask(i, q0, q1, k0, k1)
        partial = np.flatnonzero(tiles[at] >= 0)
        for start in range(0, partial.size, 4096):  # bounded memory: 4096 tiles' bits at a time
            pick = partial[start:start + 4096]
            bits = bitmap_bits(plan, tiles[at[pick]])
            rows = (m[tm[pick]] * bm)[:, None, None] + np.arange(bm)[None, :, None]
            cols = (n[tn[pick]] * bn)[:, None, None] + np.arange(bn)[None, None, :]
            first = _piece_rows(q0, q1, k0, causal, cols)
            needed = (rows >= first) & (rows < q1) & (cols >= k0) & (cols < k1)
            if np.any(needed & ~bits):
                raise _not_the_mask(i, q0, q1, k0, k1)


def pieces_take(dtype: str, head_dim: int) -> bool:
    """Whether a GPU call runs its backward through a plan's dense pieces (cuDNN's attention
    backward): half precision (``dtype`` "bf16" or "fp16") and a head dim that is a multiple of 8
    up to 128; other calls run the tile backward. The runtime applies it per call, the cost model
    to the workload it predicts. Grouped key/value heads are taken too (run as their query heads)."""
    return dtype in ("bf16", "fp16") and head_dim % 8 == 0 and head_dim <= 128


def piece_pairs(pieces: np.ndarray) -> np.ndarray:
    """The visible pairs of each dense piece (``[n, 5]`` rows of :data:`PIECE_FIELDS`), int64."""
    rows = pieces[:, 1].astype(np.int64) - pieces[:, 0]
    keys = pieces[:, 3].astype(np.int64) - pieces[:, 2]
    return np.where(pieces[:, 4] == 1, rows * (rows + 1) // 2, rows * keys)


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


def _check_header(plan: Plan) -> None:
    """Dimensions, tile sizes, variant, hash, and the shapes of the bitmap and interval arrays."""
    for k in ("q_len", "kv_len", "batch", "heads"):
        v = getattr(plan, k)
        if not 1 <= v <= MAX_DIM:
            raise PlanError(f"plan {k}={v} is out of range [1, {MAX_DIM}]")
    for k in ("block_m", "block_n"):
        if getattr(plan, k) not in BLOCK_SIZES:
            raise PlanError(f"plan {k}={getattr(plan, k)} is not one of {BLOCK_SIZES}")
    if plan.block_n < 32:
        raise PlanError(f"plan block_n={plan.block_n} must be at least 32 (one bitmap word)")
    if plan.variant not in VARIANTS:
        raise PlanError(f"plan variant {plan.variant!r} is not one of {VARIANTS}")
    if plan.hash_of not in HASH_OF:
        raise PlanError(f"plan hash_of {plan.hash_of!r} is not one of {HASH_OF}")
    if len(plan.mask_sha256) != 64 or any(c not in "0123456789abcdef" for c in plan.mask_sha256):
        raise PlanError("plan mask_sha256 is not a 64-digit lowercase hex string")
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
    if plan.variant in DERIVED_LISTS and plan.tiles_m * plan.tiles_n > iv_form.MAX_TILES_PER_SLICE:
        raise PlanError(f"plan has {plan.tiles_m}x{plan.tiles_n} tiles per slice; an {plan.variant} plan may have at most {iv_form.MAX_TILES_PER_SLICE}")
    if intervals:
        ends_ok = (iv[:, 0::2] >= 0) & (iv[:, 0::2] <= iv[:, 1::2]) & (iv[:, 1::2] <= plan.q_len)
        if not ends_ok.all():
            s, pair, j = map(int, np.argwhere(~ends_ok)[0])
            name = ("LTS/LTE", "UTS/UTE")[pair]
            raise PlanError(f"plan intervals {name} of slice {s}, key {j} are {iv[s, 2 * pair, j]}/{iv[s, 2 * pair + 1, j]}; they must satisfy 0 <= start <= end <= q_len={plan.q_len}")


def dense_intervals(variant: str, slices: int, q_len: int, kv_len: int) -> np.ndarray:
    """The canonical interval vectors ``[slices, 4, kv_len]`` of a dense variant's mask: nothing
    masked (``"dense"``), or key ``j`` masked for queries ``[0, j)`` (``"dense_causal"``)."""
    out = np.empty((slices, 4, kv_len), dtype="<i4")
    out[:, iv_form.LTS] = q_len
    out[:, iv_form.LTE] = q_len
    out[:, iv_form.UTS] = 0
    out[:, iv_form.UTE] = np.arange(kv_len) if variant == "dense_causal" else 0
    return out


def interval_vectors(plan: Plan) -> np.ndarray:
    """The interval vectors the lists of an interval or dense plan follow from: stored, or implied."""
    if plan.variant in DENSE_VARIANTS:
        return dense_intervals(plan.variant, plan.slices, plan.q_len, plan.kv_len)
    return plan.arrays["intervals"]


def _interval_lists(plan: Plan) -> dict[str, np.ndarray]:
    """The row and column lists an interval or dense plan's (checked) vectors make."""
    return iv_form.tile_lists(interval_vectors(plan), plan.q_len, plan.block_m, plan.block_n)


def _check_interval_pairs(plan: Plan) -> None:
    pairs = plan.slices * plan.q_len * plan.kv_len - iv_form.masked_pairs(interval_vectors(plan))
    if pairs != plan.visible_pairs:
        raise PlanError(f"plan visible_pairs={plan.visible_pairs} but its intervals leave {pairs}")


def _derive_lists(plan: Plan) -> None:
    """Fill in the lists an interval or dense plan file leaves out (all eight must be absent), checking the rest."""
    _check_header(plan)
    _check_orders(plan)
    stored = [name for name in LIST_ARRAYS if plan.arrays[name].size]
    if stored:
        raise PlanError(f"plan stores {stored[0]} but not row_ptr: an {plan.variant} plan stores all eight lists or none")
    plan.arrays.update(_interval_lists(plan))
    _check_interval_pairs(plan)
    _check_pieces(plan)
    _check_pieces_in_intervals(plan)


def _check_lists(plan: Plan, prefix: str, n_lists: int, n_other: int, n_partial: int):
    """Validate one CSR (rows or columns); return each entry's (slice, list index, other index, tile id)."""
    ptr = plan.arrays[f"{prefix}_ptr"].astype(np.int64)
    full = plan.arrays[f"{prefix}_full"].astype(np.int64)
    other = plan.arrays[f"{prefix}_{'col' if prefix == 'row' else 'row'}"].astype(np.int64)
    tile = plan.arrays[f"{prefix}_tile"].astype(np.int64)
    n = plan.slices * n_lists
    if ptr.shape != (n + 1,) or full.shape != (n,):
        raise PlanError(f"plan {prefix}_ptr/{prefix}_full have {ptr.shape[0]}/{full.shape[0]} entries, expected {n + 1}/{n}")
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


def _tile_extent(length: int, block: int, index: np.ndarray) -> np.ndarray:
    return np.minimum(block, length - index * block)


def _count_visible(plan: Plan, m: np.ndarray, n: np.ndarray, tile: np.ndarray) -> int:
    rows = _tile_extent(plan.q_len, plan.block_m, m)
    cols = _tile_extent(plan.kv_len, plan.block_n, n)
    full = tile < 0
    total = int(np.sum(rows[full] * cols[full]))
    if np.any(~full):
        bits = bitmap_bits(plan)  # [P, BM, BN]
        for r, c, t in zip(rows[~full], cols[~full], tile[~full]):
            total += int(bits[t, :r, :c].sum())
    return total


def bitmap_bits(plan: Plan, tiles: np.ndarray | None = None) -> np.ndarray:
    """Unpack the partial bitmaps (those of tile ids ``tiles``, else all) to booleans
    ``[P, block_m, block_n]``."""
    bitmaps = plan.arrays["bitmaps"]
    words = np.ascontiguousarray(bitmaps if tiles is None else bitmaps[tiles], dtype="<u4")
    bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
    return bits.reshape(words.shape[0], plan.block_m, plan.block_n).astype(bool)


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
            partial_bits[:, : plan.kv_len] = ~iv_form.masked_rows(interval_vectors(plan)[s], rows)
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
