"""The plan seam: everything the compiler and the runtime share, with numpy and msgpack only.

A plan file is safe to load from a stranger: a fixed preamble (magic, version, SHA-256 of the body)
followed by one msgpack map of plain values and raw little-endian arrays. Every index is checked
before anything reaches a kernel, so a corrupted or hostile file raises :class:`PlanError` and never
causes an out-of-bounds access or an unbounded allocation. ``plans/FORMAT.md`` is the byte-level
specification. The compiler imports nothing else of the runtime.

Modules: ``plan`` (the immutable :class:`Plan` and the format's constants), ``family`` (the
:class:`FamilyPlan` of a mask family bound per step), ``codec`` (bytes in
and out), ``validate`` (every check), ``readback`` (the mask a plan stands for, read back),
``intervals`` (the column-interval form: tile classes and lists), ``policy`` (tile sizes, dtype
names, list traits, which calls run dense pieces), ``files`` (atomic writes).
"""

from maskc.runtime.format.codec import FAMILY_VERSION, MAGIC, PLAN_VERSION, VERSION, decode, encode, load
from maskc.runtime.format.family import FAMILY_KINDS, SORTED_FAMILIES, TRAITS, FamilyPlan, validate_family
from maskc.runtime.format.files import atomic_path, atomic_write
from maskc.runtime.format.intervals import (
    LTE, LTS, MAX_DERIVED_TILES, UTE, UTS, masked_pairs, masked_rows, tile_classes, tile_lists, tile_masked_counts, visible_rows,
)
from maskc.runtime.format.plan import (
    ARRAY_SPECS, DENSE_VARIANTS, DERIVED_LISTS, FULL_TILE, HASH_OF, INTERVAL_TILE, LIST_ARRAYS, MAX_DIM, MAX_PIECES, ORDER_ARRAYS,
    PIECE_FIELDS, VARIANTS, Plan, PlanError, TileGrid,
)
from maskc.runtime.format.policy import DTYPES, SHARED, TILE_SIZES, UNBALANCED, list_traits, pieces_take
from maskc.runtime.format.readback import (
    bitmap_bits, decode_mask, dense_intervals, interval_vectors, inverse_permutation, mask_rows, piece_pairs, tile_map, tile_row,
)
from maskc.runtime.format.validate import validate

__all__ = [
    "FAMILY_KINDS", "FAMILY_VERSION", "PLAN_VERSION", "SORTED_FAMILIES", "TRAITS", "FamilyPlan", "validate_family",
    "ARRAY_SPECS", "DENSE_VARIANTS", "DERIVED_LISTS", "DTYPES", "FULL_TILE", "HASH_OF", "INTERVAL_TILE", "LIST_ARRAYS", "LTE", "LTS",
    "MAGIC", "MAX_DERIVED_TILES", "MAX_DIM", "MAX_PIECES", "ORDER_ARRAYS", "PIECE_FIELDS", "SHARED", "TILE_SIZES", "UNBALANCED", "UTE",
    "UTS", "VARIANTS", "VERSION", "Plan", "PlanError", "TileGrid", "atomic_path", "atomic_write", "bitmap_bits", "decode", "decode_mask",
    "dense_intervals", "encode", "interval_vectors", "inverse_permutation", "list_traits", "load", "mask_rows", "masked_pairs",
    "masked_rows", "piece_pairs", "pieces_take", "tile_classes", "tile_lists", "tile_map", "tile_masked_counts", "tile_row",
    "validate", "visible_rows",
]
