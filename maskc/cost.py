"""The cost model: predict how long each way of running a mask takes, from a profile of measured constants.

**Candidates.** A mask can run as the block-sparse kernel (partial tiles as bitmaps) or the interval
kernel (partial tiles rebuilt from column intervals, masks that fit only), at 64×64 or 128×128
tiles, with or without an RCM token reordering (block-sparse only), or — when it is all-true or
exactly causal — as dense SDPA (``"dense"`` / ``"dense_causal"``).

A plan holds one tiling for both passes, so the forward and backward are predicted apart (both are
recorded) and one tile size is chosen for their sum (``objective="fwd_bwd"``) or for the forward
alone (``objective="fwd"``, inference).

**Work.** What the model needs of a candidate is shape-independent and stored in the plan
(``meta.predictions``), so a prediction can be re-evaluated for any batch, heads, head dim and
dtype: per list kind (query-tile rows, key-tile columns) over all mask slices, the number of lists,
of full and of partial tiles, and the Pareto front of per-list ``(full, partial)`` counts — the
lists that could be the heaviest under any positive tile costs. Dense candidates need only the
visible pairs.

**Model.** One tile kernel launch takes

    launch + max(mult · Σ_lists (program + full·f + partial·p),  concurrency · max_list (program + full·f + partial·p))

``mult`` is how many (batch, head) pairs read each mask slice. The first term is the total work
spread over the whole GPU (the constants are per-tile *throughput* costs, all SMs busy); the second
is the critical path: the heaviest list runs on one SM, ``concurrency`` times slower than the
throughput rate (``concurrency`` ≈ programs resident at once). The forward is one such launch over
the row lists; the backward (timed alone) two, over the row lists (dQ) and the column lists
(dK/dV), each with its own program and tile constants (the two kernels do different work per
tile) and one launch cost and concurrency for the pass. A reordered plan runs the same kernels
reading and writing every row through its permutation; that costs each pass a measured factor
(per tile size), by which its time is multiplied. Dense SDPA takes ``launch + pair·pairs``, per
pass, causal and full apart. Every constant is per (tile size,
head-dim bucket, dtype) and per pass, fitted by ``maskc calibrate`` on the GPU and stored in a
profile (JSON) with the measurements it was fitted to, so ``maskc calibrate --refit`` can fit a
changed model again without a GPU; nothing here is a guess. Grouped-query attention is modelled
as its query heads.

**Profiles.** ``load_profile(name_or_path)`` reads ``maskc/profiles/<GPU name>.json`` or a path. The
compiler's profile is ``MASKC_PROFILE`` (a name or path; ``none`` for no model), else the shipped
H100 profile when the package has one. Without a profile there is no model: :func:`load_profile`
raises :class:`ProfileError`, and the compiler falls back to its fixed rules and says so in the plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskc.runtime.format import Plan, PlanError, piece_pairs, pieces_take

SCHEMA = "maskc-profile/3"
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_PROFILE = "NVIDIA H100 80GB HBM3"
ENV_PROFILE = "MASKC_PROFILE"
NO_PROFILE = "none"
KERNELS = ("block_sparse", "intervals")
PASSES = ("fwd", "bwd")
LAUNCHES = {"fwd": ("rows",), "bwd": ("dq", "dkdv")}
"""The tile-kernel launches of each pass and the lists they walk: rows, rows, columns."""
OBJECTIVES = ("fwd_bwd", "fwd")
DTYPES = ("bf16", "fp16", "fp32")
HEAD_DIM_BUCKETS = (32, 64, 128, 256)  # the kernels pad the head dim to the next of these


class ProfileError(ValueError):
    """A profile is missing, unreadable, or has no constants for what is asked."""


def head_dim_bucket(head_dim: int) -> int:
    """The padded head dim the kernels compute with (the next of :data:`HEAD_DIM_BUCKETS`)."""
    for bucket in HEAD_DIM_BUCKETS:
        if head_dim <= bucket:
            return bucket
    raise ProfileError(f"head dim {head_dim} is larger than the largest supported ({HEAD_DIM_BUCKETS[-1]})")


# --- the workload a prediction is for -----------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """The attention call a prediction is for: ``q [batch, heads, N, head_dim]``, k/v with
    ``kv_heads`` heads (``None``: as many as q), in ``dtype`` (bf16, fp16 or fp32)."""

    batch: int = 1
    heads: int = 16
    kv_heads: int | None = None
    head_dim: int = 128
    dtype: str = "bf16"

    def __post_init__(self) -> None:
        for name in ("batch", "heads", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ProfileError(f"workload {name} must be a positive integer, got {value!r}")
        if self.kv_heads is not None and (not isinstance(self.kv_heads, int) or self.kv_heads < 1 or self.heads % self.kv_heads):
            raise ProfileError(f"workload kv_heads must divide heads={self.heads}, got {self.kv_heads!r}")
        if self.dtype not in DTYPES:
            raise ProfileError(f"workload dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def as_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "heads": self.heads, "kv_heads": self.kv_heads or self.heads, "head_dim": self.head_dim, "dtype": self.dtype}

    @classmethod
    def parse(cls, text: str) -> "Workload":
        """``"batch=1,heads=16,kv_heads=4,head_dim=128,dtype=bf16"`` (any subset; the rest default)."""
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.partition("=")
            key = key.strip()
            if key not in cls.__dataclass_fields__ or not value:
                raise ProfileError(f"workload item {part!r} is not one of batch=, heads=, kv_heads=, head_dim=, dtype=")
            try:
                values[key] = value.strip() if key == "dtype" else int(value)
            except ValueError:
                raise ProfileError(f"workload {key} must be an integer, got {value!r}") from None
        return cls(**values)

    def describe(self) -> str:
        kv = f" Hkv={self.kv_heads}" if self.kv_heads not in (None, self.heads) else ""
        return f"B={self.batch} H={self.heads}{kv} D={self.head_dim} {self.dtype}"


# --- the work of a candidate ---------------------------------------------------------------------


def pareto_front(full: np.ndarray, partial: np.ndarray) -> tuple[tuple[int, int], ...]:
    """The ``(full, partial)`` pairs no other pair dominates (both counts at least as large): the
    lists that can be the heaviest whatever the (positive) per-tile costs. Sorted by ``full`` descending."""
    if full.size == 0:
        return ()
    points = np.unique(np.stack([full, partial], axis=1).astype(np.int64), axis=0)[::-1]  # by full descending
    front, best = [], -1
    for f, p in points:
        if p > best:
            front.append((int(f), int(p)))
            best = p
    return tuple(front)


@dataclass(frozen=True)
class ListWork:
    """The lists of one kind (query-tile rows or key-tile columns) over every mask slice."""

    lists: int
    full: int
    partial: int
    front: tuple[tuple[int, int], ...]

    @classmethod
    def from_counts(cls, full: np.ndarray, partial: np.ndarray) -> "ListWork":
        return cls(int(full.size), int(full.sum(dtype=np.int64)), int(partial.sum(dtype=np.int64)), pareto_front(full, partial))

    def as_dict(self) -> dict[str, Any]:
        return {"lists": self.lists, "full": self.full, "partial": self.partial, "front": [list(p) for p in self.front]}

    @classmethod
    def from_dict(cls, d: Any) -> "ListWork":
        if not isinstance(d, dict):
            raise PlanError("prediction work lists must be a map")
        ints = [d.get(k) for k in ("lists", "full", "partial")]
        front = d.get("front")
        if not all(_is_count(v) for v in ints) or not isinstance(front, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(_is_count(v) for v in p) for p in front
        ):
            raise PlanError("prediction work lists must hold counts lists, full, partial and a front of [full, partial] pairs")
        return cls(*ints, tuple(tuple(p) for p in front))


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


@dataclass(frozen=True)
class Work:
    """What a candidate asks of the GPU, independent of the workload's shape.

    ``rows``/``cols`` for the tile kernels; ``pairs`` (visible pairs over all slices) for dense SDPA;
    ``pieces``, when the mask is a few dense pieces (:mod:`maskc.pieces`), each piece's
    ``(causal, pairs)`` for a backward through them. ``batch``/``heads`` are the mask's own (1 where
    it broadcasts).
    """

    q_len: int
    kv_len: int
    batch: int
    heads: int
    pairs: int
    rows: ListWork | None = None
    cols: ListWork | None = None
    pieces: tuple[tuple[bool, int], ...] | None = None

    @classmethod
    def from_classes(cls, classes: list[np.ndarray], shape: tuple[int, int, int, int], pairs: int) -> "Work":
        """From each slice's tile classes ``[tiles_m, tiles_n]`` (0 empty, 1 full, 2 partial)."""
        stacked = np.stack(classes)
        full, partial = stacked == 1, stacked == 2
        rows = ListWork.from_counts(full.sum(2).ravel(), partial.sum(2).ravel())
        cols = ListWork.from_counts(full.sum(1).ravel(), partial.sum(1).ravel())
        return cls(shape[2], shape[3], shape[0], shape[1], pairs, rows, cols)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"q_len": self.q_len, "kv_len": self.kv_len, "batch": self.batch, "heads": self.heads, "pairs": self.pairs}
        if self.rows is not None:
            d["rows"], d["cols"] = self.rows.as_dict(), self.cols.as_dict()
        if self.pieces is not None:
            d["pieces"] = [[causal, pairs] for causal, pairs in self.pieces]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "Work":
        if not isinstance(d, dict):
            raise PlanError("prediction work must be a map")
        ints = [d.get(k) for k in ("q_len", "kv_len", "batch", "heads", "pairs")]
        if not all(_is_count(v) for v in ints) or min(ints[:4]) < 1:
            raise PlanError("prediction work must hold positive q_len, kv_len, batch, heads and a pairs count")
        pieces = d.get("pieces")
        if pieces is not None:
            if not (isinstance(pieces, list) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], bool) and _is_count(p[1]) for p in pieces)):
                raise PlanError("prediction work pieces must be a list of [causal, pairs]")
            pieces = tuple((p[0], p[1]) for p in pieces)
        if "rows" in d:
            return cls(*ints, ListWork.from_dict(d["rows"]), ListWork.from_dict(d.get("cols")), pieces)
        return cls(*ints, pieces=pieces)


@dataclass(frozen=True, order=True)
class Candidate:
    """One way to run a mask: a variant, a tile size, whether the tokens are reordered, and whether
    the backward runs through the mask's dense pieces instead of the tile kernels."""

    variant: str
    block: tuple[int, int]
    reordered: bool = False
    pieces: bool = False

    @property
    def name(self) -> str:
        if self.variant in ("dense", "dense_causal"):
            return self.variant
        return f"{self.variant}/{self.block[0]}x{self.block[1]}{'+rcm' if self.reordered else ''}{'+pieces' if self.pieces else ''}"

    @property
    def kernel(self) -> str | None:
        """The tile kernel it runs (None for dense SDPA)."""
        return None if self.variant in ("dense", "dense_causal") else self.variant


# --- profiles -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListCosts:
    """The per-list constants of one kernel launch (ms): see the module docstring."""

    program_ms: float
    full_tile_ms: float
    partial_tile_ms: float

    def cost(self, full: float, partial: float) -> float:
        return self.program_ms + self.full_tile_ms * full + self.partial_tile_ms * partial


@dataclass(frozen=True)
class KernelCosts:
    """Fitted constants of one tile kernel pass (ms): a launch cost, per launch of the pass (the
    forward over the row lists; the backward's dQ over the rows, dK/dV over the columns) its
    per-list constants, and the concurrency."""

    launch_ms: float
    lists: tuple[ListCosts, ...]
    concurrency: float

    def launch(self, costs: ListCosts, lists: ListWork, mult: float) -> float:
        """One launch over ``lists``: the larger of the spread-out total and the critical path."""
        total = mult * (costs.program_ms * lists.lists + costs.full_tile_ms * lists.full + costs.partial_tile_ms * lists.partial)
        heaviest = max((costs.cost(f, p) for f, p in lists.front), default=0.0)
        return max(total, self.concurrency * heaviest)

    def time(self, work_lists: list[ListWork], mult: float) -> float:
        if len(work_lists) != len(self.lists):
            raise ProfileError(f"a pass of {len(self.lists)} launches cannot be predicted from {len(work_lists)} list sets")
        return self.launch_ms + sum(self.launch(c, lists, mult) for c, lists in zip(self.lists, work_lists))

    def as_dict(self) -> dict[str, Any]:
        return {"launch_ms": self.launch_ms, "lists": [dataclasses.asdict(c) for c in self.lists], "concurrency": self.concurrency}


@dataclass(frozen=True)
class ReorderCost:
    """How much longer each pass of the tile kernels takes on a reordered plan, whose rows they
    read and write through its permutation: ``time × fwd_factor`` (``bwd_factor``)."""

    fwd_factor: float
    bwd_factor: float


@dataclass(frozen=True)
class LinearCost:
    """``launch_ms + unit_ms · units``: dense SDPA (units: visible pairs)."""

    launch_ms: float
    unit_ms: float

    def time(self, units: float) -> float:
        return self.launch_ms + self.unit_ms * units


@dataclass(frozen=True)
class PiecesCost:
    """The backward through a mask's dense pieces (:mod:`maskc.pieces`): per piece (a dense kernel
    call and its share of the gradient sums) and per visible pair, causal and full pieces apart."""

    piece_ms: float
    causal_pair_ms: float
    full_pair_ms: float

    def time(self, pieces: tuple[tuple[bool, int], ...], mult: float) -> float:
        return sum(self.piece_ms + pairs * mult * (self.causal_pair_ms if causal else self.full_pair_ms) for causal, pairs in pieces)


@dataclass
class Profile:
    """A GPU's measured constants, as ``maskc calibrate`` wrote them."""

    name: str
    device_kind: str
    sha256: str
    source: str
    kernels: dict[tuple, KernelCosts] = field(default_factory=dict)  # (kernel, pass, bm, bn, bucket, dtype)
    reorder: dict[tuple, ReorderCost] = field(default_factory=dict)  # (bm, bn, bucket, dtype)
    sdpa: dict[tuple, LinearCost] = field(default_factory=dict)  # (mask "causal"/"full", pass, bucket, dtype)
    pieces: dict[tuple, PiecesCost] = field(default_factory=dict)  # (bucket, dtype)

    def kernel(self, kernel: str, pass_: str, block: tuple[int, int], workload: Workload) -> KernelCosts:
        key = (kernel, pass_, block[0], block[1], head_dim_bucket(workload.head_dim), workload.dtype)
        if key not in self.kernels:
            raise ProfileError(f"profile {self.name!r} has no {kernel} {pass_} constants for {block[0]}x{block[1]} tiles, head dim {key[4]}, {workload.dtype}")
        return self.kernels[key]

    def reorder_cost(self, block: tuple[int, int], workload: Workload) -> ReorderCost:
        key = (block[0], block[1], head_dim_bucket(workload.head_dim), workload.dtype)
        if key not in self.reorder:
            raise ProfileError(f"profile {self.name!r} has no reordering factors for {block[0]}x{block[1]} tiles, head dim {key[2]}, {workload.dtype}")
        return self.reorder[key]

    def sdpa_cost(self, mask: str, pass_: str, workload: Workload) -> LinearCost:
        key = (mask, pass_, head_dim_bucket(workload.head_dim), workload.dtype)
        if key not in self.sdpa:
            raise ProfileError(f"profile {self.name!r} has no SDPA {mask} {pass_} constants for head dim {key[2]}, {workload.dtype}")
        return self.sdpa[key]

    def pieces_cost(self, workload: Workload) -> PiecesCost:
        key = (head_dim_bucket(workload.head_dim), workload.dtype)
        if key not in self.pieces:
            raise ProfileError(f"profile {self.name!r} has no dense-pieces constants for head dim {key[0]}, {workload.dtype} "
                               "('maskc calibrate --only pieces --merge' measures them)")
        return self.pieces[key]


def profile_filename(device_name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"NVIDIA_H100_80GB_HBM3.json"``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", device_name.strip()).strip("_") + ".json"


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """A profile from a JSON file path, or by device name from the package's ``profiles/`` folder."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if not path.is_file():
        if path.suffix == ".json" or os.sep in text:
            raise ProfileError(f"profile file not found: {text}")
        path = PROFILE_DIR / profile_filename(text)
        if not path.is_file():
            raise ProfileError(
                f"no profile for {text!r} (looked for {path}): run 'maskc calibrate' on that GPU, or name a profile file"
            )
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProfileError(f"{path}: not a JSON profile ({e})") from None
    return parse_profile(data, source=str(path), sha256=hashlib.sha256(raw).hexdigest())


def parse_profile(data: Any, source: str = "<memory>", sha256: str | None = None) -> Profile:
    """Check a profile's JSON structure and turn it into a :class:`Profile`."""
    where = f"profile {source}"
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ProfileError(f"{where} is not a {SCHEMA} profile")
    device = _get(data, "device", dict, where)
    name = _get(device, "name", str, f"{where} device")
    kind = _get(device, "kind", str, f"{where} device")
    if sha256 is None:
        sha256 = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    profile = Profile(name=name, device_kind=kind, sha256=sha256, source=source)
    for i, e in enumerate(_get(data, "kernels", list, where)):
        w = f"{where} kernels[{i}]"
        kernel, pass_ = _choice(e, "kernel", KERNELS, w), _choice(e, "pass", PASSES, w)
        block = _block(e, w)
        costs = parse_kernel_entry(e, w)
        profile.kernels[(kernel, pass_, block[0], block[1], _bucket(e, w), _choice(e, "dtype", DTYPES, w))] = costs
    for i, e in enumerate(_get(data, "reorder", list, where)):
        w = f"{where} reorder[{i}]"
        block = _block(e, w)
        factors = ReorderCost(*(_positive(e, key, w) for key in ("fwd_factor", "bwd_factor")))
        profile.reorder[(block[0], block[1], _bucket(e, w), _choice(e, "dtype", DTYPES, w))] = factors
    for i, e in enumerate(_get(data, "sdpa", list, where)):
        w = f"{where} sdpa[{i}]"
        key = (_choice(e, "mask", ("causal", "full"), w), _choice(e, "pass", PASSES, w), _bucket(e, w), _choice(e, "dtype", DTYPES, w))
        profile.sdpa[key] = LinearCost(_nonneg(e, "launch_ms", w), _nonneg(e, "pair_ms", w))
    for i, e in enumerate(data.get("pieces", [])):  # optional: profiles measured before dense pieces lack it
        w = f"{where} pieces[{i}]"
        costs = PiecesCost(*(_nonneg(e, key, w) for key in ("piece_ms", "causal_pair_ms", "full_pair_ms")))
        profile.pieces[(_bucket(e, w), _choice(e, "dtype", DTYPES, w))] = costs
    return profile


def parse_kernel_entry(e: dict, where: str) -> KernelCosts:
    """A kernel entry's constants: ``launch_ms``, one ``lists`` item per launch of its pass, ``concurrency``."""
    pass_ = _choice(e, "pass", PASSES, where)
    lists = _get(e, "lists", list, where)
    if len(lists) != len(LAUNCHES[pass_]):
        raise ProfileError(f"{where}: a {pass_} entry needs {len(LAUNCHES[pass_])} lists constants ({', '.join(LAUNCHES[pass_])})")
    costs = KernelCosts(_nonneg(e, "launch_ms", where),
                        tuple(ListCosts(*(_nonneg(c, k, f"{where} lists[{i}]") for k in ("program_ms", "full_tile_ms", "partial_tile_ms")))
                              for i, c in enumerate(lists)),
                        _nonneg(e, "concurrency", where))
    if costs.concurrency < 1:
        raise ProfileError(f"{where}: concurrency must be at least 1")
    return costs


def _block(e: dict, where: str) -> list[int]:
    block = _get(e, "block", list, where)
    if len(block) != 2 or not all(_is_count(v) for v in block):
        raise ProfileError(f"{where}: block must be [block_m, block_n]")
    return block


def _positive(d: dict, key: str, where: str) -> float:
    value = _nonneg(d, key, where)
    if value <= 0:
        raise ProfileError(f"{where}: field {key!r} must be positive")
    return value


def _get(d: dict, key: str, kind: type, where: str):
    value = d.get(key) if isinstance(d, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ProfileError(f"{where}: field {key!r} is missing or not a {kind.__name__}")
    return value


def _choice(d: dict, key: str, allowed: tuple, where: str):
    value = d.get(key) if isinstance(d, dict) else None
    if value not in allowed:
        raise ProfileError(f"{where}: {key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return value


def _nonneg(d: dict, key: str, where: str) -> float:
    value = d.get(key) if isinstance(d, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ProfileError(f"{where}: {key} must be a finite number >= 0, got {value!r}")
    return float(value)


def _bucket(d: dict, where: str) -> int:
    return _choice(d, "head_dim", HEAD_DIM_BUCKETS, where)


def default_profile() -> Profile | None:
    """The compiler's profile: ``$MASKC_PROFILE`` (a name or path; ``none`` for none), else the
    shipped H100 profile when the package has one, else None."""
    env = os.environ.get(ENV_PROFILE)
    if env is not None and env.strip():
        return None if env.strip().lower() == NO_PROFILE else load_profile(env.strip())
    path = PROFILE_DIR / profile_filename(DEFAULT_PROFILE)
    return load_profile(path) if path.is_file() else None


def resolve_profile(profile: "Profile | str | os.PathLike | None") -> Profile | None:
    """``None``: :func:`default_profile`; ``"none"``: no profile; a name or path: that profile."""
    if profile is None:
        return default_profile()
    if isinstance(profile, Profile):
        return profile
    if os.fspath(profile).strip().lower() == NO_PROFILE:
        return None
    return load_profile(profile)


# --- predictions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    fwd_ms: float
    bwd_ms: float

    @property
    def fwd_bwd_ms(self) -> float:
        return self.fwd_ms + self.bwd_ms

    def objective(self, objective: str) -> float:
        return self.fwd_ms if objective == "fwd" else self.fwd_bwd_ms


def _mult(work: Work, workload: Workload) -> float:
    """How many (batch, head) pairs of the call read each mask slice (the mask's own batch and
    heads where it does not broadcast). Grouped-query attention is modelled as its query heads."""
    batch = work.batch if work.batch > 1 else workload.batch
    heads = work.heads if work.heads > 1 else workload.heads
    return batch * heads / (work.batch * work.heads)


def predict(profile: Profile, candidate: Candidate, work: Work, workload: Workload) -> Prediction:
    """The predicted forward and backward time (ms) of ``candidate`` for ``workload``; ProfileError
    when the profile lacks a constant it needs."""
    mult = _mult(work, workload)
    if candidate.kernel is None:
        mask = "causal" if candidate.variant == "dense_causal" else "full"
        pairs = work.pairs * mult
        return Prediction(*(profile.sdpa_cost(mask, p, workload).time(pairs) for p in PASSES))
    if work.rows is None:
        raise ProfileError(f"candidate {candidate.name} has no tile work recorded")
    if candidate.pieces:
        if work.pieces is None:
            raise ProfileError(f"candidate {candidate.name} has no pieces recorded")
        if not pieces_take(workload.dtype, workload.head_dim):
            raise ProfileError(f"a {workload.describe()} call runs the tile backward, not the dense pieces' (they need bf16 or fp16 "
                               "and a head dim that is a multiple of 8 up to 128)")
    fwd = profile.kernel(candidate.kernel, "fwd", candidate.block, workload).time([work.rows], mult)
    if candidate.pieces:
        return Prediction(fwd, profile.pieces_cost(workload).time(work.pieces, mult))
    bwd = profile.kernel(candidate.kernel, "bwd", candidate.block, workload).time([work.rows, work.cols], mult)
    if candidate.reordered:
        factors = profile.reorder_cost(candidate.block, workload)
        fwd, bwd = fwd * factors.fwd_factor, bwd * factors.bwd_factor
    return Prediction(fwd, bwd)


@dataclass
class Choice:
    """What the model decided: the winner (None when nothing could be predicted) and every
    candidate's prediction (None where the profile lacks constants, with the reason)."""

    chosen: Candidate | None
    predictions: dict[Candidate, Prediction | None]
    reasons: dict[Candidate, str]


def choose(profile: Profile, candidates: dict[Candidate, Work], workload: Workload, objective: str = "fwd_bwd") -> Choice:
    """Predict every candidate and pick the fastest under ``objective`` (ties: the first in sorted order)."""
    if objective not in OBJECTIVES:
        raise ProfileError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    predictions: dict[Candidate, Prediction | None] = {}
    reasons: dict[Candidate, str] = {}
    for candidate in sorted(candidates):
        try:
            predictions[candidate] = predict(profile, candidate, candidates[candidate], workload)
        except ProfileError as e:
            predictions[candidate], reasons[candidate] = None, str(e)
    timed = [c for c in sorted(candidates) if predictions[c] is not None]
    chosen = min(timed, key=lambda c: predictions[c].objective(objective)) if timed else None
    return Choice(chosen, predictions, reasons)


def _ms(x: float) -> float:
    return float(f"{x:.6g}")


def record(profile: Profile | None, workload: Workload, objective: str, candidates: dict[Candidate, Work], choice: Choice | None, note: str | None = None) -> dict[str, Any]:
    """The plan's ``meta.predictions``: the profile, the workload, the objective, the winner, and per
    candidate its variant, tiles, reordering, work and predicted times (ms; None if not predicted)."""
    entries = {}
    for candidate in sorted(candidates):
        prediction = choice.predictions.get(candidate) if choice is not None else None
        entry: dict[str, Any] = {
            "variant": candidate.variant,
            "block": list(candidate.block),
            "reordered": candidate.reordered,
            "pieces": candidate.pieces,
            "work": candidates[candidate].as_dict(),
            "fwd_ms": _ms(prediction.fwd_ms) if prediction else None,
            "fwd_bwd_ms": _ms(prediction.fwd_bwd_ms) if prediction else None,
        }
        if choice is not None and candidate in choice.reasons:
            entry["note"] = choice.reasons[candidate]
        entries[candidate.name] = entry
    out: dict[str, Any] = {
        "profile": profile.name if profile else None,
        "profile_sha256": profile.sha256 if profile else None,
        "workload": workload.as_dict(),
        "objective": objective,
        "chosen": choice.chosen.name if choice is not None and choice.chosen is not None else None,
        "candidates": entries,
    }
    if note:
        out["note"] = note
    return out


@dataclass(frozen=True)
class Recorded:
    """One candidate as a plan recorded it: what it is and the work it takes."""

    candidate: Candidate
    work: Work


def recorded(plan: Plan) -> list[Recorded]:
    """The candidates a plan's ``predictions`` record, checked (PlanError when malformed)."""
    pred = plan.predictions or {}
    entries = pred.get("candidates", {})
    if not isinstance(entries, dict):
        raise PlanError("plan predictions.candidates must be a map")
    out = []
    for name, e in entries.items():
        if not isinstance(e, dict) or e.get("variant") not in ("block_sparse", "intervals", "dense", "dense_causal"):
            raise PlanError(f"plan prediction {name!r} has no valid variant")
        block = e.get("block")
        if not (isinstance(block, list) and len(block) == 2 and all(_is_count(v) for v in block)) or not isinstance(e.get("reordered"), bool):
            raise PlanError(f"plan prediction {name!r} needs a block [m, n] and a reordered flag")
        pieces = e.get("pieces", False)
        if not isinstance(pieces, bool):
            raise PlanError(f"plan prediction {name!r} has a pieces flag that is not a boolean")
        out.append(Recorded(Candidate(e["variant"], tuple(block), e["reordered"], pieces), Work.from_dict(e.get("work"))))
    return out


def reevaluate(plan: Plan, profile: Profile, workload: Workload) -> dict[str, Prediction | str]:
    """Each recorded candidate's prediction for another workload or profile (or why there is none);
    the plan itself when it records none (compiled without the model)."""
    out: dict[str, Prediction | str] = {}
    for r in recorded(plan) or [Recorded(plan_candidate(plan), work_of(plan))]:
        try:
            out[r.candidate.name] = predict(profile, r.candidate, r.work, workload)
        except ProfileError as e:
            out[r.candidate.name] = str(e)
    return out


def work_of(plan: Plan) -> Work:
    """A compiled plan's own work (its lists; the visible pairs of a dense plan)."""
    work = Work(plan.q_len, plan.kv_len, plan.batch, plan.heads, plan.visible_pairs)
    if plan.variant in ("dense", "dense_causal"):
        return work
    lists = []
    for prefix in ("row", "col"):
        full = plan.arrays[f"{prefix}_full"].astype(np.int64)
        lists.append(ListWork.from_counts(full, np.diff(plan.arrays[f"{prefix}_ptr"].astype(np.int64)) - full))
    return Work(work.q_len, work.kv_len, work.batch, work.heads, work.pairs, *lists, pieces_work(plan.arrays["pieces"]))


def pieces_work(pieces: np.ndarray) -> tuple[tuple[bool, int], ...] | None:
    """``(causal, pairs)`` of each dense piece (``[n, 5]`` rows as in a plan), None for no pieces."""
    if pieces.shape[0] == 0:
        return None
    return tuple((bool(c), int(p)) for c, p in zip(pieces[:, 4], piece_pairs(pieces)))


def plan_candidate(plan: Plan) -> Candidate:
    """The candidate a plan is."""
    return Candidate(plan.variant, (plan.block_m, plan.block_n), plan.reordered, plan.arrays["pieces"].shape[0] > 0)
