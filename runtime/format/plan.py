"""The :class:`Plan`: an attention mask compiled into the tiles a kernel must visit, and how.

A plan is immutable: it is built once (by the compiler, or by the reader from a file, fully
validated) and never changed; a changed plan is a new one (``dataclasses.replace``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_DIM = 2**31 - 1  # kernels index with int32 offsets
VARIANTS = ("block_sparse", "intervals", "dense", "dense_causal")
DENSE_VARIANTS = ("dense", "dense_causal")  # run by a dense library kernel: no lists, bitmaps or intervals stored
DERIVED_LISTS = ("intervals", *DENSE_VARIANTS)  # variants whose lists readers derive (from stored or implied intervals)
HASH_OF = ("bits", "intervals")  # what mask_sha256 was computed over
FULL_TILE = -1  # tile id of a full entry, in every variant
INTERVAL_TILE = -2  # tile id of a partial entry of an interval or dense plan (rebuilt from the interval vectors)
LIST_ARRAYS = ("row_ptr", "row_full", "row_col", "row_tile", "col_ptr", "col_full", "col_row", "col_tile")

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
ORDER_ARRAYS = ("perm", "row_order", "col_order")  # shape [0] means absent (identity)
PIECE_FIELDS = ("q0", "q1", "k0", "k1", "causal")  # one row of ``pieces`` ([0, 5] means none)
MAX_PIECES = 16


class PlanError(ValueError):
    """A plan file or plan object is malformed, corrupted, or from a newer version."""


@dataclass(frozen=True, eq=False)
class TileGrid:
    """A mask's shape ``[batch, heads, q_len, kv_len]`` cut into ``block_m × block_n`` tiles: the
    first fields of :class:`Plan` and of the runtime's ``DevicePlan``."""

    q_len: int
    kv_len: int
    batch: int
    heads: int
    block_m: int
    block_n: int

    @property
    def tiles_m(self) -> int:
        return -(-self.q_len // self.block_m)

    @property
    def tiles_n(self) -> int:
        return -(-self.kv_len // self.block_n)


@dataclass(frozen=True, eq=False)
class Plan(TileGrid):
    """An execution plan: which tiles of a mask a kernel visits, and how it masks the partial ones.

    The mask ``[batch, heads, q_len, kv_len]`` (``batch``/``heads`` are 1 where one mask serves
    every batch entry or head) is cut into ``block_m × block_n`` tiles. Empty tiles are never
    visited, full tiles run with no mask, partial tiles apply theirs. Mask slice ``s = b * heads + h``
    owns the row lists ``s * tiles_m + m`` and the column lists ``s * tiles_n + n``, stored as CSR:

    * ``row_ptr``/``row_full``: list ``r`` holds entries ``row_ptr[r]:row_ptr[r + 1]``, of which the
      first ``row_full[r]`` are full tiles (in ascending key-tile order), the rest partial;
    * ``row_col``/``row_tile``: each entry's key tile and tile id (``-1`` full; a partial tile's
      bitmap index, or ``-2`` where its mask is rebuilt from ``intervals``);
    * ``col_*``: the same lists transposed (per key tile, its query tiles), for the dK/dV pass.

    A worked example: the causal mask of 96 tokens in ``32 × 32`` tiles. Tile row ``m`` visits key tiles ``0..m``:
    tiles below the diagonal are full, the diagonal ones partial (and all three diagonal tiles
    share one bitmap, stored once)::

        row_ptr  = [0, 1, 3, 6]        row_full = [0, 1, 2]
        row_col  = [0,  0, 1,  0, 1, 2]
        row_tile = [0, -1, 0, -1, -1, 0]     bitmaps: [1, 32, 1] (the lower triangle, LSB first)

    How a partial tile is masked depends on ``variant``: ``"block_sparse"`` reads
    ``bitmaps[tile]`` (``[block_m, block_n // 32]`` uint32 words; bit ``j % 32`` of word ``j // 32``
    of row ``i`` is mask[i, j]); ``"intervals"`` rebuilds it from ``intervals[s]``, whose rows LTS,
    LTE, UTS, UTE give each key column's masked query rows ``[LTS, LTE) ∪ [UTS, UTE)``
    (FlashMask's form) — its lists follow from the vectors, so files leave them out; a ``"dense"``
    or ``"dense_causal"`` plan (an all-true or exactly causal mask) is run by a dense attention
    kernel and stores nothing but its shape.

    Optional arrays (shape ``[0]`` when absent): ``perm`` reorders the tokens (the lists describe
    ``M'[i, j] = M[perm[i], perm[j]]``; ``mask_sha256``, ``visible_pairs`` and :meth:`to_mask` stand
    for the original ``M``); ``row_order``/``col_order`` give per slice the launch order of the tile
    rows and columns (heaviest first); ``pieces`` (``[n, 5]`` rows ``q0, q1, k0, k1, causal``) is the
    mask as a few disjoint all-visible or causal rectangles, through which the backward may run
    with a dense kernel (only one-slice tile plans in token order carry them).

    ``mask_sha256`` hashes the mask's bits or its canonical interval vectors (``hash_of``);
    ``options`` records how it was compiled and ``predictions`` the cost model's comparison (plain
    data, never read by the runtime). ``plans/FORMAT.md`` is the byte-level specification.
    """

    visible_pairs: int
    mask_sha256: str
    arrays: Mapping[str, np.ndarray]
    variant: str = "block_sparse"
    hash_of: str = "bits"
    options: Mapping[str, Any] = field(default_factory=dict)
    predictions: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        arrays = dict(self.arrays)
        for name in ORDER_ARRAYS:  # optional in memory: absent means identity
            arrays.setdefault(name, np.zeros(0, dtype="<i4"))
        arrays.setdefault("pieces", np.zeros((0, len(PIECE_FIELDS)), dtype="<i4"))
        object.__setattr__(self, "arrays", FrozenDict({name: _read_only(a) for name, a in arrays.items()}))
        object.__setattr__(self, "options", _frozen(self.options))
        if self.predictions is not None:
            object.__setattr__(self, "predictions", _frozen(self.predictions))

    @property
    def slices(self) -> int:
        return self.batch * self.heads

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
        """The plan file's bytes (validated first; identical plans give identical bytes)."""
        from maskc.runtime.format.codec import encode

        return encode(self)

    def save(self, path: Any) -> None:
        """Write the plan file atomically (readers never see half a file)."""
        from maskc.runtime.format.files import atomic_write

        atomic_write(path, self.to_bytes())

    def to_mask(self) -> np.ndarray:
        """The dense boolean mask ``[batch, heads, q_len, kv_len]`` this plan stands for (the original
        token order, whether or not the plan is reordered)."""
        from maskc.runtime.format.readback import decode_mask

        return decode_mask(self)

    def __repr__(self) -> str:
        c = self.tile_counts()
        visited = c["tiles_full"] + c["tiles_partial"]
        extras = [f"{c['partial_distinct']} distinct bitmaps"] if self.variant == "block_sparse" else []
        extras += ["reordered"] * self.reordered + [f"{self.arrays['pieces'].shape[0]} dense pieces"] * bool(self.arrays["pieces"].shape[0])
        return (f"Plan({self.variant}, mask {self.batch}x{self.heads}x{self.q_len}x{self.kv_len}, tiles {self.block_m}x{self.block_n}: "
                f"{c['tiles_full']:,} full + {c['tiles_partial']:,} partial of {c['tiles_total']:,} "
                f"({visited / c['tiles_total']:.1%} visited){''.join(', ' + e for e in extras)})")

    def __str__(self) -> str:
        """The repr, then the tile map of the first mask slice (``█`` full, ``░`` partial, ``·``
        empty), shrunk to at most 32 × 32 cells where each cell shows its busiest tile."""
        from maskc.runtime.format.readback import tile_map

        classes = tile_map(self, 0)
        step_m, step_n = -(-classes.shape[0] // 32), -(-classes.shape[1] // 32)
        rows = []
        for m in range(0, classes.shape[0], step_m):
            cells = classes[m:m + step_m]
            rows.append("".join(" ·█░"[_busiest(cells[:, n:n + step_n])] for n in range(0, classes.shape[1], step_n)))
        scale = f" (one cell per {step_m}x{step_n} tiles)" if step_m * step_n > 1 else ""
        return f"{self!r}\nslice 0{' in reordered token order' if self.reordered else ''}{scale}:\n" + "\n".join(rows)


def _busiest(cells: np.ndarray) -> int:
    """The map character index of a block of tile classes: partial over full over empty."""
    return 3 if (cells == 2).any() else 2 if (cells == 1).any() else 1


class FrozenDict(dict):
    """A dict that refuses changes: a plan's arrays, options and predictions are read-only."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("a Plan is immutable: build a changed one with dataclasses.replace(plan, ...)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse


def _frozen(value: Any) -> Any:
    """``value`` with every map in it frozen (plain metadata: maps, lists, scalars)."""
    if isinstance(value, Mapping):
        return FrozenDict({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_frozen(v) for v in value]
    return value


def _read_only(a: np.ndarray) -> np.ndarray:
    view = np.asarray(a).view()
    view.flags.writeable = False
    return view
