"""Compile options, parsed and checked once into a frozen :class:`CompileOptions`.

The Python API (``maskc.compile(mask, block=..., ...)``) and the CLI both build one; the compiler's
stages read it and the plan cache keys on :meth:`CompileOptions.cache_fields`. With ``block="auto"``
the cost model's profile is resolved here, once, to a :class:`maskc.profile.Profile` or None (no
model); with an explicit tile size no profile is read at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from maskc.errors import MaskError
from maskc.model import OBJECTIVES
from maskc.profile import Profile, Workload, resolve_profile
from maskc.runtime.format import TILE_SIZES

AUTO = "auto"
AUTO_BLOCKS = ((64, 64), (128, 128))  # the tile sizes the cost model compares
FALLBACK_BLOCK = (128, 128)  # block="auto" without a profile
VARIANTS = ("auto", "intervals", "block_sparse", "dense", "dense_causal")
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


def check_option(value: Any, allowed: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``allowed``, else a MaskError naming the option."""
    if value not in allowed:
        raise MaskError(f"{what} {value!r} is not one of {', '.join(allowed)}")
    return value


def check_variant(variant: Any) -> str:
    """``variant`` if it is one of :data:`VARIANTS`, else a MaskError."""
    return check_option(variant, VARIANTS, "variant")


@dataclass(frozen=True)
class CompileOptions:
    """Everything a compile is asked, checked (see :func:`maskc.compile` for what each option means).

    ``profile`` is the resolved cost-model profile, None when there is no model: always None with an
    explicit ``block``, whose compile never consults one."""

    block: str | tuple[int, int] = AUTO
    variant: str = "auto"
    reorder: str = "auto"
    schedule: str = "lpt"
    backward: str = "auto"
    objective: str = "fwd_bwd"
    workload: Workload = Workload()
    profile: Profile | None = None

    @classmethod
    def of(cls, block: Any = AUTO, variant: str = "auto", reorder: str = "auto", schedule: str = "lpt", backward: str = "auto",
           objective: str = "fwd_bwd", workload: Workload | None = None,
           profile: Profile | str | os.PathLike | None = None) -> "CompileOptions":
        """Parse and check each option; ``profile`` as :func:`maskc.profile.resolve_profile` takes it
        (None: ``$MASKC_PROFILE`` or the shipped one), resolved only for ``block="auto"``."""
        block = parse_block_option(block)
        return cls(block, check_variant(variant), check_option(reorder, REORDERS, "reorder"), check_option(schedule, SCHEDULES, "schedule"),
                   check_option(backward, BACKWARDS, "backward"), check_option(objective, OBJECTIVES, "objective"), workload or Workload(),
                   resolve_profile(profile) if block == AUTO else None)

    @property
    def modelled(self) -> bool:
        """Whether the cost model decides: ``block="auto"`` with a profile."""
        return self.block == AUTO and self.profile is not None

    @property
    def passes(self) -> int:
        """The reads of rows a compile may make, for its progress bar: with the model, the mask, its
        reordering and the build; to reorder without it, the mask and the build; else one."""
        return 3 if self.modelled else 2 if self.reorder == "rcm" else 1

    @property
    def fixed_block(self) -> tuple[int, int]:
        """The tile size of a compile without the model: the explicit one, or the fallback."""
        return FALLBACK_BLOCK if self.block == AUTO else self.block

    def cache_fields(self) -> dict[str, Any]:
        """The options as plain data, for the plan cache's key: with ``block="auto"`` the profile by
        its SHA-256 (a new profile compiles afresh), the workload and the objective too."""
        fields: dict[str, Any] = {"block": self.block if self.block == AUTO else list(self.block), "variant": self.variant,
                                  "reorder": self.reorder, "schedule": self.schedule, "backward": self.backward}
        if self.block == AUTO:
            fields.update(profile=self.profile.sha256 if self.profile else None, workload=self.workload.as_dict(), objective=self.objective)
        return fields
