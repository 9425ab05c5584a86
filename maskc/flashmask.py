"""FlashMask interop: its ``startend_row_indices`` as a mask source, and a plan's mask in that form.

FlashMask (PaddlePaddle's ``flashmask_attention``, arXiv:2410.01359) describes a mask column by
column: an int32 array ``startend_row_indices`` of shape ``[B, H, Nk, C]`` plus a ``causal`` flag.
With ``r0..r3`` the ``C`` values of key column ``j``, the masked query rows of that column are:

- ``causal=True``, ``C = 1``: ``[0, j)`` (the causal part) and ``[r0, Nq)``;
- ``causal=True``, ``C = 2``: ``[0, j)`` and ``[r0, r1)``;
- ``causal=False``, ``C = 2``: ``[r0, Nq)`` (lower-left) and ``[0, r1)`` (upper-right);
- ``causal=False``, ``C = 4``: ``[r0, r1)`` and ``[r2, r3)``.

No other combination exists in FlashMask. A start at or past its end masks nothing, as in
FlashMask's kernels. ``H`` is FlashMask's head count, 1 or the number of key/value heads; a maskc
mask's heads are query heads (1 or Hq), so under grouped-query attention with ``H > 1``, repeat each
head ``Hq / H`` times (``np.repeat(a, Hq // H, axis=1)``) before importing. Causal FlashMask masks
are square (``Nq = Nk``, aligned at the top left).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from maskc.errors import MaskError
from maskc.intervals import canonical
from maskc.runtime.format import LTE, LTS, UTE, UTS, Plan
from maskc.scan import detect_intervals
from maskc.sources import IntervalSource, MaskSource, PlanSource


def from_startend_row_indices(startend_row_indices: np.ndarray, causal: bool, q_len: int | None = None) -> MaskSource:
    """The mask FlashMask's ``startend_row_indices`` and ``causal`` flag describe (see the module
    docstring), of shape ``[B, H, q_len, Nk]``; ``q_len`` defaults to ``Nk`` (and must equal it
    when causal). Every value must lie in ``[0, q_len]``."""
    if hasattr(startend_row_indices, "detach"):  # a torch tensor; never imported here
        startend_row_indices = startend_row_indices.detach().cpu().numpy()
    a = np.asarray(startend_row_indices)
    if a.ndim != 4 or a.shape[-1] not in (1, 2, 4) or 0 in a.shape:
        raise MaskError(f"startend_row_indices must have shape [B, H, Nk, 1|2|4], got {list(a.shape)}")
    if a.dtype.kind not in "iu":
        raise MaskError(f"startend_row_indices must hold integers (FlashMask uses int32), got dtype {a.dtype}")
    batch, heads, kv_len, c = a.shape
    q_len = kv_len if q_len is None else int(q_len)
    if causal and c == 4 or not causal and c == 1:
        raise MaskError(f"FlashMask has no {'causal' if causal else 'bidirectional'} form with {c} values per column; causal takes 1 or 2, bidirectional 2 or 4")
    if causal and q_len != kv_len:
        raise MaskError(f"a causal FlashMask mask is square; q_len {q_len} differs from Nk {kv_len}")
    bad = (a < 0) | (a > q_len)
    if bad.any():
        b, h, j, i = map(int, np.argwhere(bad)[0])
        raise MaskError(f"startend_row_indices[{b}, {h}, {j}, {i}] = {a[b, h, j, i]} is outside [0, q_len={q_len}]")
    r = a.astype(np.int64).reshape(batch * heads, kv_len, c).transpose(0, 2, 1)
    vectors = np.empty((batch * heads, 4, kv_len), dtype=np.int64)
    j = np.arange(kv_len)
    if causal:
        vectors[:, UTS], vectors[:, UTE] = 0, j
        vectors[:, LTS], vectors[:, LTE] = r[:, 0], (r[:, 1] if c == 2 else q_len)
    elif c == 2:
        vectors[:, LTS], vectors[:, LTE] = r[:, 0], q_len
        vectors[:, UTS], vectors[:, UTE] = 0, r[:, 1]
    else:
        vectors[:, LTS], vectors[:, LTE], vectors[:, UTS], vectors[:, UTE] = r[:, 0], r[:, 1], r[:, 2], r[:, 3]
    for start, end in ((LTS, LTE), (UTS, UTE)):  # an empty pair may come in any order: make it [end, end)
        vectors[:, start] = np.minimum(vectors[:, start], vectors[:, end])
    name = f"flashmask([{batch}, {heads}, {kv_len}, {c}], causal={bool(causal)})"
    return IntervalSource(vectors, (batch, heads, q_len, kv_len), name)


def load_startend_row_indices(path: str | os.PathLike, causal: bool) -> MaskSource:
    """:func:`from_startend_row_indices` of an array saved with ``np.save``."""
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"FlashMask index file not found: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise MaskError(f"{path}: not a readable .npy array ({e})") from None
    try:
        return from_startend_row_indices(array, causal)
    except MaskError as e:
        raise MaskError(f"{path}: {e}") from None


def to_startend_row_indices(plan: Plan) -> tuple[np.ndarray, bool]:
    """A plan's mask as FlashMask's ``(startend_row_indices, causal)``, in the smallest form that
    holds it: causal with 1 or 2 values per column when every column masks its rows above the
    diagonal plus at most one more run (square masks only), else bidirectional with 2 or 4.

    An interval plan converts in O(kv_len); a block-sparse plan is read back one tile row at a time
    and must fit the interval form, else a MaskError says which column does not.
    """
    if plan.variant == "intervals":
        vectors = canonical(plan.arrays["intervals"], plan.q_len).astype(np.int64)
    else:
        vectors, failure = detect_intervals(PlanSource(plan), plan.block_m)
        if vectors is None:
            raise MaskError(f"this block-sparse plan's mask does not fit FlashMask's column intervals: {failure}")
        vectors = vectors.astype(np.int64)
    q = plan.q_len
    values = _causal_form(vectors, q) if q == plan.kv_len else None
    causal = values is not None
    if values is None:
        two = np.all(vectors[:, LTE] == q) and np.all(vectors[:, UTS] == 0)
        values = vectors[:, [LTS, UTE]] if two else vectors[:, [LTS, LTE, UTS, UTE]]
    array = values.transpose(0, 2, 1).reshape(plan.batch, plan.heads, plan.kv_len, -1)
    return np.ascontiguousarray(array, dtype=np.int32), causal


def _causal_form(vectors: np.ndarray, q_len: int) -> np.ndarray | None:
    """``[S, C, kv]`` causal values (C = 1 or 2) of canonical vectors, or None if some column does
    not mask its rows ``[0, j)`` or masks more than one other run."""
    j = np.arange(vectors.shape[-1])
    uts, ute, lts, lte = vectors[:, UTS], vectors[:, UTE], vectors[:, LTS], vectors[:, LTE]
    has_upper = ute > uts
    if not np.all((j == 0) | (has_upper & (uts == 0) & (ute >= j))):
        return None
    # besides [0, j), a column may mask one more run: the rest of its upper run, or its lower run
    rest_start = np.maximum(uts, j)
    rest_empty = rest_start >= ute
    lower_empty = lts >= lte
    if not np.all(rest_empty | lower_empty):
        return None
    r0 = np.where(~rest_empty, rest_start, np.where(lower_empty, q_len, lts))
    r1 = np.where(~rest_empty, ute, np.where(lower_empty, q_len, lte))
    return r0[:, None] if np.all(r1 == q_len) else np.stack([r0, r1], axis=1)
