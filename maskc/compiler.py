"""The compiler: classify every tile of a mask, build the row and column lists, write a Plan.

Plan variants. A block-sparse plan stores each distinct partial tile as a bitmap; the mask is read
one tile row (``block_m`` query rows) at a time, so memory stays bounded by one row block whatever
the mask's size. An interval plan stores, per key column, the masked query rows as two intervals;
it is built from a structured source's vectors in O(kv_len + tiles), or from rows read the same way
as for bitmaps while the form is detected. A dense plan (an all-true or exactly causal mask) stores
nothing but its shape: the runtime hands it to SDPA. A block-sparse plan may also be reordered
(:mod:`maskc.reorder`): its lists describe the mask with its tokens renumbered by RCM.

Two ways to decide. With an explicit ``block``, the compiler does what it is told (``variant="auto"``
is the fixed size rule of :func:`auto_variant`; no dense dispatch, no reordering unless
``reorder="rcm"``). With ``block="auto"`` (the default) and a profile (:mod:`maskc.cost`), it
classifies the tiles of every candidate — 64×64 and 128×128 tiles, bitmaps or intervals, with or
without RCM, dense SDPA where the mask allows — predicts each one's time and builds the fastest,
recording every prediction in the plan. Without a profile, ``block="auto"`` is 128×128 with the
fixed rule, and the plan's predictions say why they are empty.

The result is deterministic: the same mask, options and profile give a byte-identical plan, from
whichever source.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from maskc import cost
from maskc.errors import MaskError
from maskc.intervals import RunTracker, canonical, intervals_sha256
from maskc.pieces import MAX_PIECES, find_pieces
from maskc.runtime.format import DENSE_VARIANTS, Plan, dense_intervals
from maskc.runtime.intervals import INTERVAL_TILE, LTE, LTS, MAX_TILES_PER_SLICE, UTE, UTS, masked_pairs, tile_classes, tile_lists
from maskc.runtime.launch import list_traits
from maskc.sources import MaskSource, open_mask

Progress = Callable[[int, int], None]
TILE_SIZES = (32, 64, 128)
AUTO = "auto"
AUTO_BLOCKS = ((64, 64), (128, 128))  # the tile sizes the cost model compares
FALLBACK_BLOCK = (128, 128)  # block="auto" without a profile
REORDERS = ("auto", "rcm", "none")
SCHEDULES = ("lpt", "none")
BACKWARDS = ("auto", "tiles", "pieces")


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


def parse_block_option(block: Any) -> str | tuple[int, int]:
    """``"auto"`` (the cost model's choice), or a tile size as :func:`parse_block` accepts it."""
    return AUTO if isinstance(block, str) and block.strip().lower() == AUTO else parse_block(block)


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


COMPILER_REVISION = 2
"""Bumped whenever the compiler's output for the same mask and options changes (2: launch orders
only for unbalanced or shared lists), so the plan cache never serves a plan an older compiler made."""

VARIANTS = ("auto", "intervals", "block_sparse", "dense", "dense_causal")
# auto's rule with an explicit block or without a profile (see auto_variant)
AUTO_BITMAP_BYTES = 1 << 20
AUTO_PAIRS = 1 << 32  # 65536²: below it a structured mask's bitmaps build in about a second or less


def check_variant(variant: Any) -> str:
    """``variant`` if it is one of :data:`VARIANTS`, else a MaskError."""
    return check_option(variant, VARIANTS, "variant")


def check_option(value: Any, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise MaskError(f"{what} {value!r} is not one of {', '.join(allowed)}")
    return value


def auto_variant(lists: dict[str, np.ndarray], shape: tuple[int, int, int, int], block: tuple[int, int]) -> str:
    """The variant the fixed rule picks for a mask that fits the interval form (an explicit block,
    or no profile).

    Intervals when the bitmap plan could store more than ``AUTO_BITMAP_BYTES`` of partial-tile bits
    (one bitmap per partial tile, before sharing identical ones), or when the mask has
    ``AUTO_PAIRS`` pairs or more (65536² and up: bitmaps would cost O(N²) to build from a
    structured source). Otherwise bitmaps, whose kernels measured faster on an H100 (the interval
    dQ kernel is up to 1.5x slower, benchmarks/NOTES.md). It depends only on the mask, so equal masks get the
    same variant from any source; with a profile, ``block="auto"`` replaces it by the cost model.
    """
    partial = int(lists["row_ptr"][-1]) - int(lists["row_full"].sum(dtype=np.int64))
    bitmap_bytes = partial * block[0] * block[1] // 8
    pairs = int(np.prod(shape, dtype=np.int64))
    return "intervals" if bitmap_bytes > AUTO_BITMAP_BYTES or pairs >= AUTO_PAIRS else "block_sparse"


def compile(
    mask: Any,
    block: Any = AUTO,
    progress: Progress | None = None,
    variant: str = "auto",
    reorder: str = "auto",
    schedule: str = "lpt",
    profile: Any = None,
    workload: cost.Workload | None = None,
    objective: str = "fwd_bwd",
    backward: str = "auto",
) -> Plan:
    """Compile a mask (path, spec, array, sparse matrix or MaskSource) into an execution plan.

    ``block``: a tile size (``128``, ``(128, 64)``, ``"64x64"``), or ``"auto"``: the cost model's
    choice of 64×64 or 128×128 (128×128 without a profile).

    ``variant``: ``"block_sparse"`` (partial tiles as bitmaps), ``"intervals"`` (partial tiles
    rebuilt from per-column row intervals; a MaskError if the mask does not fit that form),
    ``"dense"`` / ``"dense_causal"`` (SDPA; a MaskError unless the mask is all-true / exactly
    causal), or ``"auto"``: with ``block="auto"`` and a profile, the fastest predicted; otherwise the
    fixed rule of :func:`auto_variant`.

    ``reorder``: ``"rcm"`` (renumber the tokens by Reverse Cuthill–McKee; self-attention masks,
    block-sparse plans), ``"none"``, or ``"auto"``: RCM when the cost model predicts it pays off
    (only with ``block="auto"`` and a profile).

    ``schedule``: ``"lpt"`` records ``row_order``/``col_order``, each slice's tile rows and columns
    heaviest first (omitted where that is ascending order anyway); ``"none"`` records neither.

    ``profile``: the cost model's profile — a :class:`maskc.cost.Profile`, a GPU name or JSON path,
    or ``"none"``; default ``$MASKC_PROFILE``, else the shipped H100 profile when there is one.
    ``workload`` (default ``B=1, H=16, D=128, bf16``) is the call the predictions are for, and
    ``objective`` (``"fwd_bwd"`` or ``"fwd"``) what the model minimises.

    ``backward``: ``"pieces"`` runs the backward through the mask's dense pieces with a dense
    attention kernel (:mod:`maskc.pieces`; a MaskError unless the mask, one slice, splits into at
    most 16 of them), ``"tiles"`` through the tile kernels, ``"auto"`` as the cost model predicts
    faster (only with ``block="auto"`` and a profile; tiles otherwise).

    A source that gives its intervals from its structure is compiled to an interval or dense plan
    without reading a single row; any other source is read one tile row at a time (twice when the
    cost model is used: once to classify the candidates, once to build the winner).
    """
    source = open_mask(mask)
    block = parse_block_option(block)
    variant = check_variant(variant)
    reorder = check_option(reorder, REORDERS, "reorder")
    schedule = check_option(schedule, SCHEDULES, "schedule")
    objective = check_option(objective, cost.OBJECTIVES, "objective")
    backward = check_option(backward, BACKWARDS, "backward")
    workload = workload or cost.Workload()
    if block == AUTO:
        plan = _compile_auto(source, cost.resolve_profile(profile), variant, reorder, workload, objective, progress, backward)
    else:
        plan = _compile_fixed(source, block, variant, reorder, progress, backward)
    if schedule == "lpt":
        plan.arrays.update(launch_orders(plan))
    return plan


def _compile_fixed(source: MaskSource, block: tuple[int, int], variant: str, reorder: str, progress: Progress | None,
                   backward: str = "auto") -> Plan:
    """Compile as told: no cost model (``reorder="auto"`` is no reordering; ``backward="auto"``
    is the tile backward)."""
    if reorder == "rcm":
        plan = _compile_reordered(source, block, variant, progress)
    elif variant in DENSE_VARIANTS:
        plan = _compile_dense(source, block, variant, progress)
    else:
        plan = _compile_tiles(source, block, variant, progress)
    if backward == "pieces":
        plan.arrays["pieces"] = _pieces_of(source, plan)
    return plan


def _pieces_of(source: MaskSource, plan: Plan) -> np.ndarray:
    """The dense pieces of a one-slice tile plan's mask in token order, or a MaskError saying why not."""
    if plan.variant in DENSE_VARIANTS or plan.reordered or plan.slices != 1:
        kind = plan.variant if plan.variant in DENSE_VARIANTS else "reordered" if plan.reordered else f"{plan.slices}-slice"
        raise MaskError(f"{source.name}: a {kind} plan cannot run its backward through dense pieces; compile it with backward 'tiles' or 'auto'")
    vectors = structured_intervals(source)
    if vectors is None:
        vectors, _ = detect_intervals(source)
    pieces = find_pieces(vectors, source.q_len) if vectors is not None else None
    if pieces is None:
        raise MaskError(f"{source.name} does not split into at most {MAX_PIECES} dense pieces; compile it with backward 'tiles' or 'auto'")
    return pieces


def _compile_tiles(source: MaskSource, block: tuple[int, int], variant: str, progress: Progress | None) -> Plan:
    """A block-sparse or interval plan at a fixed tile size; ``"auto"`` is :func:`auto_variant`."""
    bm, bn = block
    if variant == "block_sparse":
        return _block_sparse(source, structured_intervals(source), bm, bn, progress)
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


def _compile_dense(source: MaskSource, block: tuple[int, int], variant: str, progress: Progress | None) -> Plan:
    """A dense plan, after checking the mask is exactly all-true or causal."""
    vectors = structured_intervals(source)
    if vectors is None:
        vectors = _read_rows(source, 1024, progress, None, track=True).intervals
    elif progress is not None:
        progress(1, 1)
    problem = _dense_mismatch(source, vectors, variant)
    if problem:
        raise MaskError(problem)
    return _dense_plan(source.shape, variant, block)


def _dense_mismatch(source: MaskSource, vectors: np.ndarray | None, variant: str) -> str | None:
    """Why the mask (with canonical ``vectors``, None if it does not fit) is not ``variant``, or None."""
    what = "all-true" if variant == "dense" else "exactly causal"
    if variant == "dense_causal" and source.q_len != source.kv_len:
        return f"{source.name} is {source.q_len}x{source.kv_len}: a dense_causal plan needs a square mask"
    expected = dense_intervals(variant, source.batch * source.heads, source.q_len, source.kv_len)
    if vectors is None or not np.array_equal(vectors, expected):
        return f"{source.name} is not {what}; compile it with variant 'auto', 'block_sparse' or 'intervals'"
    return None


def _dense_plan(shape: tuple[int, int, int, int], variant: str, block: tuple[int, int]) -> Plan:
    B, H, nq, nk = shape
    bm, bn = block
    if -(-nq // bm) * -(-nk // bn) > MAX_TILES_PER_SLICE:
        raise MaskError(f"{nq}x{nk} in {bm}x{bn} tiles is more than a dense plan may have ({MAX_TILES_PER_SLICE} tiles per slice); use larger tiles")
    vectors = dense_intervals(variant, B * H, nq, nk)
    return _interval_plan(shape, vectors, tile_lists(vectors, nq, bm, bn), bm, bn, variant=variant)


def _compile_reordered(source: MaskSource, block: tuple[int, int], variant: str, progress: Progress | None) -> Plan:
    """A block-sparse plan of the RCM-renumbered mask, unconditionally."""
    from maskc.reorder import PatternBuilder

    _check_reorderable(source, variant)
    stages = _Stages(progress, 2)
    counter = _TileCounter(source.shape, [block])
    pattern = PatternBuilder(source.shape)
    scan = _read_rows(source, block[0], stages.stage(0), None, track=False, sinks=[counter, pattern])
    reordering = _Reordering.of(source, pattern.patterns())
    plan = reordering.build(block, stages.stage(1), scan.bits_sha256, counter.classes[block])
    stages.finish()
    return plan


def _check_reorderable(source: MaskSource, variant: str) -> None:
    if source.q_len != source.kv_len:
        raise MaskError(f"{source.name} is {source.q_len}x{source.kv_len}: only self-attention masks (q_len == kv_len) can be reordered")
    if variant not in ("auto", "block_sparse"):
        raise MaskError(f"a reordered plan is block-sparse; variant {variant!r} cannot be reordered")


@dataclass
class _Reordering:
    """An RCM permutation of a mask and the permuted mask as a source."""

    perm: np.ndarray
    source: MaskSource
    bandwidth_before: int
    bandwidth_after: int

    @classmethod
    def of(cls, original: MaskSource, patterns: list) -> "_Reordering":
        from maskc.reorder import PermutedSource, bandwidth, rcm_permutation

        perm = rcm_permutation(patterns)
        permuted = PermutedSource(patterns, perm, original.shape, original.name)
        return cls(perm, permuted, bandwidth(patterns), bandwidth(patterns, perm))

    def build(self, block: tuple[int, int], progress: Progress | None, bits_sha256: str, before: np.ndarray) -> Plan:
        """The block-sparse plan of the permuted mask, named by the original mask's bit hash, with a
        record of the tiles and bandwidth before and after."""
        bm, bn = block
        plan = _read_rows(self.source, bm, progress, _BitmapPlan(self.source.shape, bm, bn), track=False).plan
        plan.arrays["perm"] = self.perm
        plan.mask_sha256 = bits_sha256
        after = plan.tile_counts()
        plan.options["reorder"] = {
            "method": "rcm",
            "tiles_before": {"full": int((before == 1).sum()), "partial": int((before == 2).sum())},
            "tiles_after": {"full": after["tiles_full"], "partial": after["tiles_partial"]},
            "bandwidth_before": self.bandwidth_before,
            "bandwidth_after": self.bandwidth_after,
        }
        return plan


# --- the cost model's path ----------------------------------------------------------------------


def _compile_auto(
    source: MaskSource, profile: cost.Profile | None, variant: str, reorder: str, workload: cost.Workload, objective: str,
    progress: Progress | None, backward: str = "auto",
) -> Plan:
    """``block="auto"``: the fastest predicted candidate, or the fixed rules without a usable profile."""
    if profile is None:
        plan = _compile_fixed(source, FALLBACK_BLOCK, variant, "rcm" if reorder == "rcm" else "none", progress, backward)
        note = (f"no cost-model profile (set {cost.ENV_PROFILE} or pass a profile; 'maskc calibrate' measures one): "
                f"{FALLBACK_BLOCK[0]}x{FALLBACK_BLOCK[1]} tiles and the fixed variant rule")
        plan.predictions = cost.record(None, workload, objective, {}, None, note)
        return plan
    stages = _Stages(progress, 3)
    analysis = _Analysis.of(source, variant, reorder, stages, backward)
    choice = cost.rank(profile, analysis.candidates, workload, objective)
    if choice.chosen is None:
        plan = _compile_fixed(source, FALLBACK_BLOCK, variant, "rcm" if reorder == "rcm" else "none", stages.stage(2), backward)
        note = f"no candidate could be predicted with profile {profile.name!r} for {workload.describe()}: {FALLBACK_BLOCK[0]}x{FALLBACK_BLOCK[1]} tiles and the fixed variant rule"
    else:
        plan = analysis.build(choice.chosen, stages.stage(2))
        note = None
    stages.finish()
    plan.predictions = cost.record(profile, workload, objective, analysis.candidates, choice, note)
    return plan


@dataclass
class _Analysis:
    """One read of a mask for the cost model: its form, its tiles at every candidate tile size, and
    (when tried) its RCM reordering's tiles; then the candidates those allow."""

    source: MaskSource
    vectors: np.ndarray | None
    pairs: int
    bits_sha256: str | None
    classes: dict[tuple[int, int], np.ndarray]
    reordering: _Reordering | None = None
    reordered_classes: dict[tuple[int, int], np.ndarray] | None = None
    pieces: np.ndarray | None = None  # the mask's dense pieces, when it has few enough
    candidates: dict[cost.Candidate, cost.Work] = None  # type: ignore[assignment]

    @classmethod
    def of(cls, source: MaskSource, variant: str, reorder: str, stages: "_Stages", backward: str = "auto") -> "_Analysis":
        from maskc.reorder import PatternBuilder

        shape = source.shape
        blocks = [b for b in AUTO_BLOCKS if -(-source.q_len // b[0]) * -(-source.kv_len // b[1]) <= MAX_TILES_PER_SLICE]
        if not blocks:
            raise MaskError(f"{source.name}: {source.q_len}x{source.kv_len} has too many tiles per slice at every candidate tile size")
        if reorder == "rcm":
            _check_reorderable(source, variant)
        vectors = structured_intervals(source) if reorder != "rcm" else None  # RCM needs the rows
        pattern = None
        if vectors is not None:
            classes = {b: np.stack([tile_classes(iv, source.q_len, *b) for iv in vectors]) for b in blocks}
            pairs = int(np.prod(shape, dtype=np.int64)) - masked_pairs(vectors)
            bits_sha256 = None
        else:
            counter = _TileCounter(shape, blocks)
            try_rcm = reorder != "none" and source.q_len == source.kv_len and variant in ("auto", "block_sparse")
            pattern = PatternBuilder(shape) if try_rcm else None
            sinks = [counter] + ([pattern] if pattern is not None else [])
            scan = _read_rows(source, max(b[0] for b in blocks), stages.stage(0), None, track=True, sinks=sinks)
            vectors, classes, pairs, bits_sha256 = scan.intervals, counter.classes, scan.visible, scan.bits_sha256
        if variant == "intervals" and vectors is None:
            raise MaskError(f"{source.name} does not fit the interval form; compile it with variant 'block_sparse' or 'auto'")
        if variant in DENSE_VARIANTS:
            problem = _dense_mismatch(source, vectors, variant)
            if problem:
                raise MaskError(problem)
        analysis = cls(source, vectors, pairs, bits_sha256, classes)
        if backward != "tiles" and vectors is not None and reorder != "rcm":
            analysis.pieces = find_pieces(vectors, source.q_len)
        if backward == "pieces" and analysis.pieces is None:
            raise MaskError(f"{source.name} does not split into at most {MAX_PIECES} dense pieces in token order; compile it with backward 'tiles' or 'auto'")
        # Reordering is tried on masks that do not fit the interval form (those that do keep every
        # key column's masked rows in at most two runs: already contiguous), or always with "rcm".
        if pattern is not None and (reorder == "rcm" or vectors is None):
            if pattern.overflow:
                if reorder == "rcm":
                    pattern.patterns()  # raises: too dense to reorder
            else:
                analysis.reordering = _Reordering.of(source, pattern.patterns())
                counter = _TileCounter(shape, blocks)
                _read_rows(analysis.reordering.source, max(b[0] for b in blocks), stages.stage(1), None, track=False, sinks=[counter])
                analysis.reordered_classes = counter.classes
        analysis.candidates = analysis._candidates(variant, reorder, backward)
        return analysis

    def _candidates(self, variant: str, reorder: str, backward: str) -> dict[cost.Candidate, cost.Work]:
        tiles = self._tile_candidates(variant, reorder)
        twins: dict[cost.Candidate, cost.Work] = {}
        # each tile candidate again with its backward through the pieces; not where a dense plan
        # runs the mask whole (one piece, both passes in SDPA) unless asked for
        dense = any(c.variant in DENSE_VARIANTS for c in tiles)
        if self.pieces is not None and (backward == "pieces" or not dense):
            pieces = cost.pieces_work(self.pieces)
            twins = {replace(c, pieces=True): replace(w, pieces=pieces) for c, w in tiles.items() if c.kernel is not None and not c.reordered}
        return twins if backward == "pieces" else {**tiles, **twins}

    def _tile_candidates(self, variant: str, reorder: str) -> dict[cost.Candidate, cost.Work]:
        source = self.source
        shape = source.shape
        allowed = (lambda v: variant in (AUTO, v))
        out: dict[cost.Candidate, cost.Work] = {}
        if reorder != "rcm":
            if self.vectors is not None:
                for dense in DENSE_VARIANTS:
                    if allowed(dense) and _dense_mismatch(source, self.vectors, dense) is None:
                        out[cost.Candidate(dense, FALLBACK_BLOCK)] = cost.Work(source.q_len, source.kv_len, source.batch, source.heads, self.pairs)
            for block, classes in self.classes.items():
                work = cost.Work.from_classes(list(classes), shape, self.pairs)
                if allowed("block_sparse"):
                    out[cost.Candidate("block_sparse", block)] = work
                if allowed("intervals") and self.vectors is not None:
                    out[cost.Candidate("intervals", block)] = work
        if self.reordered_classes is not None:
            for block, classes in self.reordered_classes.items():
                out[cost.Candidate("block_sparse", block, True)] = cost.Work.from_classes(list(classes), shape, self.pairs)
        return out

    def build(self, chosen: cost.Candidate, progress: Progress | None) -> Plan:
        plan = self._build_tiles(chosen, progress)
        if chosen.pieces:
            plan.arrays["pieces"] = self.pieces
        return plan

    def _build_tiles(self, chosen: cost.Candidate, progress: Progress | None) -> Plan:
        bm, bn = chosen.block
        if chosen.variant in DENSE_VARIANTS:
            return _dense_plan(self.source.shape, chosen.variant, chosen.block)
        if chosen.variant == "intervals":
            return _interval_plan(self.source.shape, self.vectors, tile_lists(self.vectors, self.source.q_len, bm, bn), bm, bn)
        if chosen.reordered:
            return self.reordering.build(chosen.block, progress, self.bits_sha256, self.classes[chosen.block])
        return _block_sparse(self.source, self.vectors if self.bits_sha256 is None else None, bm, bn, progress)


def _block_sparse(source: MaskSource, vectors: np.ndarray | None, bm: int, bn: int, progress: Progress | None) -> Plan:
    """The block-sparse plan of a source: from its rows, or — for a structured source (``vectors``
    known without reading it) of ``AUTO_PAIRS`` pairs or more — from its interval vectors, in time
    and memory proportional to the partial tiles instead of ``N × N``."""
    if vectors is None or int(np.prod(source.shape, dtype=np.int64)) < AUTO_PAIRS:
        return _read_rows(source, bm, progress, _BitmapPlan(source.shape, bm, bn), track=False).plan
    if progress is not None:
        progress(1, 1)
    return bitmap_plan(_interval_plan(source.shape, vectors, tile_lists(vectors, source.q_len, bm, bn), bm, bn))


def bitmap_plan(plan: Plan, chunk: int = 512) -> Plan:
    """The block-sparse plan of an interval plan's mask: the same lists, each partial tile's bits
    rebuilt from the interval vectors (``chunk`` tiles at a time), identical bitmaps stored once and
    numbered in row-list order as a plan built from rows numbers them. The plan keeps the interval
    hash of the mask (``hash_of="intervals"``)."""
    a, bm, bn, nq, nk = plan.arrays, plan.block_m, plan.block_n, plan.q_len, plan.kv_len
    partial = np.flatnonzero(a["row_tile"] == INTERVAL_TILE)
    row_id = np.repeat(np.arange(plan.slices * plan.tiles_m), np.diff(a["row_ptr"].astype(np.int64)))[partial]
    s, m = np.divmod(row_id, plan.tiles_m)
    n = a["row_col"][partial].astype(np.int64)
    # key columns past kv_len are masked on every row; rows past q_len are cleared below
    iv = np.zeros((plan.slices, 4, plan.tiles_n * bn), dtype=np.int64)
    iv[:, LTS, :], iv[:, LTE, :], iv[:, UTS, :], iv[:, UTE, :] = nq, nq, 0, nq
    iv[:, :, :nk] = a["intervals"]
    packed = np.empty((partial.size, bm, bn // 32), dtype="<u4")
    for lo in range(0, partial.size, chunk):
        hi = min(lo + chunk, partial.size)
        cols = n[lo:hi, None] * bn + np.arange(bn)  # [tiles, bn]
        bounds = iv[s[lo:hi, None], :, cols]  # [tiles, bn, 4]
        rows = (m[lo:hi, None] * bm + np.arange(bm))[:, :, None]  # [tiles, bm, 1]
        masked = ((bounds[:, None, :, LTS] <= rows) & (rows < bounds[:, None, :, LTE])) | (
            (bounds[:, None, :, UTS] <= rows) & (rows < bounds[:, None, :, UTE]))
        visible = ~masked & (rows < nq)
        packed[lo:hi] = np.packbits(visible, axis=-1, bitorder="little").view("<u4")
    if partial.size == 0:  # no partial tile: nothing to number
        return _with_bitmaps(plan, a["row_tile"], a["col_tile"], packed)
    flat = packed.reshape(partial.size, -1)
    _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)  # number by first appearance
    tile_id = rank[inverse.ravel()]
    row_tile = a["row_tile"].astype(np.int64)
    row_tile[partial] = tile_id
    # the column lists' partial entries: the same tiles, found by (slice, row, column)
    key = (s * plan.tiles_m + m) * plan.tiles_n + n
    col_partial = np.flatnonzero(a["col_tile"] == INTERVAL_TILE)
    col_id = np.repeat(np.arange(plan.slices * plan.tiles_n), np.diff(a["col_ptr"].astype(np.int64)))[col_partial]
    cs, cn = np.divmod(col_id, plan.tiles_n)
    col_key = (cs * plan.tiles_m + a["col_row"][col_partial].astype(np.int64)) * plan.tiles_n + cn
    by_key = np.argsort(key)
    col_tile = a["col_tile"].astype(np.int64)
    col_tile[col_partial] = tile_id[by_key[np.searchsorted(key, col_key, sorter=by_key)]]
    return _with_bitmaps(plan, row_tile, col_tile, packed[np.sort(first)])


def _with_bitmaps(plan: Plan, row_tile: np.ndarray, col_tile: np.ndarray, bitmaps: np.ndarray) -> Plan:
    """An interval plan's lists with these tile ids and bitmaps, as a block-sparse plan."""
    i32 = lambda x: np.ascontiguousarray(x, dtype="<i4")  # noqa: E731
    arrays = {**plan.arrays, "row_tile": i32(row_tile), "col_tile": i32(col_tile), "bitmaps": np.ascontiguousarray(bitmaps, dtype="<u4"),
              "intervals": np.zeros((0, 4, plan.kv_len), dtype="<i4")}
    return Plan(plan.q_len, plan.kv_len, plan.batch, plan.heads, plan.block_m, plan.block_n, plan.visible_pairs, plan.mask_sha256, arrays,
                variant="block_sparse", hash_of=plan.hash_of, options=dict(plan.options))


class _TileCounter:
    """Tile classes of every slice at several tile sizes (0 empty, 1 full, 2 partial), from rows fed
    in blocks that start on a tile row of every size."""

    def __init__(self, shape: tuple[int, int, int, int], blocks: list[tuple[int, int]]):
        B, H, self.q_len, self.kv_len = shape
        self.classes = {b: np.zeros((B * H, -(-self.q_len // b[0]), -(-self.kv_len // b[1])), dtype=np.int8) for b in blocks}

    def add(self, s: int, start: int, rows: np.ndarray) -> None:
        height = rows.shape[0]
        for (bm, bn), out in self.classes.items():
            first, count, tiles_n = start // bm, -(-height // bm), out.shape[2]
            padded = np.zeros((count * bm, tiles_n * bn), dtype=bool)
            padded[:height, : self.kv_len] = rows
            visible = padded.reshape(count, bm, tiles_n, bn).sum(axis=(1, 3), dtype=np.int64)
            heights = np.minimum(bm, self.q_len - (first + np.arange(count)) * bm)
            widths = np.minimum(bn, self.kv_len - np.arange(tiles_n) * bn)
            out[s, first : first + count] = np.where(visible == 0, 0, np.where(visible == heights[:, None] * widths[None, :], 1, 2))


class _Stages:
    """One progress bar over several passes: pass ``k`` of ``n`` reports into its own ``1/n`` of it."""

    SCALE = 1000

    def __init__(self, progress: Progress | None, n: int):
        self.progress, self.n = progress, n

    def stage(self, k: int) -> Progress | None:
        if self.progress is None:
            return None
        return lambda done, total: self.progress(k * self.SCALE + self.SCALE * done // max(total, 1), self.n * self.SCALE)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(self.n * self.SCALE, self.n * self.SCALE)


def launch_orders(plan: Plan) -> dict[str, np.ndarray]:
    """``row_order`` and ``col_order`` by longest processing time first: per slice, the tile rows
    (columns) by descending visited tiles, then descending partial tiles, then ascending index.

    Only for lists that are unbalanced or share most of their tiles
    (:func:`maskc.runtime.launch.list_traits`): there the heaviest lists must start first, and the
    rows read the same keys in any order. Other lists keep their natural order, whose neighbouring
    rows read neighbouring keys: on an H100, packed documents at N = 131072 ran 1.45 ms forward in
    natural order against 2.00 ms heaviest-first (benchmarks/NOTES.md). An order that is ascending in
    every slice is left out (shape ``[0]``), as is any order of a dense plan."""
    empty = np.zeros(0, dtype="<i4")
    if plan.variant in DENSE_VARIANTS:
        return {"row_order": empty, "col_order": empty}
    out = {}
    for name, prefix, n, other in (("row_order", "row", plan.tiles_m, plan.tiles_n), ("col_order", "col", plan.tiles_n, plan.tiles_m)):
        if not any(list_traits(plan.arrays[f"{prefix}_ptr"], other)):
            out[name] = empty
            continue
        visited = np.diff(plan.arrays[f"{prefix}_ptr"].astype(np.int64)).reshape(plan.slices, n)
        partial = visited - plan.arrays[f"{prefix}_full"].astype(np.int64).reshape(plan.slices, n)
        index = np.broadcast_to(np.arange(n), visited.shape)
        order = np.lexsort((index, -partial, -visited), axis=-1)
        out[name] = empty if np.array_equal(order, index) else np.ascontiguousarray(order.ravel(), dtype="<i4")
    return out


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


def _interval_plan(
    shape: tuple[int, int, int, int], vectors: np.ndarray, lists: dict[str, np.ndarray], bm: int, bn: int, variant: str = "intervals"
) -> Plan:
    """A plan described by its interval vectors: an interval plan, or a dense one (which stores none)."""
    B, H, nq, nk = shape
    arrays = dict(lists)
    arrays["bitmaps"] = np.zeros((0, bm, bn // 32), dtype="<u4")
    stored = vectors if variant == "intervals" else np.zeros((0, 4, nk))
    arrays["intervals"] = np.ascontiguousarray(stored, dtype="<i4")
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
        variant=variant,
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
    visible: int = 0  # visible pairs, when the pass read every row


def _read_rows(
    source: MaskSource, step: int, progress: Progress | None, builder: _BitmapPlan | None, track: bool, sinks: tuple | list = ()
) -> _Scan:
    """Read the mask once, ``step`` query rows at a time (``builder.bm`` when building bitmaps):
    hash its bits, feed each tile row to ``builder`` and each block to every sink (``add(s, start,
    rows)``), and with ``track`` detect its interval form. Without a builder or sinks, the pass
    stops as soon as the mask is known not to fit."""
    B, H, nq, nk = source.shape
    steps_per_slice = -(-nq // step)
    hasher = _mask_hasher(source.shape)
    found: list[np.ndarray] = []
    failure = None
    visible = 0
    stop_early = builder is None and not sinks
    for s in range(B * H):
        b, h = divmod(s, H)
        tracker = RunTracker(nq, nk) if track and failure is None else None
        for i, start in enumerate(range(0, nq, step)):
            stop = min(start + step, nq)
            rows = source.rows(b, h, start, stop)
            if rows.shape != (stop - start, nk):
                raise MaskError(f"{source.name}: rows {start}:{stop} came back with shape {list(rows.shape)}, expected {[stop - start, nk]}")
            hasher.update(np.packbits(rows, axis=-1, bitorder="little").tobytes())
            visible += int(np.count_nonzero(rows))
            if tracker is not None and not tracker.update(rows):
                failure, tracker = f"slice {s}: {tracker.failure}", None
                if stop_early:
                    return _Scan(failure=failure)
            if builder is not None:
                builder.add(s, i, rows)
            for sink in sinks:
                sink.add(s, start, rows)
            if progress is not None:
                progress(s * steps_per_slice + i + 1, B * H * steps_per_slice)
        if tracker is not None:
            vectors = tracker.finish()
            if vectors is None:
                failure = f"slice {s}: {tracker.failure}"
                if stop_early:
                    return _Scan(failure=failure)
            found.append(vectors)
    scan = _Scan(bits_sha256=hasher.hexdigest(), failure=failure, visible=visible)
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
