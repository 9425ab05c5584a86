"""A plan's tensors on one device: what every backend walks at each step.

A static plan is moved here once (:meth:`DevicePlan.from_plan`); a mask family bound to a step's
data gives one per step (``maskc.runtime.bound``). Both describe their lists in one layout, so the
kernels and the reference backend cannot tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from maskc.runtime.format import DENSE_VARIANTS, Plan, TileGrid, list_traits

_ENTRY_ARRAYS = ("row_full", "row_col", "row_tile", "col_full", "col_row", "col_tile")


@dataclass(frozen=True, eq=False)
class ListTensors:
    """The row and column lists as the kernels walk them (described at :class:`DevicePlan`): int32
    tensors on one device, a static plan's or a bound step's (``maskc.runtime.family.TileLists``)."""

    row_lo: torch.Tensor
    row_hi: torch.Tensor
    row_full: torch.Tensor
    row_col: torch.Tensor
    row_tile: torch.Tensor
    col_lo: torch.Tensor
    col_hi: torch.Tensor
    col_full: torch.Tensor
    col_row: torch.Tensor
    col_tile: torch.Tensor

    def list_tensors(self) -> dict[str, torch.Tensor]:
        """The ten list tensors by name."""
        return {name: getattr(self, name) for name in _LIST_TENSORS}


_LIST_TENSORS = tuple(f.name for f in fields(ListTensors))  # read at import: a trace takes names, not fields()


@dataclass(frozen=True)
class DevicePlan(ListTensors, TileGrid):
    """The plan's lists as int32 tensors on one device.

    Slice ``s = b * heads + h`` (mask batch and heads; 1 where the mask broadcasts). Query tile row
    ``m`` of slice ``s`` is list ``r = s * tiles_m + m``: it visits entries ``row_lo[r] : row_hi[r]``
    of ``row_col``/``row_tile``; the first ``row_full[r]`` of them are full tiles (tile id -1), the
    rest partial tiles. A static plan's ``row_lo``/``row_hi`` are its CSR offsets
    (``row_ptr[:-1]``, ``row_ptr[1:]``); a bound family's are its ELL lists' own
    (``maskc.runtime.family.TileLists``). The column lists are the same for key tiles, for the
    dK/dV pass.

    How a partial tile is masked depends on ``variant``:

    - ``"block_sparse"``: its bits are ``bitmaps[tile]``, ``[block_m, block_n // 32]`` int32 words;
      bit ``j % 32`` of word ``j // 32`` of row ``i`` is mask[i, j] (LSB first). ``intervals`` is
      empty, ``[0, 4, kv_len]``.
    - ``"intervals"``: its tile id is -2 and ``bitmaps`` is empty, ``[0, block_m, block_n // 32]``.
      ``intervals`` is int32 ``[batch * heads, 4, kv_len]``: for slice ``s`` and key ``j``, query
      ``i`` is masked iff ``LTS <= i < LTE`` or ``UTS <= i < UTE``, where LTS, LTE, UTS, UTE are
      ``intervals[s, 0..3, j]``.
    - ``"dense"``/``"dense_causal"``: run by a dense library kernel, never by the tile kernels;
      every list, ``bitmaps`` and ``intervals`` is empty.

    Launch order (all int32, empty when the plan has none, meaning ascending order):

    - ``row_order`` ``[batch * heads * tiles_m]``: for slice ``s``, ``row_order[s * tiles_m + i]``
      is the query-tile row the ``i``-th forward/dQ program of that slice should take (heaviest
      rows first). Each slice's segment is a permutation of ``[0, tiles_m)``.
    - ``col_order`` ``[batch * heads * tiles_n]``: the same for the key-tile columns of dK/dV.
    - ``rows_unbalanced``, ``rows_shared`` (and ``cols_...``): traits of the lists
      (:func:`list_traits`), from which each launch chooses its grid: a static plan's computed
      once from its lists, a family's decided by the compiler for the family.

    Token order, per slice and per side: ``perm_q`` (int32 ``[batch * heads, q_len]``) gives the
    caller's query token at each of the slice's plan positions, ``perm_k`` (``[batch * heads,
    kv_len]``) its key token; the lists describe the mask ``M[s, perm_q[s, i], perm_k[s, j]]``.
    A static plan has one permutation for every slice and both sides: both are the same stride-0
    view of it (``perm_q.stride(0) == 0``). Not reordered, both are empty (``[0, q_len]``,
    ``[0, kv_len]``). The kernels take q, k, v in the caller's order and read and write every row
    through them (q, o, dq rows through ``perm_q``; k, v, dk, dv rows through ``perm_k``); the
    log-sum-exp stays in plan positions. The reference backend gathers into plan order and back.
    The query heads of one GQA group must share one key order (the dK/dV kernel walks them over
    their key/value head's keys once): ``maskc.runtime.bound`` binds keys per key/value head.

    ``pieces``: the plan's dense pieces ``(q0, q1, k0, k1, causal)`` as host integers (they slice the
    inputs), empty when the backward runs through the tile lists (``maskc.runtime.pieces``).
    """

    bitmaps: torch.Tensor
    intervals: torch.Tensor
    variant: str
    row_order: torch.Tensor
    col_order: torch.Tensor
    perm_q: torch.Tensor
    perm_k: torch.Tensor
    rows_unbalanced: bool = False
    rows_shared: bool = False
    cols_unbalanced: bool = False
    cols_shared: bool = False
    pieces: tuple[tuple[int, int, int, int, bool], ...] = ()

    @property
    def reordered(self) -> bool:
        return self.perm_q.numel() > 0

    @property
    def row_lists(self) -> tuple[torch.Tensor, ...]:
        """What the forward and dQ kernels walk, in the order they take it: the row lists' entry
        ranges and entries, the partial tiles' bitmaps and intervals, the launch order of the rows,
        the permutations of the queries and of the keys."""
        return (self.row_lo, self.row_hi, self.row_full, self.row_col, self.row_tile, self.bitmaps, self.intervals,
                self.row_order, self.perm_q, self.perm_k)

    @property
    def col_lists(self) -> tuple[torch.Tensor, ...]:
        """:attr:`row_lists` for the dK/dV kernel: the column lists and the columns' launch order."""
        return (self.col_lo, self.col_hi, self.col_full, self.col_row, self.col_tile, self.bitmaps, self.intervals,
                self.col_order, self.perm_q, self.perm_k)

    @property
    def perm_strides(self) -> tuple[int, int]:
        """How far apart two slices' permutations are in ``perm_q`` and ``perm_k`` (0: one for all)."""
        return tuple(perm.stride(0) if perm.shape[0] > 1 else 0 for perm in (self.perm_q, self.perm_k))

    @property
    def scalars(self) -> tuple[int, int, int, int, bool, tuple[bool, bool, bool, bool]]:
        """What the kernels need of the plan besides :attr:`row_lists` and :attr:`col_lists`, as an
        operator takes it (``maskc.runtime.ops``): the tile size, the mask's batch and heads, whether
        partial tiles are masked by intervals, and the lists' traits."""
        traits = (self.rows_unbalanced, self.rows_shared, self.cols_unbalanced, self.cols_shared)
        return self.block_m, self.block_n, self.batch, self.heads, self.variant == "intervals", traits

    @classmethod
    def from_lists(cls, rows: tuple[torch.Tensor, ...], cols: tuple[torch.Tensor, ...], q_len: int, kv_len: int, block_m: int,
                   block_n: int, batch: int, heads: int, intervals: bool, traits: tuple[bool, bool, bool, bool]) -> "DevicePlan":
        """The plan that :attr:`row_lists`, :attr:`col_lists` and :attr:`scalars` came from (an
        operator's inputs), for mask lengths ``q_len x kv_len``; it has no dense pieces."""
        row_lo, row_hi, row_full, row_col, row_tile, bitmaps, intervals_t, row_order, perm_q, perm_k = rows
        col_lo, col_hi, col_full, col_row, col_tile, _, _, col_order, _, _ = cols
        return cls(
            q_len=q_len, kv_len=kv_len, batch=batch, heads=heads, block_m=block_m, block_n=block_n,
            row_lo=row_lo, row_hi=row_hi, row_full=row_full, row_col=row_col, row_tile=row_tile,
            col_lo=col_lo, col_hi=col_hi, col_full=col_full, col_row=col_row, col_tile=col_tile,
            bitmaps=bitmaps, intervals=intervals_t, variant="intervals" if intervals else "block_sparse",
            row_order=row_order, col_order=col_order, perm_q=perm_q, perm_k=perm_k,
            rows_unbalanced=traits[0], rows_shared=traits[1], cols_unbalanced=traits[2], cols_shared=traits[3],
        )

    @classmethod
    def from_plan(cls, plan: Plan, device: torch.device | str | None = None) -> "DevicePlan":
        device = torch.device(device) if device is not None else torch.device("cpu")
        dense = plan.variant in DENSE_VARIANTS  # derived lists are never walked: leave them on the host

        def to_device(a) -> torch.Tensor:
            return torch.from_numpy(a.astype("<i4")).to(device)

        tensors = {name: to_device(plan.arrays[name][:0] if dense else plan.arrays[name]) for name in _ENTRY_ARRAYS}
        for side in ("row", "col"):  # list r's entries are ptr[r] : ptr[r + 1]
            ptr = plan.arrays[f"{side}_ptr"][:0] if dense else plan.arrays[f"{side}_ptr"]
            # two tensors, not two views of one: a view one element in is not 16-byte aligned, and
            # torch.compile copies an unaligned input to an aligned buffer at every call
            tensors[f"{side}_lo"], tensors[f"{side}_hi"] = to_device(ptr[:-1]), to_device(ptr[1:])
        bitmaps = torch.from_numpy(plan.arrays["bitmaps"].view("<i4").copy()).to(device)
        perm = to_device(plan.arrays["perm"])  # one permutation (of a square mask) for every slice, queries and keys alike
        rows = list_traits(plan.arrays["row_ptr"], plan.tiles_n) if not dense else (False, False)
        cols = list_traits(plan.arrays["col_ptr"], plan.tiles_m) if not dense else (False, False)
        dplan = cls(
            q_len=plan.q_len,
            kv_len=plan.kv_len,
            batch=plan.batch,
            heads=plan.heads,
            block_m=plan.block_m,
            block_n=plan.block_n,
            bitmaps=bitmaps,
            intervals=to_device(plan.arrays["intervals"]),
            variant=plan.variant,
            row_order=to_device(plan.arrays["row_order"]),
            col_order=to_device(plan.arrays["col_order"]),
            perm_q=_slice_view(perm, plan.batch * plan.heads, plan.q_len),
            perm_k=_slice_view(perm, plan.batch * plan.heads, plan.kv_len),
            rows_unbalanced=rows[0], rows_shared=rows[1], cols_unbalanced=cols[0], cols_shared=cols[1],
            pieces=tuple((int(q0), int(q1), int(k0), int(k1), bool(c)) for q0, q1, k0, k1, c in plan.arrays["pieces"]),
            **tensors,
        )
        for t in (*dplan.row_lists, *dplan.col_lists):  # every tensor a call passes (views are inputs of their own)
            _mark_static(t)
        return dplan

    def slice_index(self, b: int, h: int) -> int:
        """The mask slice that query batch ``b`` and query head ``h`` read (broadcast where 1)."""
        return (b if self.batch > 1 else 0) * self.heads + (h if self.heads > 1 else 0)


def _slice_view(perm: torch.Tensor, slices: int, length: int) -> torch.Tensor:
    """A static plan's one permutation as every slice's (a stride-0 view), or ``[0, length]`` if it has none."""
    return perm.expand(slices, length) if perm.numel() else perm.view(0, length)


def _mark_static(t: torch.Tensor) -> None:
    """Mark ``t`` for ``torch.compile`` as keeping its address while the plan lives: what
    ``torch._dynamo.mark_static_address(t, guard=False)`` records, without importing Dynamo (which
    takes seconds) in programs that never compile. Under ``mode="reduce-overhead"`` a CUDA graph
    then reads the plan's tensors where they are, where it would otherwise copy each of them into
    its own buffer at every replay; another plan's tensors make it record a new graph."""
    t._dynamo_static_input_type = "unguarded"
