"""Token trees (speculative decoding): each node sees its ancestors and itself.

``parents [B, N]``: per batch row a forest, ``parents[b, i]`` is -1 for a root or the index of an
earlier node (``parents[b, i] < i``, as in breadth-first and depth-first numberings), or -2 for a
padding node (seen by nobody, seeing nothing). In depth-first preorder (children by ascending
index) the subtree of node ``v`` is the run ``[tin(v), tin(v) + size(v))``, so key ``v`` is seen by
exactly that run of rows: a tree numbered in preorder binds as it is, any other numbering binds
under the per-row permutation to preorder.

Everything is computed with gathers, scans and sorts over a table of every node's ancestors, built
by pointer doubling in ``ceil(log2(max_depth + 1))`` steps: ``max_depth`` (a static bound of the
family) must be at least the depth of every node (a root has depth 0).
"""

from __future__ import annotations

import math

import torch

from maskc.runtime.family.checks import first_violation, index_tensor, positive
from maskc.runtime.family.runs import Runs

PADDING = -2  # the parent of a padding node


def token_tree(parents: torch.Tensor, max_depth: int, preorder: bool = False, check: bool = False) -> Runs:
    """The tree mask of ``parents [B, N]`` (see the module).

    ``preorder=True``: the nodes are numbered in depth-first preorder; key ``j`` is seen by rows
    ``[j, j + size(j))`` and no permutation is made. Otherwise the runs are in preorder coordinates
    and ``perm_q = perm_k`` give each preorder position's node. ``check=True`` verifies the parents,
    the depth bound and (with ``preorder``) the numbering on the host first (a synchronisation).
    Whatever the values, the permutation is a permutation and every run stays in bounds.
    """
    parents = index_tensor(parents, "parents", 2)
    positive(max_depth, "max_depth")
    batch, n = parents.shape
    node = torch.arange(n, device=parents.device).expand(batch, n)
    parent = torch.where((parents >= 0) & (parents < node), parents.long(), n)  # n: "none" (roots, padding, bad values)
    ancestors = _ancestors(parent, max_depth)
    size = torch.zeros(batch, n + 1, dtype=torch.int64, device=parents.device)
    size.scatter_add_(1, ancestors.reshape(batch, -1), torch.ones_like(ancestors.reshape(batch, -1)))
    size = size[:, :n]
    if check:
        _check(parents, parent, ancestors, max_depth)
    pad = parents == PADDING
    if preorder:
        if check:
            tin = _preorder_index(parent, ancestors, size)
            first_violation(tin != node, "parents", "the nodes are not numbered in depth-first preorder (a node's "
                            "children and their subtrees must follow it, in ascending order)", parents)
        return Runs(node, torch.where(pad, node, node + size), n, batch=batch, heads=1)
    tin = _preorder_index(parent, ancestors, size)
    perm = torch.sort(tin, dim=1, stable=True).indices
    start = torch.gather(tin, 1, perm)
    end = torch.where(torch.gather(pad, 1, perm), start, start + torch.gather(size, 1, perm))
    perm = perm.to(torch.int32)
    return Runs(start, end, n, batch=batch, heads=1, perm_q=perm, perm_k=perm)


def _ancestors(parent: torch.Tensor, max_depth: int) -> torch.Tensor:
    """``[B, L, N]`` with ``L >= max_depth + 1`` a power of two: level ``d`` holds each node's
    ``d``-th ancestor (level 0 the node itself), ``N`` where there is none. Pointer doubling: the
    table's levels ``[L, 2L)`` are levels ``[0, L)`` moved up by the ``L``-th ancestor map."""
    batch, n = parent.shape
    none = torch.full((batch, 1), n, dtype=torch.int64, device=parent.device)
    jump = torch.cat([parent, none], dim=1)  # the 1st ancestor map on [0, n], with n -> n
    table = torch.arange(n, device=parent.device).expand(batch, 1, n)
    for _ in range(math.ceil(math.log2(max_depth + 1))):
        moved = torch.gather(jump, 1, table.reshape(batch, -1)).reshape(table.shape)
        table = torch.cat([table, moved], dim=1)
        jump = torch.gather(jump, 1, jump)
    return table


def _preorder_index(parent: torch.Tensor, ancestors: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Each node's depth-first preorder position (children by ascending index), int64 ``[B, N]``.

    ``tin(root) = sizes of the earlier roots`` and ``tin(c) = tin(parent) + 1 + sizes of c's
    earlier siblings``, so ``tin(v)`` is ``depth(v)`` plus, over ``v`` and its ancestors, the sizes
    of their earlier siblings: a segmented prefix sum of sizes over nodes sorted by parent.
    """
    batch, n = parent.shape
    order = torch.sort(parent, dim=1, stable=True).indices  # by parent, then by index
    sorted_size = torch.gather(size, 1, order)
    before = torch.cumsum(sorted_size, dim=1) - sorted_size
    sorted_parent = torch.gather(parent, 1, order)
    first = torch.ones_like(sorted_parent, dtype=torch.bool)
    first[:, 1:] = sorted_parent[:, 1:] != sorted_parent[:, :-1]
    group_base = torch.cummax(torch.where(first, before, 0), dim=1).values
    earlier = torch.empty_like(size).scatter_(1, order, before - group_base)
    earlier = torch.cat([earlier, torch.zeros_like(earlier[:, :1])], dim=1)  # node n ("none") adds 0
    on_path = torch.gather(earlier, 1, ancestors.reshape(batch, -1)).reshape(ancestors.shape).sum(1)
    depth = (ancestors[:, 1:] < n).sum(1)
    return on_path + depth


def _check(parents: torch.Tensor, parent: torch.Tensor, ancestors: torch.Tensor, max_depth: int) -> None:
    n = parents.shape[1]
    node = torch.arange(n, device=parents.device).expand_as(parents)
    bad = ((parents < PADDING) | (parents >= node)) & (parents != -1)
    first_violation(bad, "parents", "it must be -1 (a root), -2 (padding) or the index of an earlier node", parents)
    orphan = torch.gather(torch.cat([parents == PADDING, torch.zeros_like(parents[:, :1], dtype=torch.bool)], 1), 1, parent)
    first_violation(orphan, "parents", "it names a padding node as the parent", parents)
    depth = (ancestors[:, 1:] < n).sum(1)
    beyond = torch.gather(torch.cat([parent, torch.full_like(parent[:, :1], n)], 1), 1, ancestors[:, -1]) < n
    first_violation((depth > max_depth) | beyond, "parents", f"this node is deeper than max_depth = {max_depth}", parents)
