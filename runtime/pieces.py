"""The backward of attention through a plan's dense pieces.

A plan's ``pieces`` write its mask as a few disjoint rectangles, each all-visible or causal
(``maskc.runtime.format``). Given the whole mask's output ``O`` and log-sum-exp (the forward's),
each piece's gradients are its exact share: with ``P = exp(S - lse)`` on the piece's pairs and
``delta = rowsum(dO * O)`` of the whole row,

    dV = P^T dO,   dS = P * (dO V^T - delta),   dQ = scale * dS K,   dK = scale * dS^T Q,

summed over the pieces that share rows or keys. A dense kernel that takes ``O`` and the log-sum-exp
(cuDNN's flash attention backward) computes exactly that for an all-visible or causal piece, at the
speed of dense attention. On a CPU the same sums are taken in torch, in float32 or better: that path
exists for the tests, which check it against the reference backend.
"""

from __future__ import annotations

import functools

import torch

from maskc.runtime.dtypes import dtype_name
from maskc.runtime.format import pieces_take

Piece = tuple[int, int, int, int, bool]  # q0, q1, k0, k1, causal


def supported(q: torch.Tensor) -> bool:
    """Whether :func:`backward` runs these inputs: on a GPU as :func:`maskc.runtime.format.pieces_take`
    says and where cuDNN's attention is available; on a CPU (the torch sums) always."""
    if not q.is_cuda:
        return True
    return pieces_take(dtype_name(q.dtype) or "", q.shape[-1]) and _cudnn_attention(q.device)


@functools.lru_cache(maxsize=None)
def _cudnn_attention(device: torch.device) -> bool:
    return (torch.backends.cudnn.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
            and hasattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention_backward"))


def backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
             pieces: tuple[Piece, ...], scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dq, dk, dv`` of ``o = attention(q, k, v)`` under the mask the pieces cover, from the forward's
    ``o`` and ``lse`` (``[B, H, Nq]``, natural log); rows and keys outside every piece get zeros.
    Grouped key/value heads (``Hq`` a multiple of ``Hkv``) run as their query heads: ``k`` and
    ``v`` repeated per group, their gradients summed back over it in float32."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
    dq, dk, dv = _by_pieces(do, q, k, v, o, lse, pieces, scale)
    if group > 1:
        dk, dv = (t.unflatten(1, (-1, group)).sum(2, dtype=torch.float32).to(t.dtype) for t in (dk, dv))
    return dq, dk, dv


def _by_pieces(do, q, k, v, o, lse, pieces: tuple[Piece, ...], scale: float):
    """:func:`backward` with as many key/value heads as query heads."""
    if q.is_cuda:
        piece_backward = functools.partial(_cudnn_piece, _no_dropout(q.device))
    else:
        piece_backward = _torch_piece
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for q0, q1, k0, k1, causal in pieces:
        rows, keys = slice(q0, q1), slice(k0, k1)
        grads = piece_backward(do[:, :, rows], q[:, :, rows], k[:, :, keys], v[:, :, keys], o[:, :, rows],
                               lse[:, :, rows], causal, scale)
        for total, part, span in zip((dq, dk, dv), grads, (rows, keys, keys)):
            total[:, :, span] += part
        del grads, part  # one piece's gradients alive at a time, not two while the next piece runs
    return dq, dk, dv


@functools.lru_cache(maxsize=None)
def _no_dropout(device: torch.device) -> torch.Tensor:
    """The philox seed and offset cuDNN's backward takes, unused without dropout: made once per
    device, not at every step."""
    return torch.zeros((), dtype=torch.int64, device=device)


def _cudnn_piece(no_dropout, do, q, k, v, o, lse, causal: bool, scale: float):
    """cuDNN's attention backward on one piece, given the whole mask's ``o`` and ``lse``
    (``no_dropout``: the philox seed and offset it takes, unused without dropout)."""
    return torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
        do, q, k, v, o, lse.unsqueeze(-1).contiguous(), no_dropout, no_dropout, None, None, None,
        q.shape[2], k.shape[2], 0.0, causal, scale=scale)


def _torch_piece(do, q, k, v, o, lse, causal: bool, scale: float):
    """The same gradients in torch (float32, or float64 for float64 inputs)."""
    f = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf, dof = q.to(f), k.to(f), v.to(f), do.to(f)
    p = torch.exp((qf @ kf.transpose(-1, -2)) * scale - lse.to(f)[..., None])
    if causal:
        p = torch.tril(p)
    dp = dof @ vf.transpose(-1, -2)
    ds = p * (dp - (dof * o.to(f)).sum(-1, keepdim=True))
    grads = (ds @ kf * scale, ds.transpose(-1, -2) @ qf * scale, p.transpose(-1, -2) @ dof)
    return tuple(g.to(q.dtype) for g in grads)
