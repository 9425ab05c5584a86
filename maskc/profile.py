"""Profiles: a GPU's measured cost-model constants, and the workload they are looked up for.

``load_profile(name_or_path)`` reads ``maskc/profiles/<GPU name>.json`` or a path. The compiler's
profile is ``MASKC_PROFILE`` (a name or path; ``none`` for no model), else the shipped H100 profile
when the package has one. Without a profile there is no model: :func:`load_profile` raises
:class:`ProfileError`, and the compiler falls back to its fixed rules and says so in the plan.

Every constant is per (tile size, head-dim bucket, dtype) and per pass, fitted by ``maskc
calibrate`` on the GPU and stored in the profile (JSON) with the measurements it was fitted to, so
``maskc calibrate --refit`` can fit a changed model again without a GPU. What the constants mean is
:mod:`maskc.model`'s docstring.
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

from maskc.runtime.format import DTYPES
from maskc.work import ListWork, is_count

SCHEMA = "maskc-profile/3"
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_PROFILE = "NVIDIA H100 80GB HBM3"
ENV_PROFILE = "MASKC_PROFILE"
NO_PROFILE = "none"
KERNELS = ("block_sparse", "intervals")
PASSES = ("fwd", "bwd")
LAUNCHES = {"fwd": ("rows",), "bwd": ("dq", "dkdv")}
"""The tile-kernel launches of each pass and the lists they walk: rows, rows, columns."""
HEAD_DIM_BUCKETS = (32, 64, 128, 256)  # the kernels pad the head dim to the next of these


class ProfileError(ValueError):
    """A profile is missing, unreadable, or has no constants for what is asked."""


def head_dim_bucket(head_dim: int) -> int:
    """The padded head dim the kernels compute with (the next of :data:`HEAD_DIM_BUCKETS`)."""
    for bucket in HEAD_DIM_BUCKETS:
        if head_dim <= bucket:
            return bucket
    raise ProfileError(f"head dim {head_dim} is larger than the largest supported ({HEAD_DIM_BUCKETS[-1]})")


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


@dataclass(frozen=True)
class ListCosts:
    """The per-list constants of one kernel launch (ms): see :mod:`maskc.model`."""

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
    if len(block) != 2 or not all(is_count(v) for v in block):
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
