"""Sparse Flash Attention's families (Pagliardini et al., 2023), computed from q and k at every step,
per head: hash buckets and query/key dropping, alone or together.

Queries and keys are sorted separately, stably, by bucket (kept tokens in order of position inside
their bucket; a dropped token is its own bucket, after every kept one). In sorted coordinates, the
key at sorted position ``j`` (bucket ``b``, original position ``p``) is seen by the queries of
bucket ``b`` at positions ``>= p`` (causal) or all of them: one run of the sorted queries, found by
two ``searchsorted`` calls on the sorted keys ``bucket * N + position``. A dropped key is seen by
nobody; a dropped query sees nothing (its row of the attention gives zeros).
"""

from __future__ import annotations

import torch

from maskc.runtime.family.checks import first_violation, flag_tensor, index_tensor, same_device, same_shape
from maskc.runtime.family.runs import Runs

MAX_BUCKET = 2**31 - 2  # bucket ids are in [0, MAX_BUCKET]; MAX_BUCKET + 1 is the dropped tokens' bucket
DROPPED = MAX_BUCKET + 1


def hash_buckets(q_buckets: torch.Tensor, k_buckets: torch.Tensor, q_keep: torch.Tensor | None = None,
                 k_keep: torch.Tensor | None = None, causal: bool = True, check: bool = False) -> Runs:
    """Bucketed attention: query ``i`` sees key ``j`` iff both are kept, ``q_buckets[i] ==
    k_buckets[j]``, and (causal) ``j <= i``, per batch row and head.

    ``q_buckets``, ``k_buckets``: integers ``[B, H, N]`` in ``[0, 2^31 - 2]`` (values outside are
    clamped; ``check=True`` refuses them on the host, a synchronisation). ``q_keep``, ``k_keep``:
    optional bools ``[B, H, N]`` (False = dropped). Returns runs in sorted coordinates with
    ``perm_q``/``perm_k`` ``[B * H, N]``.
    """
    q_buckets = index_tensor(q_buckets, "q_buckets", 3)
    k_buckets = index_tensor(k_buckets, "k_buckets", 3)
    _same(k_buckets, "k_buckets", q_buckets, "q_buckets")
    if check:
        for name, buckets in (("q_buckets", q_buckets), ("k_buckets", k_buckets)):
            first_violation((buckets < 0) | (buckets > MAX_BUCKET), name, f"bucket ids must be in [0, {MAX_BUCKET}]", buckets)
    batch, heads, n = q_buckets.shape
    q_key, perm_q = _sorted_keys(q_buckets, q_keep, "q_keep")
    k_key, perm_k = _sorted_keys(k_buckets, k_keep, "k_keep")
    bucket = torch.div(k_key, n, rounding_mode="floor")
    start = torch.searchsorted(q_key, k_key if causal else bucket * n)
    end = torch.searchsorted(q_key, (bucket + 1) * n)
    end = torch.where(bucket == DROPPED, start, end)
    return Runs(start, end, n, batch=batch, heads=heads, perm_q=perm_q, perm_k=perm_k)


def qk_dropping(q_keep: torch.Tensor, k_keep: torch.Tensor, causal: bool = True) -> Runs:
    """Query/key dropping: query ``i`` sees key ``j`` iff both are kept and (causal) ``j <= i``.
    ``q_keep``, ``k_keep``: bools ``[B, H, N]``. Kept tokens are sorted first, in order."""
    q_keep = flag_tensor(q_keep, "q_keep", 3)
    _same(flag_tensor(k_keep, "k_keep", 3), "k_keep", q_keep, "q_keep")
    zeros = torch.zeros(q_keep.shape, dtype=torch.int32, device=q_keep.device)
    return hash_buckets(zeros, zeros, q_keep, k_keep, causal)


def _sorted_keys(buckets: torch.Tensor, keep: torch.Tensor | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted keys ``bucket * N + position`` (int64 ``[B * H, N]``, dropped tokens in bucket
    ``DROPPED``) and the sort's permutation (int32): unique keys, so the order is total."""
    n = buckets.shape[-1]
    bucket = buckets.long().clamp(0, MAX_BUCKET)
    if keep is not None:
        _same(flag_tensor(keep, name, 3), name, buckets, "the buckets")
        bucket = bucket.masked_fill(~keep, DROPPED)
    key = bucket * n + torch.arange(n, device=buckets.device)
    key, perm = torch.sort(key.reshape(-1, n), dim=1)
    return key, perm.to(torch.int32)


def _same(tensor: torch.Tensor, name: str, like: torch.Tensor, like_name: str) -> None:
    same_shape(tensor, name, like.shape, like_name)
    same_device(tensor, name, like.device, like_name)
