"""The :class:`FamilyPlan`: a mask family's decisions, made once, for masks that change every step.

A family plan holds no mask. It names a family (packed documents, shared-prefix groups, token
trees, hash buckets, query/key dropping) with its parameters and its length bound, and the
decisions the compiler made for it once, ahead of time: the tile size, the interval kernel, the
launch grid's traits. Each step the runtime binds it to that step's data on the device
(``maskc.runtime.family``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from maskc.runtime.format.plan import MAX_DIM, PlanError, _frozen
from maskc.runtime.format.policy import TILE_SIZES

FAMILY_KINDS: dict[str, dict[str, tuple[type, ...]]] = {
    "documents": {"causal": (bool,), "window": (int, type(None)), "prefix": (bool,)},
    "shared_prefix": {},
    "token_tree": {"max_depth": (int,), "preorder": (bool,)},
    "hash_buckets": {"causal": (bool,)},
    "qk_dropping": {"causal": (bool,)},
}
"""Family kind -> its parameters and their types (every one required)."""

SORTED_FAMILIES = ("hash_buckets", "qk_dropping")  # bound in a sorted token order, per head
TRAITS = ("rows_unbalanced", "rows_shared", "cols_unbalanced", "cols_shared")  # of the family's lists, decided once


@dataclass(frozen=True, eq=False)
class FamilyPlan:
    """A mask family compiled once: ``kind`` and its ``params`` (:data:`FAMILY_KINDS`), the longest
    sequence it binds (``max_len`` queries and keys), its ``block_m × block_n`` tiles, and the
    ``traits`` of its lists from which the kernels choose their launch grid (:data:`TRAITS`).

    Example: ``FamilyPlan("documents", {"causal": True, "window": None, "prefix": False}, 16384,
    64, 64, {...})`` binds any packed-document batch of up to 16384 tokens per row, given each
    step as document ids, Hugging Face ``position_ids`` or ``cu_seqlens``, into 64×64 tiles.
    ``options`` records how it was compiled and ``predictions`` the cost model's comparison for a
    representative mask of the family (plain data).
    """

    kind: str
    params: Mapping[str, Any]
    max_len: int
    block_m: int
    block_n: int
    traits: Mapping[str, bool]
    options: Mapping[str, Any] = field(default_factory=dict)
    predictions: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("params", "traits", "options"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        if self.predictions is not None:
            object.__setattr__(self, "predictions", _frozen(self.predictions))

    @property
    def sorted(self) -> bool:
        """Whether a bound step runs in a sorted token order (per-slice permutations)."""
        return self.kind in SORTED_FAMILIES

    def to_bytes(self) -> bytes:
        from maskc.runtime.format.codec import encode

        return encode(self)

    def save(self, path: Any) -> None:
        from maskc.runtime.format.files import atomic_write

        atomic_write(path, self.to_bytes())

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"FamilyPlan({self.kind}{', ' + params if params else ''}; up to {self.max_len} tokens, tiles {self.block_m}x{self.block_n})"


def validate_family(plan: FamilyPlan) -> None:
    """Check a family plan's kind, parameters, bounds, tiles and traits; PlanError on the first fault."""
    if plan.kind not in FAMILY_KINDS:
        raise PlanError(f"family kind {plan.kind!r} is not one of {', '.join(FAMILY_KINDS)}")
    types = FAMILY_KINDS[plan.kind]
    if set(plan.params) != set(types):
        raise PlanError(f"family {plan.kind} parameters are {sorted(plan.params)}, expected {sorted(types)}")
    for name, allowed in types.items():
        value = plan.params[name]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise PlanError(f"family {plan.kind} parameter {name}={value!r} is not of type {' or '.join(t.__name__ for t in allowed)}")
        if isinstance(value, int) and not isinstance(value, bool) and not 1 <= value <= MAX_DIM:
            raise PlanError(f"family {plan.kind} parameter {name}={value} is out of range [1, {MAX_DIM}]")
    if not isinstance(plan.max_len, int) or isinstance(plan.max_len, bool) or not 1 <= plan.max_len <= MAX_DIM:
        raise PlanError(f"family max_len={plan.max_len!r} is out of range [1, {MAX_DIM}]")
    for name in ("block_m", "block_n"):
        if getattr(plan, name) not in TILE_SIZES:
            raise PlanError(f"family {name}={getattr(plan, name)!r} is not one of {TILE_SIZES}")
    if set(plan.traits) != set(TRAITS) or not all(isinstance(v, bool) for v in plan.traits.values()):
        raise PlanError(f"family traits must be the booleans {', '.join(TRAITS)}")
