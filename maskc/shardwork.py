"""What each rank of a sharded mask would do: its tiles, the cost model's prediction, the bytes it moves.

Everything is read from one plan of the whole mask at the shard's tile size, in token order
(:class:`TileRows`): a rank that owns some query tiles runs exactly their row lists, restricted to
the key tiles those rows visit, so its lists — and the cost model's :class:`~maskc.cost.Work` — follow
from the whole plan's lists without compiling the rank's own plan (the plan compiled later for it
has the same lists). :func:`assess` does it for any assignment of tiles to ranks in
O(visited tiles + ranks · slices · tiles): no ``N × N`` anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from maskc import cost
from maskc.runtime.format import DERIVED_LISTS, Plan, bitmap_bits, interval_vectors, tile_masked_counts

ITEMSIZE = {"bf16": 2, "fp16": 2, "fp32": 4}  # bytes per element of each workload dtype


@dataclass(frozen=True)
class TileRows:
    """A plan's tiles per row list ``(slice, query tile)``: full and partial counts and visible
    pairs ``[slices, tiles_m]``, and every visited tile's slice, query tile, key tile and class."""

    plan: Plan
    full: np.ndarray
    partial: np.ndarray
    pairs: np.ndarray
    entry_slice: np.ndarray
    entry_row: np.ndarray
    entry_col: np.ndarray
    entry_full: np.ndarray

    @classmethod
    def of(cls, plan: Plan) -> "TileRows":
        """The tiles of a plan whose lists are in token order (one not reordered)."""
        ptr = plan.arrays["row_ptr"].astype(np.int64)
        counts = np.diff(ptr)
        full = plan.arrays["row_full"].astype(np.int64)
        row_id = np.repeat(np.arange(counts.size), counts)
        entry_full = np.arange(ptr[-1]) - ptr[row_id] < full[row_id]
        entry_slice, entry_row = np.divmod(row_id, plan.tiles_m)
        shape = (plan.slices, plan.tiles_m)
        return cls(plan, full.reshape(shape), (counts - full).reshape(shape), _row_pairs(plan, row_id, entry_full),
                   entry_slice.astype(np.int32), entry_row.astype(np.int32), plan.arrays["row_col"].astype(np.int32), entry_full)

    @property
    def tile_tokens(self) -> np.ndarray:
        """Tokens per tile (the last may be short), int64 ``[tiles_m]``."""
        return _extents(self.plan.q_len, self.plan.block_m)

    @property
    def visited(self) -> np.ndarray:
        """Tiles each query tile row visits over all slices, int64 ``[tiles_m]``."""
        return (self.full + self.partial).sum(0)


def _row_pairs(plan: Plan, row_id: np.ndarray, entry_full: np.ndarray) -> np.ndarray:
    """Visible pairs per row list ``[slices, tiles_m]``: from the interval vectors (masked pairs per
    query tile, every key column at once) or from the tiles (full ones whole, partial ones' bits)."""
    heights = _extents(plan.q_len, plan.block_m)
    if plan.variant in DERIVED_LISTS:
        masked = tile_masked_counts(np.asarray(interval_vectors(plan)), plan.q_len, plan.block_m, plan.kv_len)[..., 0]
        return heights * plan.kv_len - masked
    visible = heights[row_id % plan.tiles_m] * _extents(plan.kv_len, plan.block_n)[plan.arrays["row_col"]]
    partial = ~entry_full
    visible[partial] = bitmap_bits(plan).sum(axis=(1, 2), dtype=np.int64)[plan.arrays["row_tile"][partial]]
    return np.bincount(row_id, weights=visible, minlength=plan.slices * plan.tiles_m).astype(np.int64).reshape(plan.slices, plan.tiles_m)


def _extents(length: int, block: int) -> np.ndarray:
    """The sizes of the tiles that cut ``length`` tokens into ``block``-sized pieces (the last may be short)."""
    return np.minimum(block, length - np.arange(-(-length // block), dtype=np.int64) * block)


def tile_kernel(plan: Plan) -> str:
    """The tile kernel that runs a plan's mask and its ranks' shares: the interval kernel for a mask
    in interval form (an interval or dense plan), else the block-sparse one."""
    return "intervals" if plan.variant in DERIVED_LISTS else "block_sparse"


@dataclass(frozen=True)
class Costs:
    """How a rank's share is weighed: the cost model's prediction for ``candidate`` (``unit`` "ms"),
    or, without a profile that has its constants, the tiles it visits (``unit`` "tiles"; ``note``
    says why)."""

    unit: str
    workload: cost.Workload
    objective: str
    profile: cost.Profile | None = None
    candidate: cost.Candidate | None = None
    note: str | None = None

    @classmethod
    def of(cls, profile: cost.Profile | None, plan: Plan, workload: cost.Workload, objective: str) -> "Costs":
        """The prediction for the plan's tile kernel where the profile has its constants, else tiles."""
        if profile is None:
            return cls("tiles", workload, objective, note="no cost-model profile: shares are weighed by the tiles they visit")
        candidate = cost.Candidate(tile_kernel(plan), (plan.block_m, plan.block_n))
        try:
            for pass_ in cost.PASSES:
                profile.kernel(candidate.kernel, pass_, candidate.block, workload)
        except cost.ProfileError as e:
            return cls("tiles", workload, objective, note=f"{e}: shares are weighed by the tiles they visit")
        return cls("ms", workload, objective, profile, candidate)

    def row_weights(self, rows: TileRows) -> np.ndarray:
        """The part of each query tile row's predicted work that adds up over rows (``[tiles_m]``):
        per row list, the program and tile costs of the launches that walk it, and the dK/dV
        launch's tile costs of its tiles (that launch's per-list cost is per key tile: not additive)."""
        if self.unit == "tiles":
            return rows.visited.astype(np.float64)
        program = full = partial = 0.0
        for pass_ in cost.PASSES[: 1 if self.objective == "fwd" else 2]:
            for i, lists in enumerate(self.profile.kernel(self.candidate.kernel, pass_, self.candidate.block, self.workload).lists):
                program += lists.program_ms if cost.LAUNCHES[pass_][i] != "dkdv" else 0.0
                full, partial = full + lists.full_tile_ms, partial + lists.partial_tile_ms
        return (program + full * rows.full + partial * rows.partial).sum(0)

    def predict(self, work: cost.Work) -> cost.Prediction | None:
        return None if self.unit == "tiles" else cost.predict(self.profile, self.candidate, work, self.workload)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": self.unit, "profile": self.profile.name if self.profile else None,
                               "workload": self.workload.as_dict(), "objective": self.objective}
        if self.candidate is not None:
            out["kernel"] = self.candidate.name
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class Assessment:
    """Per rank: its tiles and needed key tiles, tokens, visible pairs, predicted work (``Costs.unit``;
    forward and backward ms apart when predicted), and the bytes of keys and values it receives and
    sends in the forward (the backward returns as many bytes of their gradients)."""

    owner: np.ndarray
    needed: list[np.ndarray]
    tokens: np.ndarray
    key_tokens: np.ndarray
    pairs: np.ndarray
    work: np.ndarray
    fwd_ms: np.ndarray | None
    bwd_ms: np.ndarray | None
    recv_bytes: np.ndarray
    send_bytes: np.ndarray

    @property
    def ranks(self) -> int:
        return len(self.needed)

    def summary(self) -> dict[str, Any]:
        """Max and mean predicted work, their ratio, and the bytes received per rank (max, mean, total)."""
        mean = float(self.work.mean())
        return {
            "max_work": _num(self.work.max()),
            "mean_work": _num(mean),
            "max_over_mean": _num(self.work.max() / mean if mean > 0 else 1.0),
            "max_recv_bytes": int(self.recv_bytes.max()),
            "mean_recv_bytes": _num(self.recv_bytes.mean()),
            "total_bytes": int(self.recv_bytes.sum()),
        }

    def per_rank(self) -> list[dict[str, Any]]:
        out = []
        for r in range(self.ranks):
            entry = {"rank": r, "tokens": int(self.tokens[r]), "key_tokens": int(self.key_tokens[r]), "pairs": int(self.pairs[r]),
                     "work": _num(self.work[r]), "recv_bytes": int(self.recv_bytes[r]), "send_bytes": int(self.send_bytes[r])}
            if self.fwd_ms is not None:
                entry["fwd_ms"], entry["bwd_ms"] = _num(self.fwd_ms[r]), _num(self.bwd_ms[r])
            out.append(entry)
        return out


def assess(rows: TileRows, costs: Costs, owner: np.ndarray, ranks: int) -> Assessment:
    """What every rank does when rank ``owner[m]`` owns query tile ``m``."""
    needed = _needed(rows, owner, ranks)
    full, partial = _column_counts(rows, owner, ranks)
    tile_tokens, plan = rows.tile_tokens, rows.plan
    works = []
    for r in range(ranks):
        mine, keys = owner == r, needed[r]
        works.append(cost.Work(int(tile_tokens[mine].sum()), int(tile_tokens[keys].sum()), plan.batch, plan.heads,
                               int(rows.pairs[:, mine].sum()),
                               cost.ListWork.from_counts(rows.full[:, mine].ravel(), rows.partial[:, mine].ravel()),
                               cost.ListWork.from_counts(full[r][:, keys].ravel(), partial[r][:, keys].ravel())))
    predictions = [costs.predict(w) for w in works]
    timed = costs.unit == "ms"
    work = [p.objective(costs.objective) for p in predictions] if timed else [w.rows.full + w.rows.partial for w in works]
    # tokens of keys each owner (rows) sends each rank that needs them (columns), itself included
    traffic = np.stack([np.bincount(owner[keys], weights=tile_tokens[keys], minlength=ranks) for keys in needed], axis=1).astype(np.int64)
    own = np.diag(traffic)
    token_bytes = _token_bytes(costs.workload)
    return Assessment(
        owner=owner,
        needed=[np.flatnonzero(keys) for keys in needed],
        tokens=np.array([w.q_len for w in works]),
        key_tokens=np.array([w.kv_len for w in works]),
        pairs=np.array([w.pairs for w in works]),
        work=np.array(work, dtype=np.float64),
        fwd_ms=np.array([p.fwd_ms for p in predictions]) if timed else None,
        bwd_ms=np.array([p.bwd_ms for p in predictions]) if timed else None,
        recv_bytes=(traffic.sum(0) - own) * token_bytes,
        send_bytes=(traffic.sum(1) - own) * token_bytes,
    )


def _needed(rows: TileRows, owner: np.ndarray, ranks: int) -> np.ndarray:
    """Whether each rank needs each key tile, bool ``[ranks, tiles_n]``: the tiles its rows visit. A
    rank whose rows see no key at all needs its first tile, so that its plan is not empty."""
    needed = np.zeros((ranks, rows.plan.tiles_n), dtype=bool)
    needed[owner[rows.entry_row], rows.entry_col] = True
    for r in np.flatnonzero(~needed.any(1) & np.isin(np.arange(ranks), owner)):
        needed[r, np.argmax(owner == r)] = True
    return needed


def _column_counts(rows: TileRows, owner: np.ndarray, ranks: int) -> tuple[np.ndarray, np.ndarray]:
    """Full and partial tiles of each rank's column lists, int64 ``[ranks, slices, tiles_n]``: each
    key tile's visits by the rank's rows, per slice."""
    slices, tiles_n = rows.plan.slices, rows.plan.tiles_n
    key = (owner[rows.entry_row] * slices + rows.entry_slice) * tiles_n + rows.entry_col
    size = ranks * slices * tiles_n
    total = np.bincount(key, minlength=size).reshape(ranks, slices, tiles_n)
    full = np.bincount(key[rows.entry_full], minlength=size).reshape(ranks, slices, tiles_n)
    return full, total - full


def _token_bytes(workload: cost.Workload) -> int:
    """Bytes of one token's keys and values: every batch entry and key/value head, both tensors."""
    return 2 * workload.batch * (workload.kv_heads or workload.heads) * workload.head_dim * ITEMSIZE[workload.dtype]


def _num(x: float) -> float:
    return float(f"{float(x):.6g}")
