"""Binding one step: visible runs to the tensors the attention kernels read.

:func:`bind` takes the :class:`~maskc.runtime.family.runs.Runs` a family binder made from the
step's data and the family's tile size, and returns a :class:`Binding`: canonical interval vectors,
ELL tile lists and the permutations of a sorted family. Its output shapes depend only on the sizes
and the tile size, never on the data, and nothing in it reads a tensor's values on the host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from maskc.runtime.family.checks import BindError, index_tensor, positive, same_device, same_shape
from maskc.runtime.family.lists import TileLists, lists_torch
from maskc.runtime.family.runs import Runs, intervals_from_runs
from maskc.runtime.format import MAX_DERIVED_TILES, TILE_SIZES

BACKENDS = ("auto", "triton", "reference")


@dataclass(frozen=True)
class Binding:
    """One step's mask, ready for the interval kernels.

    ``intervals`` (int32 ``[batch * heads, 4, kv_len]``) are the canonical FlashMask vectors
    (``plans/FORMAT.md``) of the bound mask, ``lists`` its ELL tile lists. ``perm_q``/``perm_k``
    (int32 ``[slices, q_len]``/``[slices, kv_len]``, or None) are the caller's token at each sorted
    position for the sorted families: intervals and lists then describe
    ``M'[s, i, j] = M[s, perm_q[s, i], perm_k[s, j]]``.
    """

    batch: int
    heads: int
    intervals: torch.Tensor
    lists: TileLists
    perm_q: torch.Tensor | None
    perm_k: torch.Tensor | None


def bind(runs: Runs, block_m: int, block_n: int, backend: str = "auto") -> Binding:
    """The interval vectors and tile lists of ``runs`` for ``block_m x block_n`` tiles.

    ``backend``: ``"triton"`` (three kernel launches; CPU tensors need ``TRITON_INTERPRET=1``),
    ``"reference"`` (torch operations only), or ``"auto"``: Triton on CUDA tensors and under the
    interpreter, the reference elsewhere. Both give the same vectors and the same list entries.
    """
    _check(runs, block_m, block_n)
    if use_triton(backend, runs.start):
        from maskc.runtime.family.kernels import bind_triton

        intervals, lists = bind_triton(runs.start, runs.end, runs.q_len, block_m, block_n)
    else:
        intervals = intervals_from_runs(runs.start, runs.end, runs.q_len)
        lists = lists_torch(intervals, runs.q_len, block_m, block_n)
    return Binding(runs.batch, runs.heads, intervals, lists, runs.perm_q, runs.perm_k)


def _check(runs: Runs, block_m: int, block_n: int) -> None:
    """Refuse malformed runs or an unknown tile size, and bound the lists' memory before allocating it."""
    positive(runs.q_len, "q_len")
    start = index_tensor(runs.start, "runs.start", 2)
    same_shape(index_tensor(runs.end, "runs.end", 2), "runs.end", start.shape, "runs.start")
    same_device(runs.end, "runs.end", start.device, "runs.start")
    if start.shape[0] != runs.slices:
        raise BindError(f"runs.start has {start.shape[0]} slices, but batch {runs.batch} x heads {runs.heads} make {runs.slices}")
    for name, length in (("perm_q", runs.q_len), ("perm_k", runs.kv_len)):
        perm = getattr(runs, name)
        if perm is not None and (index_tensor(perm, f"runs.{name}", 2).shape != (runs.slices, length) or perm.device != start.device):
            raise BindError(f"runs.{name} must be [{runs.slices}, {length}] on {start.device}, got {list(perm.shape)} on {perm.device}")
    if block_m not in TILE_SIZES or block_n not in TILE_SIZES:
        sizes = ", ".join(map(str, TILE_SIZES))
        raise BindError(f"tile size {block_m}x{block_n} is not supported; each side must be one of {sizes}")
    tiles = runs.slices * -(-runs.q_len // block_m) * -(-runs.kv_len // block_n)
    if tiles > MAX_DERIVED_TILES:  # the bound a plan reader puts on lists derived from intervals
        raise BindError(f"{runs.slices} slices of {runs.q_len}x{runs.kv_len} in {block_m}x{block_n} tiles are "
                        f"{tiles} tiles; at most {MAX_DERIVED_TILES} fit")


def use_triton(backend: str, like: torch.Tensor) -> bool:
    """Whether ``backend`` runs the Triton kernels for tensors like ``like`` (``"auto"``: on CUDA
    tensors and under the Triton interpreter); a BindError for an unknown backend."""
    if backend not in BACKENDS:
        raise BindError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return like.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    return backend == "triton"
