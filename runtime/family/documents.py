"""Families of packed sequences: documents (with windows, prefixes and padding) and shared-prefix groups.

Each batch row packs several sequences; every key's visible rows are one run inside its own
sequence, found per token with no host synchronisation: by one Triton launch
(:mod:`~maskc.runtime.family.segment_kernels`), or by torch scans
(:func:`~maskc.runtime.family.runs.run_bounds`) on the reference backend. Documents are given in
one of three ways:

- ``doc_ids [B, N]``: a document is a maximal run of equal ids; an id < 0 marks padding;
- ``position_ids [B, N]`` (Hugging Face packing): a document starts wherever the position is 0,
  and after padding; a position < 0 marks padding;
- ``cu_seqlens [D + 1]`` (flash-attn varlen, one packed row): document ``d`` is tokens
  ``[cu_seqlens[d], cu_seqlens[d + 1])``; it may be padded by repeating its last value, and the
  tokens from ``cu_seqlens[-1]`` on are padding.

Padding tokens are seen by nobody and see nothing (their rows of the attention give zeros).
"""

from __future__ import annotations

import torch

from maskc.runtime.family.binding import use_triton
from maskc.runtime.family.checks import BindError, first_violation, flag_tensor, index_tensor, positive, same_device, same_shape
from maskc.runtime.family.runs import Runs, run_bounds, segment_starts

PADDING = -1  # the document id of a padding token


def documents(doc_ids: torch.Tensor, causal: bool = True, window: int | None = None,
              prefix: torch.Tensor | None = None, backend: str = "auto") -> Runs:
    """Packed documents: a token sees the tokens of its own document, causally or bidirectionally.

    ``doc_ids [B, N]`` (integers; a document is a maximal run of equal ids, an id < 0 is padding).
    ``window`` (tokens, >= 1) keeps only keys within ``window`` tokens on each side, itself included,
    as ``maskc.library.sliding_window``: ``i - window < j <= i`` causal, ``|i - j| < window``
    bidirectional. ``prefix [B, N]`` (bools, causal only, no window) marks keys every token of their
    document sees (prefix-LM within documents: flag each document's leading prompt tokens).
    Key ``j`` of document ``[a, e)`` is seen by rows ``[j, e)`` (causal), ``[a, e)`` (bidirectional
    or prefix), cut to the window. ``backend``: ``"triton"`` (one launch), ``"reference"`` (torch
    scans) or ``"auto"`` (as :func:`~maskc.runtime.family.bind`).
    """
    doc_ids = index_tensor(doc_ids, "doc_ids", 2)
    _check_options(doc_ids, "doc_ids", causal, window, prefix)
    if use_triton(backend, doc_ids):
        return _segment_runs(doc_ids, "doc_ids", causal, window, prefix=prefix)
    return _documents_torch(doc_ids, causal, window, prefix)


def documents_from_position_ids(position_ids: torch.Tensor, causal: bool = True, window: int | None = None,
                                prefix: torch.Tensor | None = None, backend: str = "auto") -> Runs:
    """:func:`documents` for Hugging Face ``position_ids [B, N]`` that restart at 0 in each document
    (a position < 0 is padding; a document also starts after padding)."""
    position_ids = index_tensor(position_ids, "position_ids", 2)
    _check_options(position_ids, "position_ids", causal, window, prefix)
    if use_triton(backend, position_ids):
        return _segment_runs(position_ids, "position_ids", causal, window, prefix=prefix)
    pad = position_ids < 0
    new = position_ids == 0
    new[:, 0] = True
    new[:, 1:] |= pad[:, :-1]
    doc_ids = torch.cumsum(new, dim=1).masked_fill(pad, PADDING)
    return _documents_torch(doc_ids, causal, window, prefix)


def documents_from_cu_seqlens(cu_seqlens: torch.Tensor, n: int, causal: bool = True, window: int | None = None,
                              prefix: torch.Tensor | None = None, check: bool = False, backend: str = "auto") -> Runs:
    """:func:`documents` for one packed row of ``n`` tokens given flash-attn ``cu_seqlens [D + 1]``
    (non-decreasing from 0; the last value may repeat; tokens from ``cu_seqlens[-1]`` on are
    padding). ``check=True`` verifies that on the host first (a synchronisation)."""
    cu_seqlens = index_tensor(cu_seqlens, "cu_seqlens", 1)
    positive(n, "n")
    if check:
        _check_cu_seqlens(cu_seqlens, n)
    j = torch.arange(n, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    doc = torch.searchsorted(cu_seqlens, j, right=True) - 1
    doc_ids = doc.masked_fill((j >= cu_seqlens[-1]) | (doc < 0), PADDING)
    return documents(doc_ids[None], causal, window, prefix, backend)


def shared_prefix(group_ids: torch.Tensor, segment_ids: torch.Tensor, backend: str = "auto") -> Runs:
    """Shared-prefix packing (DPO, reward models), causal: each group is a shared prefix (a question)
    and the answers that follow it; an answer sees the prefix and itself, never another answer.

    ``group_ids [B, N]``: a group is a maximal run of equal ids; an id < 0 is padding.
    ``segment_ids [B, N]``: within a group, 0 marks the shared prefix, and each maximal run of an
    equal non-zero id is one answer. Key ``j`` of segment 0 is seen by rows ``[j, group end)``; a key
    of an answer by rows ``[j, answer end)``. (A group is ``maskc.library.shared_question``.)
    """
    group_ids = index_tensor(group_ids, "group_ids", 2)
    segment_ids = index_tensor(segment_ids, "segment_ids", 2)
    same_shape(segment_ids, "segment_ids", group_ids.shape, "group_ids")
    same_device(segment_ids, "segment_ids", group_ids.device, "group_ids")
    if use_triton(backend, group_ids):
        return _segment_runs(group_ids, "groups", inner=segment_ids)
    new_group = segment_starts(group_ids)
    _, group_end = run_bounds(new_group)
    _, answer_end = run_bounds(new_group | segment_starts(segment_ids))
    j = torch.arange(group_ids.shape[1], device=group_ids.device).expand_as(group_end)
    return _padded_runs(j, torch.where(segment_ids == 0, group_end, answer_end), group_ids < 0)


def _check_options(ids: torch.Tensor, name: str, causal: bool, window: int | None, prefix: torch.Tensor | None) -> None:
    if window is not None:
        positive(window, "window")
    if prefix is not None:
        if not causal or window is not None:
            raise BindError("prefix is for causal documents without a window")
        same_shape(flag_tensor(prefix, "prefix", 2), "prefix", ids.shape, name)
        same_device(prefix, "prefix", ids.device, name)


def _documents_torch(doc_ids: torch.Tensor, causal: bool, window: int | None, prefix: torch.Tensor | None) -> Runs:
    """:func:`documents` with torch scans (the reference backend)."""
    doc_start, doc_end = run_bounds(segment_starts(doc_ids))
    j = torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_start)
    start = j if causal else doc_start
    end = doc_end
    if window is not None:
        end = torch.minimum(end, j + window)
        if not causal:
            start = torch.maximum(start, j - (window - 1))
    if prefix is not None:
        start = torch.where(prefix, doc_start, start)
    return _padded_runs(start, end, doc_ids < 0)


def _segment_runs(ids: torch.Tensor, given_as: str, causal: bool = True, window: int | None = None,
                  inner: torch.Tensor | None = None, prefix: torch.Tensor | None = None) -> Runs:
    """The runs by the Triton kernel (imported on first use, like the other kernels)."""
    from maskc.runtime.family.segment_kernels import segment_runs

    return _runs(*segment_runs(ids, given_as, causal, window, inner, prefix))


def _runs(start: torch.Tensor, end: torch.Tensor) -> Runs:
    """Runs of one mask slice per batch row."""
    return Runs(start, end, start.shape[1], batch=start.shape[0], heads=1)


def _padded_runs(start: torch.Tensor, end: torch.Tensor, pad: torch.Tensor) -> Runs:
    """Runs empty on padding keys (a padding query is in no other key's run: runs never leave
    their own document)."""
    return _runs(start, torch.where(pad, start, end))


def _check_cu_seqlens(cu_seqlens: torch.Tensor, n: int) -> None:
    decreasing = torch.zeros_like(cu_seqlens, dtype=torch.bool)
    decreasing[1:] = cu_seqlens[1:] < cu_seqlens[:-1]
    first_violation(cu_seqlens[:1] != 0, "cu_seqlens", "it must start at 0", cu_seqlens[:1])
    first_violation(decreasing, "cu_seqlens", "it must not be smaller than the value before it", cu_seqlens)
    first_violation(cu_seqlens > n, "cu_seqlens", f"it must not exceed n = {n}", cu_seqlens)
