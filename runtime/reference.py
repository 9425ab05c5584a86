"""The reference backend: block-sparse flash attention in plain torch, tile by tile.

It walks the plan's row lists exactly as the Triton kernels do, with an online softmax, and never
builds the ``N x N`` score matrix: it is the oracle the kernels are tested against and the backend
used on machines without a GPU. A partial tile's mask comes from its bitmap, or, in an interval
plan, is rebuilt from the key columns' row intervals. Rows with no visible key give zeros and zero
gradients. A reordered plan's lists describe the tokens in its order, per mask slice and per side
(``perm_q``, ``perm_k``): the inputs are gathered into that order, query head by query head, and the
outputs scattered back, and the lse stays in plan positions, as in the kernels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from maskc.runtime.call import Call
from maskc.runtime.device import DevicePlan


class Reference:
    """The reference backend for one plan, shaped like ``maskc.runtime.kernels.TileKernels``."""

    def __init__(self, plan: DevicePlan):
        self.plan = plan

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        return forward(q, k, v, self.plan, scale)

    def backward(self, do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return backward(do, q, k, v, o, lse, self.plan, scale)

    def rebind(self, plan: DevicePlan) -> "Reference":
        """The backend over ``plan``, a plan of the same sizes as this one (a mask family's next step)."""
        return Reference(plan)


def prepare(plan: DevicePlan, call: Call) -> Reference:
    """The backend for ``plan`` and calls shaped like ``call`` (any call it has passed ``check_call``)."""
    return Reference(plan)


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: DevicePlan, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output (like ``q``) and the natural-log LSE ``[B, Hq, Nq]`` (+inf on empty rows),
    float32 as the kernels' (float64 for float64 inputs, which are computed in float64 throughout)."""
    if plan.reordered:
        order = _PlanOrder(plan, q)
        o, lse = _forward(order.queries(q), order.keys(k), order.keys(v), plan, scale)
        return order.back(o, order.q_index), lse
    return _forward(q, k, v, plan, scale)


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: DevicePlan, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    acc_dtype = _acc_dtype(q)
    k, v = _expand_kv(k, q.shape[1]), _expand_kv(v, q.shape[1])
    o = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
    lse = torch.full(q.shape[:3], math.inf, dtype=acc_dtype, device=q.device)
    for bs, hs, rows, visits in _walk(plan, q.shape[0], q.shape[1]):
        qi = q[bs, hs, rows].to(acc_dtype) * scale
        m_i = torch.full(qi.shape[:3], -math.inf, dtype=acc_dtype, device=q.device)
        l_i = torch.zeros_like(m_i)
        acc = torch.zeros(qi.shape, dtype=acc_dtype, device=q.device)
        for cols, keep in visits:
            s = qi @ k[bs, hs, cols].to(acc_dtype).transpose(-1, -2)
            if keep is not None:
                s = s.masked_fill(~keep, -math.inf)
            m_new = torch.maximum(m_i, s.amax(-1))
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(s - m_safe[..., None])
            alpha = torch.exp(m_i - m_safe)
            l_i = l_i * alpha + p.sum(-1)
            acc = acc * alpha[..., None] + p @ v[bs, hs, cols].to(acc_dtype)
            m_i = m_new
        seen = l_i > 0
        out = torch.where(seen[..., None], acc / torch.where(seen, l_i, torch.ones_like(l_i))[..., None], torch.zeros_like(acc))
        o[bs, hs, rows] = out
        lse[bs, hs, rows] = torch.where(seen, m_i + torch.log(l_i), torch.full_like(l_i, math.inf))
    return o.to(q.dtype), lse


def backward(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, plan: DevicePlan, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the attention with respect to q, k and v, shaped like them."""
    hkv = k.shape[1]
    if plan.reordered:
        order = _PlanOrder(plan, q)
        dq, dk, dv = _backward(*(order.queries(t) for t in (do, q)), order.keys(k), order.keys(v), order.queries(o), lse, plan, scale)
        dq, dk, dv = order.back(dq, order.q_index), order.back(dk, order.k_index), order.back(dv, order.k_index)
    else:
        dq, dk, dv = _backward(do, q, k, v, o, lse, plan, scale)
    fold = lambda t: t.view(t.shape[0], hkv, -1, *t.shape[2:]).sum(2)  # noqa: E731  sum each GQA group
    return dq.to(q.dtype), fold(dk).to(k.dtype), fold(dv).to(v.dtype)


def _backward(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, plan: DevicePlan, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, and dk, dv per query head (k and v repeated for their group), in the accumulation dtype."""
    acc_dtype = _acc_dtype(q)
    hq = q.shape[1]
    ke, ve = _expand_kv(k, hq), _expand_kv(v, hq)
    delta = (do.to(acc_dtype) * o.to(acc_dtype)).sum(-1)
    dq = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
    dk = torch.zeros(ke.shape, dtype=acc_dtype, device=q.device)
    dv = torch.zeros(ve.shape, dtype=acc_dtype, device=q.device)
    for bs, hs, rows, visits in _walk(plan, q.shape[0], hq):
        where = (bs, hs, rows)
        qi, doi = q[where].to(acc_dtype), do[where].to(acc_dtype)
        lse_i, delta_i = lse[where].to(acc_dtype), delta[where]
        dqi = torch.zeros_like(qi)
        for cols, keep in visits:
            kj = ke[bs, hs, cols].to(acc_dtype)
            vj = ve[bs, hs, cols].to(acc_dtype)
            p = torch.exp(qi @ kj.transpose(-1, -2) * scale - lse_i[..., None])  # 0 where lse is +inf
            if keep is not None:
                p = p.masked_fill(~keep, 0.0)
            ds = p * (doi @ vj.transpose(-1, -2) - delta_i[..., None])
            dqi += ds @ kj * scale
            dk[bs, hs, cols] += ds.transpose(-1, -2) @ qi * scale
            dv[bs, hs, cols] += p.transpose(-1, -2) @ doi
        dq[where] = dqi
    return dq, dk, dv


class _PlanOrder:
    """A reordered plan's token order for inputs like ``q [B, Hq, N, D]``: each query head's rows
    in its mask slice's order (``perm_q``), and each query head's keys (its key/value head's,
    repeated per head) in the slice's key order (``perm_k``)."""

    def __init__(self, plan: DevicePlan, q: torch.Tensor):
        batch, heads = q.shape[:2]
        b = torch.arange(batch, device=q.device)[:, None] * (plan.heads if plan.batch > 1 else 0)
        h = torch.arange(heads, device=q.device)[None, :] * (1 if plan.heads > 1 else 0)
        slices = b + h  # [B, Hq]: the mask slice each query head reads
        self.heads = heads
        self.q_index, self.k_index = (perm[slices].long()[..., None] for perm in (plan.perm_q, plan.perm_k))

    def queries(self, t: torch.Tensor) -> torch.Tensor:
        return torch.gather(t, 2, self.q_index.expand(*self.q_index.shape[:3], t.shape[-1]))

    def keys(self, t: torch.Tensor) -> torch.Tensor:
        t = _expand_kv(t, self.heads)
        return torch.gather(t, 2, self.k_index.expand(*self.k_index.shape[:3], t.shape[-1]))

    @staticmethod
    def back(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``t`` in plan order back in the caller's (the inverse of a gather through ``index``)."""
        return torch.empty_like(t).scatter_(2, index.expand(*index.shape[:3], t.shape[-1]), t)


def _acc_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _expand_kv(t: torch.Tensor, hq: int) -> torch.Tensor:
    """K or V with each KV head repeated for the query heads of its group (a view, no copy)."""
    b, hkv, n, d = t.shape
    return t[:, :, None].expand(b, hkv, hq // hkv, n, d).reshape(b, hq, n, d) if hkv != hq else t


def _walk(plan: DevicePlan, batch: int, heads: int) -> Iterator[tuple[slice, slice, slice, list]]:
    """For each mask slice and query tile row: the query batches, heads and rows it covers, and its visits.

    A visit is ``(key columns, keep)`` where ``keep`` is the tile's bool mask, or None for a full tile.
    Where the mask broadcasts over batch or heads, one visit list serves them all at once.
    """
    lo, hi, full = plan.row_lo.tolist(), plan.row_hi.tolist(), plan.row_full.tolist()
    cols, tiles = plan.row_col.tolist(), plan.row_tile.tolist()
    bits = _unpack_bitmaps(plan.bitmaps, plan.block_n)
    intervals = plan.variant == "intervals"
    bm, bn = plan.block_m, plan.block_n
    for s in range(plan.batch * plan.heads):
        b, h = divmod(s, plan.heads)
        bs = slice(None) if plan.batch == 1 else slice(b, b + 1)
        hs = slice(None) if plan.heads == 1 else slice(h, h + 1)
        for m in range(plan.tiles_m):
            row = s * plan.tiles_m + m
            rows = slice(m * bm, min((m + 1) * bm, plan.q_len))
            visits = []
            for e in range(lo[row], hi[row]):
                n = cols[e]
                c = slice(n * bn, min((n + 1) * bn, plan.kv_len))
                if e - lo[row] < full[row]:
                    keep = None
                elif intervals:
                    keep = _interval_tile(plan.intervals[s, :, c], rows)
                else:
                    keep = bits[tiles[e], : rows.stop - rows.start, : c.stop - c.start]
                visits.append((c, keep))
            yield bs, hs, rows, visits


def _interval_tile(iv: torch.Tensor, rows: slice) -> torch.Tensor:
    """The bool mask of one tile rebuilt from its key columns' intervals ``iv [4, cols]``: a query
    row is masked where it lies in ``[LTS, LTE)`` or ``[UTS, UTE)``."""
    i = torch.arange(rows.start, rows.stop, device=iv.device, dtype=iv.dtype)[:, None]
    masked = ((i >= iv[0]) & (i < iv[1])) | ((i >= iv[2]) & (i < iv[3]))
    return ~masked


def _unpack_bitmaps(words: torch.Tensor, block_n: int) -> torch.Tensor:
    """``[P, block_m, block_n // 32]`` int32 words to bools ``[P, block_m, block_n]``, LSB first."""
    shifts = torch.arange(32, device=words.device, dtype=torch.int32)
    bits = (words[..., None] >> shifts) & 1
    return bits.reshape(*words.shape[:2], block_n).bool()
