"""Shard maps: one self-attention mask's tokens split over the ranks of a context-parallel group.

The sequence is cut into tiles of ``tile`` tokens (the last may be shorter). Rank ``r`` owns the
query tiles ``owned[r]`` — the queries, keys and values of those tokens live on it — and its plan is
the mask restricted to its owned tokens (rows) and to the key tiles ``needed[r]`` its rows visit
(columns), both in ascending token order: local query ``i`` is the ``i``-th token it owns, local key
``j`` the ``j``-th token it needs. Every tile is owned by exactly one rank; a rank fetches the needed
tiles it does not own from their owners before it runs its plan, and sends their gradients back.

Tiles are kept as runs ``[start, stop)``, so a map is small whatever the mask's length, and it is
checked on the runs before any tile or token index is expanded. The compiler writes a map with its
balance report (``maskc.shard``), the runtime reads it (``maskc.runtime.distributed``); this module
needs numpy only. A sharded mask is a directory: :data:`MANIFEST` (this map as JSON) and one plan per
rank (:func:`plan_path`), written atomically, the manifest last.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskc.runtime.format.files import atomic_write
from maskc.runtime.format.plan import MAX_DIM, PlanError
from maskc.runtime.format.policy import TILE_SIZES
from maskc.runtime.format.validate import MAX_META_DEPTH, check_plain

FORMAT = "maskc-shards"
VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 26
"""A manifest stores runs of tiles, a few bytes per rank for contiguous shares: a file larger than
this (64 MiB) is refused unread."""


class ShardError(PlanError):
    """A shard map or manifest is malformed, or does not fit the plans or the process group given."""


def plan_path(directory: str | os.PathLike, rank: int) -> Path:
    """Where rank ``rank``'s plan lives in a sharded mask's directory."""
    return Path(directory) / f"rank{rank}.plan"


@dataclass(frozen=True, eq=False)
class ShardMap:
    """Which tiles each rank owns and needs: per rank, ascending non-overlapping runs ``[k, 2]``.

    ``report`` is plain data about how the map was chosen (predicted work and bytes per rank); the
    runtime never reads it.
    """

    q_len: int
    tile: int
    owned: tuple[np.ndarray, ...]
    needed: tuple[np.ndarray, ...]
    report: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "owned", tuple(_read_only_runs(r) for r in self.owned))
        object.__setattr__(self, "needed", tuple(_read_only_runs(r) for r in self.needed))
        object.__setattr__(self, "report", dict(self.report))
        _check(self)

    @property
    def ranks(self) -> int:
        return len(self.owned)

    @property
    def tiles(self) -> int:
        return -(-self.q_len // self.tile)

    @classmethod
    def from_tiles(cls, q_len: int, tile: int, owner: np.ndarray, needed: list[np.ndarray], report: Mapping[str, Any] | None = None) -> "ShardMap":
        """The map of ``owner`` (the rank of every tile) and each rank's needed tile indices."""
        ranks = len(needed)
        owned = [runs_of(np.flatnonzero(np.asarray(owner) == r)) for r in range(ranks)]
        return cls(q_len, tile, tuple(owned), tuple(runs_of(np.asarray(n)) for n in needed), report or {})

    def owner(self) -> np.ndarray:
        """The rank that owns each tile, int64 ``[tiles]``."""
        out = np.empty(self.tiles, dtype=np.int64)
        for r, runs in enumerate(self.owned):
            out[expand(runs)] = r
        return out

    def owned_tiles(self, rank: int) -> np.ndarray:
        return expand(self.owned[rank])

    def needed_tiles(self, rank: int) -> np.ndarray:
        return expand(self.needed[rank])

    def tokens(self, tiles: np.ndarray) -> np.ndarray:
        """The tokens of ascending ``tiles``, ascending (int64): the last tile may be short."""
        tokens = (np.asarray(tiles, dtype=np.int64)[:, None] * self.tile + np.arange(self.tile)).ravel()
        return tokens[tokens < self.q_len]

    def owned_tokens(self, rank: int) -> np.ndarray:
        """Rank ``rank``'s tokens in its local order: its queries' rows, and its keys and values."""
        return self.tokens(self.owned_tiles(rank))

    def needed_tokens(self, rank: int) -> np.ndarray:
        """The key tokens of rank ``rank``'s plan, in its local order."""
        return self.tokens(self.needed_tiles(rank))

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "q_len": self.q_len,
            "tile": self.tile,
            "owned": [r.tolist() for r in self.owned],
            "needed": [r.tolist() for r in self.needed],
            "report": self.report,
        }

    @classmethod
    def from_dict(cls, d: Any) -> "ShardMap":
        """A map from its plain form, every field checked (ShardError names the first fault)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ShardError(f"not a {FORMAT} manifest")
        version = d.get("version")
        if not _is_int(version) or not 1 <= version <= VERSION:
            raise ShardError(f"shard manifest version {version!r} is not one this maskc reads (1 to {VERSION})")
        q_len, tile = d.get("q_len"), d.get("tile")
        if not _is_int(q_len) or not 1 <= q_len <= MAX_DIM:
            raise ShardError(f"shard manifest q_len must be an integer in [1, {MAX_DIM}], got {q_len!r}")
        if not _is_int(tile) or tile not in TILE_SIZES:
            raise ShardError(f"shard manifest tile must be one of {', '.join(map(str, TILE_SIZES))}, got {tile!r}")
        owned, needed = d.get("owned"), d.get("needed")
        if not (isinstance(owned, list) and isinstance(needed, list) and len(owned) == len(needed)):
            raise ShardError("shard manifest owned and needed must be lists with one entry per rank")
        report = d.get("report", {})
        if not isinstance(report, dict):
            raise ShardError("shard manifest report must be a map")
        try:
            check_plain(report, "report", MAX_META_DEPTH)
        except PlanError as e:
            raise ShardError(f"shard manifest {e}") from None
        runs = lambda name, per_rank: tuple(_runs_from_list(x, f"{name}[{r}]") for r, x in enumerate(per_rank))  # noqa: E731
        return cls(q_len, tile, runs("owned", owned), runs("needed", needed), report)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the manifest (atomically) into ``directory``; returns its path."""
        path = Path(directory) / MANIFEST
        atomic_write(path, (json.dumps(self.as_dict(), indent=1) + "\n").encode())
        return path


def load_manifest(directory: str | os.PathLike) -> ShardMap:
    """Read and check the manifest of a sharded mask's directory (a regular file, bounded in size)."""
    path = Path(directory) / MANIFEST
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ShardError(f"{path}: not a regular file")
            if info.st_size > MAX_MANIFEST_BYTES:
                raise ShardError(f"{path}: {info.st_size} bytes is larger than a shard manifest may be ({MAX_MANIFEST_BYTES})")
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ShardError(f"shard manifest not found: {path}") from None
    except OSError as e:
        raise ShardError(f"{path}: cannot read the shard manifest: {e.strerror or e}") from None
    try:
        return ShardMap.from_dict(json.loads(data))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ShardError(f"{path}: not a JSON shard manifest ({e})") from None
    except ShardError as e:
        raise ShardError(f"{path}: {e}") from None


def runs_of(indices: np.ndarray) -> np.ndarray:
    """Ascending unique indices as runs ``[k, 2]`` of ``[start, stop)``."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = indices[np.concatenate([[0], breaks])]
    stops = indices[np.concatenate([breaks - 1, [indices.size - 1]])] + 1
    return np.stack([starts, stops], axis=1)


def expand(runs: np.ndarray) -> np.ndarray:
    """The ascending indices of runs ``[k, 2]`` (int64)."""
    lengths = runs[:, 1] - runs[:, 0]
    offsets = np.repeat(runs[:, 0] - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) + offsets


def _check(m: ShardMap) -> None:
    """Every run in range and ascending, every rank with something to own and to need, every tile
    owned exactly once: checked on the runs, before anything is expanded."""
    if not _is_int(m.q_len) or not 1 <= m.q_len <= MAX_DIM:
        raise ShardError(f"shard map q_len must be an integer in [1, {MAX_DIM}], got {m.q_len!r}")
    if not _is_int(m.tile) or m.tile not in TILE_SIZES:
        raise ShardError(f"shard map tile must be one of {', '.join(map(str, TILE_SIZES))}, got {m.tile!r}")
    if not 1 <= m.ranks == len(m.needed):
        raise ShardError(f"shard map needs one owned and one needed entry per rank, got {len(m.owned)} and {len(m.needed)}")
    if m.ranks > m.tiles:
        raise ShardError(f"shard map has {m.ranks} ranks but only {m.tiles} tiles of {m.tile} tokens to share")
    for name, per_rank in (("owned", m.owned), ("needed", m.needed)):
        for r, runs in enumerate(per_rank):
            where = f"shard map {name}[{r}]"
            if runs.shape[0] == 0:
                raise ShardError(f"{where} is empty: every rank owns and needs at least one tile")
            if np.any(runs[:, 0] < 0) or np.any(runs[:, 1] > m.tiles) or np.any(runs[:, 0] >= runs[:, 1]) or np.any(runs[1:, 0] <= runs[:-1, 1]):
                raise ShardError(f"{where} must be ascending, separate runs [start, stop) of tiles in [0, {m.tiles})")
    runs = np.concatenate(m.owned)
    runs = runs[np.argsort(runs[:, 0], kind="stable")]
    if runs[0, 0] != 0 or runs[-1, 1] != m.tiles or np.any(runs[1:, 0] != runs[:-1, 1]):
        raise ShardError(f"shard map owned runs must cover the {m.tiles} tiles exactly once")


def _runs_from_list(value: Any, where: str) -> np.ndarray:
    if not (isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 and all(_is_int(v) and 0 <= v <= MAX_DIM for v in p) for p in value)):
        raise ShardError(f"shard manifest {where} must be a list of [start, stop] tile runs")
    return np.asarray(value, dtype=np.int64).reshape(-1, 2)


def _read_only_runs(runs: Any) -> np.ndarray:
    array = np.array(runs, dtype=np.int64).reshape(-1, 2)
    array.flags.writeable = False
    return array


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
