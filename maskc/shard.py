"""Context parallelism: one self-attention mask sharded over the ranks of a process group, the ranks'
shares balanced by the cost model's predicted work.

A sequence too long for one GPU is split over ``ranks`` processes in whole query tiles; each holds
the queries, keys and values of the tokens it owns, fetches the key tiles its rows visit from their
owners, and runs its own plan: the mask restricted to its rows and those keys
(:class:`maskc.submask.SubMask`). The split is chosen here, offline, from one plan of the whole mask
at the shard's tile size (O(N + tiles) for a mask given by its intervals, never ``N × N``):

1. each query tile row is weighed by the cost model — the program and tile costs of the launches
   that walk it, forward and backward (:meth:`maskc.shardwork.Costs.row_weights`; the tiles it
   visits without a profile);
2. maskc's assignments (:mod:`maskc.partition`: ``contiguous`` runs, ``lpt``) are assessed with the
   cost model's full prediction of every rank's plan (critical path and per-list costs included)
   and the bytes of keys and values each rank receives (:func:`maskc.shardwork.assess`);
3. ``strategy="auto"`` takes the one whose busiest rank is predicted fastest, and among those
   within :data:`BALANCE_SLACK` of it, the one whose busiest receiver moves the fewest bytes;
4. the baselines in use today (``head_tail``, ``ptrr``) are assessed the same way, for comparison;
5. each rank's plan is compiled from its view of the mask.

The result is a :class:`~maskc.runtime.format.shards.ShardMap` whose ``report`` holds every rank's
predicted work and bytes and the comparison, and the per-rank plans; :meth:`Sharding.save` writes
them as a directory that ``maskc.runtime.distributed.load_shard`` reads on every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

import maskc
from maskc import cost, partition
from maskc.errors import MaskError
from maskc.runtime.format import TILE_SIZES, Plan
from maskc.runtime.format.shards import ShardMap, plan_path
from maskc.shardwork import Assessment, Costs, TileRows, assess, tile_kernel
from maskc.sources import MaskSource
from maskc.submask import PlanMask, SubMask

STRATEGIES = ("auto", "contiguous", "lpt", "head_tail", "ptrr")
OWN_STRATEGIES = ("contiguous", "lpt")  # what "auto" compares; contiguous wins ties (its ranks need fewer keys)
BASELINES = ("head_tail", "ptrr")
BALANCE_SLACK = 0.01
"""Assignments whose busiest rank is predicted at most this much slower than the best one's count as
balanced alike, and the fewest bytes decide among them. A policy, not a measurement: the cost model
has no constants for moving keys and values between GPUs."""

DEFAULT_BLOCK = 128

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Sharding:
    """A sharded mask: the shard map (with its report) and one plan per rank (none when not asked for)."""

    map: ShardMap
    plans: tuple[Plan, ...]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write every rank's plan and then the manifest into ``directory`` (created if missing),
        each file atomically; returns the manifest's path."""
        if len(self.plans) != self.map.ranks:
            raise MaskError(f"a sharding without its {self.map.ranks} plans cannot be saved; shard with plans=True")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for r, plan in enumerate(self.plans):
            plan.save(plan_path(directory, r))
        return self.map.save(directory)


def shard(
    mask: Any,
    ranks: int,
    block: int = DEFAULT_BLOCK,
    strategy: str = "auto",
    profile: Any = None,
    workload: cost.Workload | None = None,
    objective: str = "fwd_bwd",
    plans: bool = True,
    progress: Progress | None = None,
) -> Sharding:
    """Shard a self-attention mask (anything :func:`maskc.open_mask` takes, or a Plan) over ``ranks``.

    ``block``: the tile side (32, 64 or 128) of the ownership unit and of the ranks' plans.
    ``strategy``: ``"auto"`` (see the module docstring), ``"contiguous"``, ``"lpt"``, or a
    baseline, ``"head_tail"`` or ``"ptrr"``. ``profile``, ``workload`` and ``objective`` are the
    cost model's, as for :func:`maskc.compile` (``"none"``: weigh by tiles visited). ``plans=False``
    chooses and reports without compiling the ranks' plans. ``progress(done, total)`` counts them.
    """
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise MaskError(f"ranks must be a positive integer, got {ranks!r}")
    if isinstance(block, bool) or block not in TILE_SIZES:
        raise MaskError(f"shard tile size {block!r} is not supported; it must be one of {', '.join(map(str, TILE_SIZES))}")
    if strategy not in STRATEGIES:
        raise MaskError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if objective not in cost.OBJECTIVES:
        raise MaskError(f"objective {objective!r} is not one of {', '.join(cost.OBJECTIVES)}")
    source = PlanMask(mask) if isinstance(mask, Plan) else maskc.open_mask(mask)
    if source.q_len != source.kv_len:
        raise MaskError(f"{source.name} is {source.q_len}x{source.kv_len}: context parallelism shards one sequence's self-attention "
                        "(q_len == kv_len)")
    tiles = -(-source.q_len // block)
    if tiles < ranks:
        raise MaskError(f"{source.name}: {source.q_len} tokens make {tiles} tiles of {block}, fewer than {ranks} ranks; "
                        "use smaller tiles or fewer ranks")
    whole = _whole_plan(mask, source, block)
    rows = TileRows.of(whole)
    costs = Costs.of(cost.resolve_profile(profile), whole, workload or cost.Workload(), objective)
    weights = costs.row_weights(rows)
    names = OWN_STRATEGIES if strategy == "auto" else (strategy,)
    assessed = {name: assess(rows, costs, _assign(name, rows, weights, ranks), ranks) for name in dict.fromkeys(names + BASELINES)}
    chosen = _choose(assessed, names)
    shares = assessed[chosen]
    report = {
        "ranks": ranks,
        "tile": block,
        "strategy": chosen,
        **costs.describe(),
        "summary": shares.summary(),
        "per_rank": shares.per_rank(),
        "compared": {name: a.summary() for name, a in assessed.items()},
    }
    shard_map = ShardMap.from_tiles(source.q_len, block, shares.owner, shares.needed, report)
    compiled = tuple(_rank_plans(source, shard_map, tile_kernel(whole), progress)) if plans else ()
    return Sharding(shard_map, compiled)


def _whole_plan(mask: Any, source: MaskSource, block: int) -> Plan:
    """The whole mask's plan at ``block`` tiles in token order: a given plan when it is one, else
    compiled (an interval plan where the source gives its intervals: O(N + tiles))."""
    if isinstance(mask, Plan) and not mask.reordered and mask.block_m == mask.block_n == block:
        return mask
    variant = "intervals" if source.intervals() is not None else "block_sparse"
    return maskc.compile(source, block=block, variant=variant, reorder="none", schedule="none")


def _assign(name: str, rows: TileRows, weights: np.ndarray, ranks: int) -> np.ndarray:
    if name == "contiguous":
        return partition.contiguous(weights, ranks)
    if name == "lpt":
        return partition.lpt(weights, ranks)
    if name == "head_tail":
        return partition.head_tail(weights.size, ranks)
    return partition.ptrr(rows.visited, ranks)


def _choose(assessed: dict[str, Assessment], names: tuple[str, ...]) -> str:
    """The assignment of ``names`` with the least busiest-rank work, or, among those within
    :data:`BALANCE_SLACK` of it, the fewest bytes into the busiest receiver (then the first named)."""
    best = min(assessed[n].work.max() for n in names)
    near = [n for n in names if assessed[n].work.max() <= best * (1 + BALANCE_SLACK)]
    return min(near, key=lambda n: (int(assessed[n].recv_bytes.max()), names.index(n)))


def _rank_plans(source: MaskSource, shard_map: ShardMap, variant: str, progress: Progress | None):
    """Each rank's plan: its view of the mask, compiled at the shard's tile size with the whole
    plan's tile kernel, so its lists are the ones the report predicted."""
    for r in range(shard_map.ranks):
        view = SubMask(source, shard_map.owned_tokens(r), shard_map.needed_tokens(r), name=f"{source.name} rank {r} of {shard_map.ranks}")
        yield maskc.compile(view, block=shard_map.tile, variant=variant, reorder="none")
        if progress is not None:
            progress(r + 1, shard_map.ranks)
