"""What every bound family must satisfy, checked against the compiler and a dense numpy mask.

Imported by the family tests (``tests/test_family_*.py``). A binding is right when, in its sorted
coordinates (identity for unsorted families), its intervals are the canonical vectors the compiler
writes for the same dense mask and its ELL lists hold exactly the plan's CSR lists, list by list.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import maskc
from maskc.runtime.family import Binding, TileLists, bind, lists_csr
from maskc.runtime.family import kernels as family_kernels
from maskc.runtime.format import LIST_ARRAYS, tile_lists, visible_rows

TRITON = "triton"
REFERENCE = "reference"
POISON = -77  # what a kernel output holds before the kernels write it (no index, class or tile id; fits int8)
LIST_TENSORS = tuple(f.name for f in fields(TileLists) if f.type == "torch.Tensor")


def poison_outputs(monkeypatch) -> None:
    """Every Triton output starts as POISON: an entry the kernels forget to write cannot pass."""

    def poisoned(shape, dtype, device):
        return torch.full(shape, POISON, dtype=dtype, device=device)

    monkeypatch.setattr(family_kernels, "empty", poisoned)


def static_plan(source, block_m: int, block_n: int) -> maskc.Plan:
    """The compiler's interval plan of ``source`` (a mask source, or a dense ``[S, Nq, Nk]`` mask),
    with nothing reordered or scheduled."""
    mask = source[:, None] if isinstance(source, np.ndarray) else source
    return maskc.compile(mask, block=(block_m, block_n), variant="intervals", schedule="none",
                         reorder="none", profile="none", backward="tiles")


def permuted(mask: np.ndarray, binding: Binding) -> np.ndarray:
    """The caller's ``[S, Nq, Nk]`` mask in the binding's sorted coordinates; checks the permutations."""
    if binding.perm_q is None:
        assert binding.perm_k is None
        return mask
    perm_q, perm_k = binding.perm_q.numpy(), binding.perm_k.numpy()
    assert binding.perm_q.dtype == binding.perm_k.dtype == torch.int32
    for perm, length in ((perm_q, mask.shape[1]), (perm_k, mask.shape[2])):
        assert perm.shape == (mask.shape[0], length)
        assert (np.sort(perm, axis=1) == np.arange(length)).all(), "a permutation is not a permutation"
    return np.stack([m[np.ix_(pq, pk)] for m, pq, pk in zip(mask, perm_q, perm_k)])


def assert_bound(binding: Binding, mask: np.ndarray) -> None:
    """``binding`` binds the caller's dense mask ``[S, Nq, Nk]`` exactly (see the module)."""
    expected = permuted(mask, binding)
    intervals = binding.intervals.numpy()
    assert binding.intervals.dtype == torch.int32 and intervals.shape == (mask.shape[0], 4, mask.shape[2])
    bound = np.stack([visible_rows(iv, 0, mask.shape[1]) for iv in intervals])
    assert np.array_equal(bound, expected), "the bound mask differs from the dense mask"
    assert_same_as_plan(binding, static_plan(expected, binding.lists.block_m, binding.lists.block_n))


def assert_same_as_plan(binding: Binding, plan: maskc.Plan) -> None:
    """``binding`` has the static interval plan's vectors, and its ELL lists hold the plan's CSR lists."""
    lists = binding.lists
    intervals = binding.intervals.numpy()
    assert np.array_equal(intervals, plan.arrays["intervals"]), "the intervals are not the compiler's canonical vectors"
    csr = lists_csr(lists)
    derived = tile_lists(intervals, plan.q_len, lists.block_m, lists.block_n)
    for name in LIST_ARRAYS:
        assert np.array_equal(csr[name], derived[name]), f"{name} differs from the derived lists"
        assert np.array_equal(csr[name], plan.arrays[name]), f"{name} differs from the static plan's"
    for name in LIST_TENSORS:
        assert getattr(lists, name).dtype == torch.int32, name


def bind_both(runs, block_m: int, block_n: int, mask: np.ndarray) -> None:
    """Bind through both backends; each must bind ``mask`` exactly. ``runs`` is Runs, or a binder
    that takes ``backend`` (then the runs are made by each backend too)."""
    for backend in (REFERENCE, TRITON):
        made = runs(backend=backend) if callable(runs) else runs
        assert_bound(bind(made, block_m, block_n, backend), mask)


FORBIDDEN = {
    "aten::_local_scalar_dense",  # .item(), int(t), bool(t): a host synchronisation
    "aten::is_nonzero",
    "aten::equal",
    "aten::nonzero",  # output shape depends on the data
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_consecutive",
    "aten::unique_dim",
    "aten::repeat_interleave",
}


class NoHostSync(TorchDispatchMode):
    """Fails on any torch operation that reads values on the host or whose output shape depends on
    them (including indexing with a bool mask), and records every operation it saw."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        self.seen.append(name)
        if name in FORBIDDEN:
            raise AssertionError(f"{name} reads tensor values on the host")
        if name in ("aten::index", "aten::index_put", "aten::index_put_"):
            indices = args[1] if len(args) > 1 else ()
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
                raise AssertionError(f"{name} with a bool mask has a data-dependent shape")
        return func(*args, **(kwargs or {}))


def output_shapes(binding: Binding) -> dict[str, tuple[int, ...]]:
    """Every tensor of a binding by name, with its shape: what must not depend on the data."""
    shapes = {name: tuple(getattr(binding, name).shape) for name in ("intervals", "perm_q", "perm_k") if getattr(binding, name) is not None}
    shapes.update({name: tuple(getattr(binding.lists, name).shape) for name in LIST_TENSORS})
    return shapes
