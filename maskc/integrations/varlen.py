"""``varlen_attention``: flash-attn's variable-length call, on maskc's documents family.

flash-attn's ``flash_attn_varlen_func`` packs a batch's sequences into one ``[total, H, D]`` tensor
described by ``cu_seqlens``. The same call here binds the documents family (causal or not, with an
optional sliding window; ``maskc.integrations.families``) to ``cu_seqlens`` on the device and runs
maskc's attention operator over the packed row: autograd, grouped key/value heads (GQA), one
family plan per ``(causal, window)`` and length bound, made once per process.

Self-attention only: the queries' and keys' sequences are the same (``cu_seqlens_q`` and
``cu_seqlens_k`` one tensor, or equal). ``max_seqlen_q``/``max_seqlen_k`` are accepted for
flash-attn's signature and checked against nothing: binding needs no host-side lengths.
"""

from __future__ import annotations

import torch

from maskc.integrations import families


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                     max_seqlen_q: int | None = None, max_seqlen_k: int | None = None, causal: bool = False,
                     window: int | None = None, softmax_scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """Attention of each packed sequence to itself: ``q [total, Hq, D]``, ``k``/``v`` ``[total, Hkv, D]``
    (``Hq`` a multiple of ``Hkv``), ``cu_seqlens`` int32 ``[sequences + 1]`` (starting at 0; tokens from
    its last value on are padding, which sees nothing and gives zeros). ``window`` (tokens) keeps keys
    within ``window`` of the query, itself included (``i - window < j <= i`` causal, ``|i - j| < window``
    not). Returns ``[total, Hq, D]``, contiguous. ``cu_seqlens_q`` other than ``cu_seqlens_k`` (a
    different tensor) is compared with it on the host once: a synchronisation; different lengths
    (cross-attention) are refused."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must be a [total, heads, head_dim] tensor, got {getattr(t, 'shape', type(t).__name__)}")
    if k.shape[0] != q.shape[0] or (cu_seqlens_q is not cu_seqlens_k and not torch.equal(cu_seqlens_q, cu_seqlens_k)):
        raise ValueError("varlen_attention runs self-attention over packed sequences: cu_seqlens_q must equal cu_seqlens_k "
                         f"and q and k hold the same tokens (q {list(q.shape)}, k {list(k.shape)}); cross-attention is not supported")
    total = q.shape[0]
    family = families.documents(causal, window, total)
    row = lambda t: t.transpose(0, 1)[None]  # noqa: E731  [total, H, D] as one packed batch row [1, H, total, D], a view
    out = family.attention(row(q), row(k), row(v), scale=softmax_scale, backend=backend, cu_seqlens=cu_seqlens_q)
    return out[0].transpose(0, 1).contiguous()
