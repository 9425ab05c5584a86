"""The Triton path of the packed-sequence binders: every key's visible run in one launch.

One program per (batch row, block of ``BLOCK`` tokens) finds, for each of its tokens, where its
segment (document, group or answer) begins and ends: the segments begin where a local test on a
token and the one before it says so (:func:`_begins`), so a scan over the block gives each token's
nearest beginnings inside it, and only tokens whose segment leaves the block search further, in
steps of ``SCAN`` tokens, for the first beginning past it (or the last one before it). The window,
prefix and padding rules of :mod:`maskc.runtime.family.documents` then give the run. A row of
``n`` tokens costs O(n) plus, per block, O(distance to the segment's ends / SCAN) steps.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MODES = {"doc_ids": 0, "position_ids": 1, "groups": 2}  # how segments are given: document ids, position ids, group + segment ids
BLOCK = 1024  # tokens per program
SCAN = 1024  # tokens per step of a search past the block

_POSITIONS, _GROUPS = tl.constexpr(MODES["position_ids"]), tl.constexpr(MODES["groups"])
_NONE = tl.constexpr(2**31 - 1)  # "no beginning found yet" when searching forwards


@triton.jit
def _minimum(a, b):
    return tl.minimum(a, b)


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def _begins(ids_ptr, inner_ptr, k, n, MODE: tl.constexpr, INNER: tl.constexpr):
    """Whether a segment begins at each token ``k`` (always at 0, and at every ``k >= n``): ids that
    differ from the token before; a position 0 or a change between padding and tokens; with
    ``INNER``, also an inner (answer) id that differs."""
    inside = (k > 0) & (k < n)
    cur = tl.load(ids_ptr + k, mask=inside, other=0)
    prev = tl.load(ids_ptr + k - 1, mask=inside, other=0)
    if MODE == _POSITIONS:
        new = (cur == 0) | ((cur < 0) != (prev < 0))
    else:
        new = cur != prev
    if INNER:
        new = new | (tl.load(inner_ptr + k, mask=inside, other=0) != tl.load(inner_ptr + k - 1, mask=inside, other=0))
    return new | (k <= 0) | (k >= n)


@triton.jit
def _segment_end(ids_ptr, inner_ptr, j, c0, n, MODE: tl.constexpr, INNER: tl.constexpr,
                 BLOCK: tl.constexpr, SCAN: tl.constexpr):
    """For tokens ``j = c0 + [0, BLOCK)``: the first beginning after each token (its segment's end)."""
    after = tl.where(_begins(ids_ptr, inner_ptr, j + 1, n, MODE, INNER), j + 1, _NONE)
    end = tl.associative_scan(after, 0, _minimum, reverse=True)
    found = tl.where(tl.max(end, axis=0) == _NONE, _NONE, 0)
    k = c0 + BLOCK + 1
    while found == _NONE:  # only when the last token's segment leaves the block; ends at k >= n
        ks = k + tl.arange(0, SCAN)
        found = tl.min(tl.where(_begins(ids_ptr, inner_ptr, ks, n, MODE, INNER), ks, _NONE), axis=0)
        k += SCAN
    return tl.where(end == _NONE, found, end)


@triton.jit
def _segment_start(ids_ptr, inner_ptr, j, c0, n, MODE: tl.constexpr, BLOCK: tl.constexpr, SCAN: tl.constexpr):
    """For tokens ``j = c0 + [0, BLOCK)``: the last beginning at or before each token (its segment's start)."""
    at = tl.where(_begins(ids_ptr, inner_ptr, j, n, MODE, False), j, -1)
    start = tl.associative_scan(at, 0, _maximum)
    found = tl.where(tl.min(start, axis=0) < 0, -1, 0)
    k = c0 - SCAN
    while found < 0:  # only when the first token's segment began before the block; ends at k <= 0
        ks = k + tl.arange(0, SCAN)
        found = tl.max(tl.where(_begins(ids_ptr, inner_ptr, ks, n, MODE, False) & (ks >= 0), ks, -1), axis=0)
        k -= SCAN
    return tl.where(start < 0, found, start)


@triton.jit
def _segment_runs_kernel(ids_ptr, inner_ptr, prefix_ptr, start_ptr, end_ptr, n, window,
                         MODE: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PREFIX: tl.constexpr,
                         BLOCK: tl.constexpr, SCAN: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * n
    c0 = tl.program_id(1) * BLOCK
    ids_ptr += row
    inner_ptr += row
    j = c0 + tl.arange(0, BLOCK)
    inside = j < n
    padding = tl.load(ids_ptr + j, mask=inside, other=0) < 0
    end = _segment_end(ids_ptr, inner_ptr, j, c0, n, MODE, False, BLOCK, SCAN)
    if MODE == _GROUPS:  # a shared-prefix key is seen to its group's end, an answer's to the answer's
        shared = tl.load(inner_ptr + j, mask=inside, other=0) == 0
        end = tl.where(shared, end, _segment_end(ids_ptr, inner_ptr, j, c0, n, MODE, True, BLOCK, SCAN))
    start = j
    if not CAUSAL or PREFIX:
        segment_start = _segment_start(ids_ptr, inner_ptr, j, c0, n, MODE, BLOCK, SCAN)
        if not CAUSAL:
            start = segment_start
        if PREFIX:
            start = tl.where(tl.load(prefix_ptr + row + j, mask=inside, other=0) != 0, segment_start, start)
    if WINDOW:
        end = tl.minimum(end, j + window)
        if not CAUSAL:
            start = tl.maximum(start, j - (window - 1))
    end = tl.where(padding, start, end)
    tl.store(start_ptr + row + j, start, mask=inside)
    tl.store(end_ptr + row + j, end, mask=inside)


def segment_runs(ids: torch.Tensor, given_as: str, causal: bool = True, window: int | None = None,
                 inner: torch.Tensor | None = None, prefix: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each key's visible run ``(start, end)``, int32 ``[B, N]``, of packed segments given by ``ids``
    as ``given_as`` says (a key of :data:`MODES`: document ids, position ids, or group ids with
    ``inner`` segment ids), as the binders of :mod:`maskc.runtime.family.documents` define them."""
    batch, n = ids.shape
    ids = ids.contiguous()
    start = torch.empty((batch, n), dtype=torch.int32, device=ids.device)
    end = torch.empty((batch, n), dtype=torch.int32, device=ids.device)
    inner = ids if inner is None else inner.contiguous()  # read only in the "groups" mode
    flags = ids if prefix is None else prefix.contiguous().view(torch.uint8)  # read only with a prefix
    block = min(triton.next_power_of_2(n), BLOCK)
    _segment_runs_kernel[(batch, triton.cdiv(n, block))](
        ids, inner, flags, start, end, n, 1 if window is None else min(window, n), MODE=MODES[given_as], CAUSAL=causal,
        WINDOW=window is not None, PREFIX=prefix is not None, BLOCK=block, SCAN=SCAN)
    return start, end
