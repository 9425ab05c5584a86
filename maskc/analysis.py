"""The analysis: one read of a mask, and all that the compiler's choice and build need of it.

:func:`analyse` reads a mask at most once (a structured source, whose interval vectors come from its
parameters, not at all): its interval form, its visible pairs, the hash of its bits, its tile
classes at every candidate tile size, its dense pieces, and — when reordering is tried — its RCM
permutation and the tiles the permuted mask occupies. Without the cost model (an explicit tile
size, or no profile) the same read builds the block-sparse tiles the fixed rules may choose; with
it, the analysis ends with the candidates the model compares and the work each takes. Options
alone decide some refusals, and those come before any read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from maskc.bitmaps import BitmapBuilder
from maskc.errors import MaskError
from maskc.intervals import intervals_sha256
from maskc.options import AUTO, AUTO_BLOCKS, FALLBACK_BLOCK, CompileOptions
from maskc.pieces import MAX_PIECES, find_pieces
from maskc.runtime.format import DENSE_VARIANTS, MAX_DERIVED_TILES, dense_intervals, masked_pairs, tile_classes, tile_lists
from maskc.scan import Stages, TileCounter, read_rows, structured_intervals
from maskc.sources import MaskSource
from maskc.work import Candidate, Work, pieces_work

if TYPE_CHECKING:
    from maskc.reorder import Reordering

Block = tuple[int, int]


@dataclass(frozen=True)
class Analysis:
    """What one read of a mask found, under the options it was read for."""

    source: MaskSource
    options: CompileOptions
    vectors: np.ndarray | None  # the canonical interval vectors, when the mask fits the form
    failure: str | None  # why it does not fit, when its rows were read
    pairs: int  # visible pairs over all slices
    bits_sha256: str | None  # the hash of its bits, when its rows were read whole
    classes: dict[Block, np.ndarray] = field(default_factory=dict)  # tile classes per tile size analysed
    bitmaps: tuple[Block, dict[str, np.ndarray]] | None = None  # block-sparse arrays built during the read
    reordering: Reordering | None = None  # when reordering was tried and possible
    reordered_classes: dict[Block, np.ndarray] | None = None
    pieces: np.ndarray | None = None  # the dense pieces, when looked for and at most MAX_PIECES
    candidates: dict[Candidate, Work] = field(default_factory=dict)  # what the cost model compares
    _lists: dict[Block, dict[str, np.ndarray]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.source.shape

    def lists(self, block: Block) -> dict[str, np.ndarray]:
        """The tile lists the interval vectors make at ``block`` (computed once per tile size)."""
        if block not in self._lists:
            self._lists[block] = tile_lists(self.vectors, self.source.q_len, *block)
        return self._lists[block]

    def intervals_sha256(self) -> str:
        return intervals_sha256(self.shape, self.vectors)

    def mask_hash(self) -> tuple[str, str]:
        """``(hash, hash_of)``: the interval hash when the analysis has the mask's interval vectors (the
        same from a spec and from a dense file), else the hash of its bits."""
        return (self.intervals_sha256(), "intervals") if self.vectors is not None else (self.bits_sha256, "bits")


def analyse(source: MaskSource, options: CompileOptions, stages: Stages) -> Analysis:
    """Read ``source`` for ``options``: for the cost model's candidates when it decides, else for
    the fixed rules at :attr:`CompileOptions.fixed_block`. ``stages`` reports the reads."""
    return _for_model(source, options, stages) if options.modelled else _for_fixed_rules(source, options, stages)


def tiles_per_slice(source: MaskSource, block: Block) -> int:
    return -(-source.q_len // block[0]) * -(-source.kv_len // block[1])


def lists_derivable(source: MaskSource, block: Block) -> bool:
    """Whether an interval or dense plan of the mask at ``block`` is within the tiles a reader may
    derive lists for (:data:`maskc.runtime.format.MAX_DERIVED_TILES`, over all slices)."""
    return source.batch * source.heads * tiles_per_slice(source, block) <= MAX_DERIVED_TILES


def derivable_error(source: MaskSource, block: Block, variant: str) -> MaskError:
    tiles = source.batch * source.heads * tiles_per_slice(source, block)
    return MaskError(f"{source.name}: {variant} plans may have at most {MAX_DERIVED_TILES} tiles over all their slices (their lists are "
                     f"derived on load); {tiles} tiles of {block[0]}x{block[1]} is more: use larger tiles")


def check_reorderable(source: MaskSource, variant: str) -> None:
    if source.q_len != source.kv_len:
        raise MaskError(f"{source.name} is {source.q_len}x{source.kv_len}: only self-attention masks (q_len == kv_len) can be reordered")
    if variant not in ("auto", "block_sparse"):
        raise MaskError(f"a reordered plan is block-sparse; variant {variant!r} cannot be reordered")


def dense_mismatch(source: MaskSource, vectors: np.ndarray | None, variant: str) -> str | None:
    """Why the mask (with canonical ``vectors``, None if it does not fit) is not ``variant``, or None."""
    what = "all-true" if variant == "dense" else "exactly causal"
    if variant == "dense_causal" and source.q_len != source.kv_len:
        return f"{source.name} is {source.q_len}x{source.kv_len}: a dense_causal plan needs a square mask"
    expected = dense_intervals(variant, source.batch * source.heads, source.q_len, source.kv_len)
    if vectors is None or not np.array_equal(vectors, expected):
        return f"{source.name} is not {what}; compile it with variant 'auto', 'block_sparse' or 'intervals'"
    return None


def _structured(source: MaskSource, options: CompileOptions, vectors: np.ndarray, classes: dict[Block, np.ndarray]) -> Analysis:
    pairs = int(np.prod(source.shape, dtype=np.int64)) - masked_pairs(vectors)
    return Analysis(source, options, vectors, None, pairs, None, classes)


def _for_fixed_rules(source: MaskSource, options: CompileOptions, stages: Stages) -> Analysis:
    """The read the fixed rules need: the interval form (structured sources: no read), and from
    the rows the block-sparse tiles they may choose, or the reordering when it is asked for."""
    block, variant = options.fixed_block, options.variant
    rcm = options.reorder == "rcm"
    if rcm:
        check_reorderable(source, variant)
    elif variant == "intervals" and not lists_derivable(source, block):
        raise derivable_error(source, block, "intervals")
    vectors = None if rcm else structured_intervals(source)  # RCM needs the rows
    if vectors is not None:
        analysis = _structured(source, options, vectors, {})
    else:
        sinks: list = []
        if rcm:
            from maskc.reorder import PatternBuilder

            counter, pattern = TileCounter(source.shape, [block]), PatternBuilder(source.shape)
            sinks = [counter, pattern]
        elif variant in ("auto", "block_sparse"):
            builder = BitmapBuilder(source.shape, *block)
            sinks = [builder]
        # the interval form is looked for only where it can change the plan (following every column
        # of a mask that fits costs several times the read itself)
        track = not rcm and (variant != "block_sparse" or options.backward == "pieces")
        scan = read_rows(source, block[0], stages.stage(0), sinks, track=track)
        analysis = Analysis(source, options, scan.intervals, scan.failure, scan.visible, scan.bits_sha256)
        if rcm:
            from maskc.reorder import Reordering

            analysis = replace(analysis, classes=counter.classes, reordering=Reordering.of(source, pattern.patterns()))
        elif sinks:
            analysis = replace(analysis, bitmaps=(block, builder.arrays()))
    if options.backward == "pieces" and analysis.vectors is not None:
        analysis = replace(analysis, pieces=find_pieces(analysis.vectors, source.q_len))
    return analysis


def _for_model(source: MaskSource, options: CompileOptions, stages: Stages) -> Analysis:
    """The read the cost model needs: the tiles of every candidate tile size, the form, the pieces,
    and — for a mask scattered by its token order — its RCM reordering's tiles."""
    variant, reorder, backward = options.variant, options.reorder, options.backward
    blocks = [b for b in AUTO_BLOCKS if tiles_per_slice(source, b) <= MAX_DERIVED_TILES]
    if not blocks:
        raise MaskError(f"{source.name}: {source.q_len}x{source.kv_len} has too many tiles per slice at every candidate tile size")
    if reorder == "rcm":
        check_reorderable(source, variant)
    vectors = structured_intervals(source) if reorder != "rcm" else None  # RCM needs the rows
    pattern = None
    step = max(b[0] for b in blocks)
    if vectors is not None:
        analysis = _structured(source, options, vectors, {b: np.stack([tile_classes(iv, source.q_len, *b) for iv in vectors]) for b in blocks})
    else:
        from maskc.reorder import PatternBuilder

        counter = TileCounter(source.shape, blocks)
        try_rcm = reorder != "none" and source.q_len == source.kv_len and variant in ("auto", "block_sparse")
        pattern = PatternBuilder(source.shape) if try_rcm else None
        scan = read_rows(source, step, stages.stage(0), [counter] + ([pattern] if pattern is not None else []))
        analysis = Analysis(source, options, scan.intervals, scan.failure, scan.visible, scan.bits_sha256, counter.classes)
    vectors = analysis.vectors
    if variant == "intervals" and vectors is None:
        raise MaskError(f"{source.name} does not fit the interval form; compile it with variant 'block_sparse' or 'auto'")
    if variant in DENSE_VARIANTS:
        problem = dense_mismatch(source, vectors, variant)
        if problem:
            raise MaskError(problem)
    if backward != "tiles" and vectors is not None and reorder != "rcm":
        analysis = replace(analysis, pieces=find_pieces(vectors, source.q_len))
    if backward == "pieces" and analysis.pieces is None:
        raise MaskError(f"{source.name} does not split into at most {MAX_PIECES} dense pieces in token order; "
                        "compile it with backward 'tiles' or 'auto'")
    # Reordering is tried on masks that do not fit the interval form (those that do keep every
    # key column's masked rows in at most two runs: already contiguous), or always with "rcm".
    if pattern is not None and (reorder == "rcm" or vectors is None):
        if pattern.overflow:
            if reorder == "rcm":
                pattern.patterns()  # raises: too dense to reorder
        else:
            from maskc.reorder import Reordering

            reordering = Reordering.of(source, pattern.patterns())
            counter = TileCounter(source.shape, blocks)
            read_rows(reordering.source, step, stages.stage(1), [counter], track=False)
            analysis = replace(analysis, reordering=reordering, reordered_classes=counter.classes)
    return replace(analysis, candidates=_candidates(analysis))


def _candidates(analysis: Analysis) -> dict[Candidate, Work]:
    """The candidates the options allow, with their work; each tile candidate again with its
    backward through the pieces, except where a dense plan runs the mask whole (one piece, both
    passes in SDPA), unless the pieces are asked for."""
    tiles = _tile_candidates(analysis)
    backward = analysis.options.backward
    twins: dict[Candidate, Work] = {}
    dense = any(c.variant in DENSE_VARIANTS for c in tiles)
    if analysis.pieces is not None and (backward == "pieces" or not dense):
        pieces = pieces_work(analysis.pieces)
        twins = {replace(c, pieces=True): replace(w, pieces=pieces) for c, w in tiles.items() if c.kernel is not None and not c.reordered}
    return twins if backward == "pieces" else {**tiles, **twins}


def _tile_candidates(analysis: Analysis) -> dict[Candidate, Work]:
    source, variant = analysis.source, analysis.options.variant
    shape = source.shape
    allowed = (lambda v: variant in (AUTO, v))
    out: dict[Candidate, Work] = {}
    if analysis.options.reorder != "rcm":
        if analysis.vectors is not None and lists_derivable(source, FALLBACK_BLOCK):
            for dense in DENSE_VARIANTS:
                if allowed(dense) and dense_mismatch(source, analysis.vectors, dense) is None:
                    out[Candidate(dense, FALLBACK_BLOCK)] = Work(source.q_len, source.kv_len, source.batch, source.heads, analysis.pairs)
        for block, classes in analysis.classes.items():
            work = Work.from_classes(list(classes), shape, analysis.pairs)
            if allowed("block_sparse"):
                out[Candidate("block_sparse", block)] = work
            if allowed("intervals") and analysis.vectors is not None and lists_derivable(source, block):
                out[Candidate("intervals", block)] = work
    if analysis.reordered_classes is not None:
        for block, classes in analysis.reordered_classes.items():
            out[Candidate("block_sparse", block, True)] = Work.from_classes(list(classes), shape, analysis.pairs)
    return out
