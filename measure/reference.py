"""The one float64 reference of masked attention, and the one error measure.

Every accuracy number maskc reports comes from here: the benchmark's error column, the kernels'
self-check, the test suite and the scripts under ``benchmarks/`` compare against
:func:`attention` with :func:`rel_err`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

CHUNK_BYTES = 256 << 20
"""Without gradients the scores are computed a few heads at a time, about this many bytes of them
at once, so the reference of a long sequence fits beside the inputs on a GPU."""


class Reference(NamedTuple):
    """The reference of one call, in float64: the output ``[B, H, Nq, D]``, the log-sum-exp of the
    scaled scores ``[B, H, Nq]`` (``+inf`` on rows with no visible key) and, when an upstream
    gradient was given, the three gradients (``dk``/``dv`` summed over each group of query heads)."""

    out: torch.Tensor
    lse: torch.Tensor
    dq: torch.Tensor | None
    dk: torch.Tensor | None
    dv: torch.Tensor | None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, scale: float,
              grad_out: torch.Tensor | None = None) -> Reference:
    """``softmax(q kᵀ · scale + mask) v`` in float64, and with ``grad_out`` its gradients.

    ``q`` is ``[B, Hq, Nq, D]`` and ``k``/``v`` ``[B, Hkv, Nk, D]``, ``Hkv`` dividing ``Hq``: query
    head ``h`` reads key/value head ``h // (Hq / Hkv)`` (GQA). ``mask`` (bool, a numpy array or a
    tensor, ``True`` = visible) is ``[Nq, Nk]``, ``[H, Nq, Nk]`` or ``[B, H, Nq, Nk]``, broadcast
    where a dimension is 1. Rows with no visible key give an output of 0, ``lse = +inf`` and zero
    gradients, as the kernels do.
    """
    keep = _as_mask(mask, q.device)
    if grad_out is None:
        with torch.no_grad():
            return Reference(*_chunked(q, k, v, keep, scale), None, None, None)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    out, lse = _attend(q64, k64.repeat_interleave(group, 1), v64.repeat_interleave(group, 1), keep, scale)
    dq, dk, dv = torch.autograd.grad(out, (q64, k64, v64), grad_out.double())
    return Reference(out.detach(), lse.detach(), dq, dk, dv)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """The relative Frobenius error ``‖got - want‖ / ‖want‖``, in float64; against an all-zero
    reference (a gradient that cancels exactly, rows with no visible key) it is the absolute error."""
    got, want = got.detach().double(), want.detach().double()
    denom = want.norm().item()
    return (got - want).norm().item() / (denom if denom > 0 else 1.0)


def error_rows(n: int, count: int) -> np.ndarray:
    """``count`` query rows evenly spread over ``[0, n)`` (all rows when ``count >= n``): where a
    long sequence is checked, since its whole reference would not fit."""
    if count >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))


def reference_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, source: Any, rows: np.ndarray, scale: float) -> torch.Tensor:
    """The reference output of the query rows ``rows`` only, ``[B, H, len(rows), D]``, under the
    mask rows of ``source`` (a single ``[N, N]`` :class:`maskc.MaskSource`, read row by row)."""
    keep = np.stack([source.rows(0, 0, int(r), int(r) + 1)[0] for r in rows])
    picked = q.index_select(2, torch.as_tensor(rows, device=q.device))
    return attention(picked, k, v, keep, scale).out


def _as_mask(mask: Any, device: torch.device) -> torch.Tensor:
    """``mask`` as a 4-D bool tensor on ``device``."""
    keep = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.array(mask, dtype=bool))
    keep = keep.to(device=device, dtype=torch.bool)
    return keep.reshape((1,) * (4 - keep.dim()) + tuple(keep.shape))


def _chunked(q, k, v, keep, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_attend` a few heads of one batch entry at a time (no autograd)."""
    batch, heads, nq, _ = q.shape
    group = heads // k.shape[1]
    out = torch.empty((batch, heads, nq, v.shape[-1]), dtype=torch.float64, device=q.device)
    lse = torch.empty((batch, heads, nq), dtype=torch.float64, device=q.device)
    chunk = max(1, CHUNK_BYTES // max(1, nq * k.shape[2] * 8))
    for b in range(batch):
        keep_b = keep[b if keep.shape[0] > 1 else 0]
        for h0 in range(0, heads, chunk):
            h1 = min(heads, h0 + chunk)
            kv_heads = torch.arange(h0, h1, device=q.device) // group
            out[b, h0:h1], lse[b, h0:h1] = _attend(
                q[b, h0:h1].double(), k[b].index_select(0, kv_heads).double(), v[b].index_select(0, kv_heads).double(),
                keep_b[h0:h1] if keep_b.shape[0] > 1 else keep_b, scale)
    return out, lse


def _attend(q, k, v, keep, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked softmax attention of float64 tensors with as many heads in ``k``/``v`` as in ``q``:
    the output and the log-sum-exp. The row maximum is taken over visible scores only and held
    constant, so rows with no visible key divide nothing by zero and get no gradient."""
    s = scale * q @ k.transpose(-1, -2)
    zero, minus_inf = s.new_zeros(()), s.new_full((), -torch.inf)
    row_max = torch.where(keep, s, minus_inf).amax(-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, zero).detach()
    e = torch.exp(torch.where(keep, s, zero) - row_max) * keep
    total = e.sum(-1, keepdim=True)
    empty = total == 0
    safe = torch.where(empty, torch.ones_like(total), total)
    out = (e / safe) @ v
    lse = torch.where(empty, torch.full_like(total, torch.inf), torch.log(safe) + row_max)[..., 0]
    return out, lse
