"""A validated plan moved onto a device once: the tensors every backend walks at each step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskc.runtime.format import Plan

_INDEX_ARRAYS = ("row_ptr", "row_full", "row_col", "row_tile", "col_ptr", "col_full", "col_row", "col_tile")


@dataclass(frozen=True)
class DevicePlan:
    """The plan's lists as int32 tensors on one device.

    Slice ``s = b * heads + h`` (mask batch and heads; 1 where the mask broadcasts). Query tile row
    ``m`` of slice ``s`` visits entries ``row_ptr[s * tiles_m + m] : row_ptr[s * tiles_m + m + 1]``
    of ``row_col``/``row_tile``; the first ``row_full[...]`` of them are full tiles (tile id -1), the
    rest partial tiles. The column lists are the same for key tiles, for the dK/dV pass.

    How a partial tile is masked depends on ``variant``:

    - ``"block_sparse"``: its bits are ``bitmaps[tile]``, ``[block_m, block_n // 32]`` int32 words;
      bit ``j % 32`` of word ``j // 32`` of row ``i`` is mask[i, j] (LSB first). ``intervals`` is
      empty, ``[0, 4, kv_len]``.
    - ``"intervals"``: its tile id is -2 and ``bitmaps`` is empty, ``[0, block_m, block_n // 32]``.
      ``intervals`` is int32 ``[batch * heads, 4, kv_len]``: for slice ``s`` and key ``j``, query
      ``i`` is masked iff ``LTS <= i < LTE`` or ``UTS <= i < UTE``, where LTS, LTE, UTS, UTE are
      ``intervals[s, 0..3, j]``.
    """

    q_len: int
    kv_len: int
    batch: int
    heads: int
    block_m: int
    block_n: int
    row_ptr: torch.Tensor
    row_full: torch.Tensor
    row_col: torch.Tensor
    row_tile: torch.Tensor
    col_ptr: torch.Tensor
    col_full: torch.Tensor
    col_row: torch.Tensor
    col_tile: torch.Tensor
    bitmaps: torch.Tensor
    intervals: torch.Tensor
    variant: str

    @property
    def tiles_m(self) -> int:
        return -(-self.q_len // self.block_m)

    @property
    def tiles_n(self) -> int:
        return -(-self.kv_len // self.block_n)

    @classmethod
    def from_plan(cls, plan: Plan, device: torch.device | str | None = None) -> "DevicePlan":
        device = torch.device(device) if device is not None else torch.device("cpu")
        tensors = {name: torch.from_numpy(plan.arrays[name].astype("<i4")).to(device) for name in _INDEX_ARRAYS}
        bitmaps = torch.from_numpy(plan.arrays["bitmaps"].view("<i4").copy()).to(device)
        intervals = torch.from_numpy(plan.arrays["intervals"].astype("<i4")).to(device)
        return cls(
            q_len=plan.q_len,
            kv_len=plan.kv_len,
            batch=plan.batch,
            heads=plan.heads,
            block_m=plan.block_m,
            block_n=plan.block_n,
            bitmaps=bitmaps,
            intervals=intervals,
            variant=plan.variant,
            **tensors,
        )

    def slice_index(self, b: int, h: int) -> int:
        """The mask slice that query batch ``b`` and query head ``h`` read (broadcast where 1)."""
        return (b if self.batch > 1 else 0) * self.heads + (h if self.heads > 1 else 0)
