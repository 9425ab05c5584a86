"""The compiler: analyse a mask, choose how it runs, build its plan.

Plan variants. A block-sparse plan stores each distinct partial tile as a bitmap; the mask is read
one tile row (``block_m`` query rows) at a time, so memory stays bounded by one row block whatever
the mask's size. An interval plan stores, per key column, the masked query rows as two intervals;
it is built from a structured source's vectors in O(kv_len + tiles), or from rows read the same way
as for bitmaps while the form is detected. A dense plan (an all-true or exactly causal mask) stores
nothing but its shape: the runtime hands it to SDPA. A block-sparse plan may also be reordered
(:mod:`maskc.reorder`): its lists describe the mask with its tokens renumbered by RCM.

Three stages, each its own module. :func:`maskc.analysis.analyse` reads the mask once for the
options (:class:`maskc.options.CompileOptions`); :func:`maskc.choice.choose` decides what to build
and what the plan records of the decision; :func:`maskc.build.build` makes the plan in one
construction (the plan cache, :mod:`maskc.cache`, wraps the same stages).

Two ways to decide. With an explicit ``block``, the compiler does what it is told (``variant="auto"``
is the fixed size rule of :func:`maskc.choice.auto_variant`; no dense dispatch, no reordering unless
``reorder="rcm"``). With ``block="auto"`` (the default) and a profile (:mod:`maskc.profile`), it
classifies the tiles of every candidate — 64×64 and 128×128 tiles, bitmaps or intervals, with or
without RCM, dense SDPA where the mask allows — predicts each one's time and builds the fastest,
recording every prediction in the plan. Without a profile, ``block="auto"`` is 128×128 with the
fixed rule, and the plan's predictions say why they are empty.

The result is deterministic: the same mask, options and profile give a byte-identical plan, from
whichever source.
"""

from __future__ import annotations

from typing import Any

from maskc.analysis import analyse
from maskc.bitmaps import bitmap_plan
from maskc.build import build
from maskc.choice import choose
from maskc.options import AUTO, CompileOptions, parse_block_option
from maskc.profile import Workload
from maskc.runtime.format import Plan
from maskc.scan import Progress, Stages, detect_intervals, fingerprint, mask_sha256, structured_intervals
from maskc.inputs import open_mask

__all__ = ["compile", "compile_with", "CompileOptions", "Progress", "bitmap_plan", "detect_intervals", "fingerprint", "mask_sha256",
           "parse_block_option", "structured_intervals"]

COMPILER_REVISION = 2
"""Bumped whenever the compiler's output for the same mask and options changes (2: launch orders
only for unbalanced or shared lists), so the plan cache never serves a plan an older compiler made."""


def compile(
    mask: Any,
    block: Any = AUTO,
    progress: Progress | None = None,
    variant: str = "auto",
    reorder: str = "auto",
    schedule: str = "lpt",
    profile: Any = None,
    workload: Workload | None = None,
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

    ``profile``: the cost model's profile — a :class:`maskc.profile.Profile`, a GPU name or JSON path,
    or ``"none"``; default ``$MASKC_PROFILE``, else the shipped H100 profile when there is one.
    ``workload`` (default ``B=1, H=16, D=128, bf16``) is the call the predictions are for, and
    ``objective`` (``"fwd_bwd"`` or ``"fwd"``) what the model minimises.

    ``backward``: ``"pieces"`` runs the backward through the mask's dense pieces with a dense
    attention kernel (:mod:`maskc.pieces`; a MaskError unless the mask, one slice, splits into at
    most 16 of them), ``"tiles"`` through the tile kernels, ``"auto"`` as the cost model predicts
    faster (only with ``block="auto"`` and a profile; tiles otherwise).

    A source that gives its intervals from its structure is compiled to an interval or dense plan
    without reading a single row; any other source is read one tile row at a time: once without
    the cost model, and with it once to classify the candidates and once more to build a
    block-sparse winner.
    """
    options = CompileOptions.of(block=block, variant=variant, reorder=reorder, schedule=schedule, backward=backward, objective=objective,
                                workload=workload, profile=profile)
    return compile_with(mask, options, progress)


def compile_with(mask: Any, options: CompileOptions, progress: Progress | None = None) -> Plan:
    """:func:`compile` with its options parsed already."""
    stages = Stages(progress, options.passes)
    analysis = analyse(open_mask(mask), options, stages)
    plan = build(analysis, choose(analysis), stages.stage(stages.n - 1))
    stages.finish()
    return plan
