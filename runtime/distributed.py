"""Context-parallel attention: every rank of a process group runs its share of one sharded mask.

A mask sharded by ``maskc.shard`` (a directory: the shard map and one plan per rank) is loaded on
each rank with :func:`load_shard`. A rank holds the queries, keys and values of the tokens it owns
(``[B, H, n_rank, D]``, in ascending token order: :attr:`ShardedPlan.tokens`). One call:

1. **fetch**: the keys and values its plan needs travel in one ``all_to_all`` (NCCL on GPUs, gloo
   on CPUs), each owner sending the tiles every rank needs of it, issued asynchronously
   (:meth:`ShardedPlan.fetch` returns at once; on a GPU the transfer runs on the communicator's
   stream and overlaps whatever the caller launches before :meth:`ShardedPlan.attend`);
2. **attend**: its own plan runs on its queries and the fetched keys and values, through
   ``LoadedPlan.attention`` (Triton kernels on CUDA, the reference backend on CPU), exact;
3. **backward** (autograd): dq stays with the rank; dk and dv of every fetched key go back to its
   owner in the reverse ``all_to_all`` and are summed there, in float32 or better.

The index arrays of the exchange are derived from the shard map once, when the plan is loaded;
a call launches the exchange and the kernels only. :func:`run_local` runs every rank's share in one
process, one after another, for checking a sharding without a process group.

On every rank of the group (e.g. under ``torchrun --nproc-per-node P``), after sharding once
offline (``maskc shard spec.json -P P -o docs.shards``, or ``maskc.shard.shard(...).save(...)``)::

    sharded = load_shard("docs.shards", device="cuda")        # this rank's plan and exchange
    tokens = torch.as_tensor(sharded.tokens, device="cuda")    # the tokens it owns
    fetched = sharded.fetch(k[:, :, tokens], v[:, :, tokens])  # the exchange starts ...
    q_mine = project_queries(x[:, tokens])                     # ... while other work runs
    out = sharded.attend(q_mine, fetched)                      # [B, H, len(tokens), D], with autograd
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from maskc.runtime.format import Plan
from maskc.runtime.format.shards import ShardError, ShardMap, load_manifest, plan_path
from maskc.runtime.loaded import LoadedPlan, load_plan


@dataclass(frozen=True)
class Exchange:
    """Rank ``rank``'s side of the key/value exchange, as index arrays over the token axis.

    ``send_index``: the rank's local tokens it sends, grouped by destination rank (``send_splits``
    tokens to each); ``recv_splits``: tokens received from each rank; ``recv_position``: where each
    received token goes among the keys of the rank's plan (``kv_order`` puts them there).
    """

    send_index: np.ndarray
    send_splits: list[int]
    recv_splits: list[int]
    recv_position: np.ndarray
    kv_order: np.ndarray

    @classmethod
    def of(cls, shard_map: ShardMap, rank: int) -> "Exchange":
        own_tiles, own_tokens = shard_map.owned_tiles(rank), shard_map.owned_tokens(rank)
        need_tiles, need_tokens = shard_map.needed_tiles(rank), shard_map.needed_tokens(rank)
        send, recv = [], []
        for other in range(shard_map.ranks):
            send.append(_positions(shard_map, shard_map.needed_tiles(other), own_tiles, own_tokens))
            recv.append(_positions(shard_map, need_tiles, shard_map.owned_tiles(other), need_tokens))
        position = np.concatenate(recv)
        return cls(np.concatenate(send), [a.size for a in send], [a.size for a in recv], position, np.argsort(position))


def _positions(shard_map: ShardMap, tiles: np.ndarray, other_tiles: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Where the tokens of the tiles in both ``tiles`` and ``other_tiles`` are in ``among`` (ascending tokens)."""
    return np.searchsorted(among, shard_map.tokens(np.intersect1d(tiles, other_tiles, assume_unique=True)))


class ShardedPlan:
    """One rank's share of a sharded mask, ready to run: its plan and its side of the exchange."""

    def __init__(self, shard_map: ShardMap, plan: Plan | LoadedPlan, rank: int, group: dist.ProcessGroup | None = None,
                 device: torch.device | str | None = None):
        """``rank`` is this process's rank in ``group`` (default: the default group). Without an
        initialised process group the share can be looked at, not run."""
        if dist.is_available() and dist.is_initialized():
            world, own = dist.get_world_size(group), dist.get_rank(group)
            if world != shard_map.ranks or own != rank:
                raise ShardError(f"the mask is sharded over {shard_map.ranks} ranks; this is rank {own} of a group of {world}, asked for rank {rank}")
        self.map, self.rank, self.group = shard_map, rank, group
        self.loaded = check_plan(shard_map, rank, plan if isinstance(plan, LoadedPlan) else load_plan(plan, device))
        self.exchange = Exchange.of(shard_map, rank)
        self._on: dict[torch.device, dict[str, torch.Tensor]] = {}

    @property
    def tokens(self) -> np.ndarray:
        """The tokens this rank owns, ascending: ``x[:, :, tokens]`` is its share of a whole sequence ``x``."""
        return self.map.owned_tokens(self.rank)

    def fetch(self, k: torch.Tensor, v: torch.Tensor) -> "Fetch":
        """Start the exchange of keys and values ``[B, Hkv, n_rank, D]`` (this rank's tokens); returns at once."""
        n = self.tokens.size
        if k.dim() != 4 or k.shape != v.shape or k.shape[2] != n:
            raise ValueError(f"k and v must be [B, Hkv, {n}, D] with this rank's {n} tokens, got {list(k.shape)} and {list(v.shape)}")
        index = self._indices(k.device)
        with torch.no_grad():
            send = torch.cat([k, v], dim=-1).index_select(2, index["send"]).permute(2, 0, 1, 3).contiguous()
        recv = send.new_empty((int(self.exchange.recv_position.size), *send.shape[1:]))
        work = dist.all_to_all_single(recv, send, self.exchange.recv_splits, self.exchange.send_splits, group=self.group, async_op=True)
        return Fetch(self, k, v, recv, work)

    def attend(self, q: torch.Tensor, fetched: "Fetch", scale: float | None = None, backend: str = "auto") -> torch.Tensor:
        """This rank's attention output ``[B, H, n_rank, D]`` once ``fetched`` has arrived."""
        if fetched.owner is not self:
            raise ValueError("attend takes what this plan's own fetch returned")
        k_needed, v_needed = _Gathered.apply(fetched.k, fetched.v, fetched)
        return self.loaded.attention(q, k_needed, v_needed, scale=scale, backend=backend)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, backend: str = "auto") -> torch.Tensor:
        """Fetch and attend in one call: this rank's share of the masked attention, with autograd."""
        return self.attend(q, self.fetch(k, v), scale=scale, backend=backend)

    __call__ = attention

    def _indices(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The exchange's index tensors on ``device``, moved there the first time only."""
        if device not in self._on:
            e = self.exchange
            self._on[device] = {name: torch.as_tensor(a, dtype=torch.long, device=device)
                                for name, a in (("send", e.send_index), ("position", e.recv_position), ("order", e.kv_order))}
        return self._on[device]

    def __repr__(self) -> str:
        return f"ShardedPlan(rank {self.rank} of {self.map.ranks}, {self.tokens.size} tokens, {self.loaded!r})"


@dataclass
class Fetch:
    """An exchange under way: the keys and values it was started from, the buffer it fills, its handle."""

    owner: ShardedPlan
    k: torch.Tensor
    v: torch.Tensor
    recv: torch.Tensor
    work: dist.Work


class _Gathered(torch.autograd.Function):
    """The fetched keys and values in the order of the rank's plan; backward sends their gradients
    to the owners and sums what arrives for this rank's own tokens."""

    @staticmethod
    def forward(ctx, k, v, fetched):
        fetched.work.wait()
        plan = fetched.owner
        index = plan._indices(k.device)
        kv = fetched.recv.index_select(0, index["order"]).permute(1, 2, 0, 3)
        ctx.plan, ctx.shape = plan, k.shape
        d = k.shape[-1]
        return kv[..., :d].contiguous(), kv[..., d:].contiguous()

    @staticmethod
    def backward(ctx, dk, dv):
        plan, shape = ctx.plan, ctx.shape
        e, index = plan.exchange, plan._indices(dk.device)
        back = torch.cat([dk, dv], dim=-1).permute(2, 0, 1, 3).index_select(0, index["position"]).contiguous()
        grads = back.new_empty((int(e.send_index.size), *back.shape[1:]))
        dist.all_to_all_single(grads, back, e.send_splits, e.recv_splits, group=plan.group)
        acc = torch.float64 if grads.dtype == torch.float64 else torch.float32
        total = grads.new_zeros((shape[2], *grads.shape[1:]), dtype=acc).index_add_(0, index["send"], grads.to(acc))
        total = total.permute(1, 2, 0, 3).to(dk.dtype)
        return total[..., : shape[-1]].contiguous(), total[..., shape[-1]:].contiguous(), None


def load_shard(directory: str | os.PathLike, rank: int | None = None, group: dist.ProcessGroup | None = None,
               device: torch.device | str | None = None) -> ShardedPlan:
    """This process's share of the sharded mask in ``directory``: the manifest and its rank's plan,
    checked against each other and against ``group`` (default: the default process group)."""
    shard_map = load_manifest(directory)
    if rank is None:
        rank = dist.get_rank(group)
    if not 0 <= rank < shard_map.ranks:
        raise ShardError(f"{directory}: rank {rank} is not one of the {shard_map.ranks} ranks the mask is sharded over")
    return ShardedPlan(shard_map, load_plan(plan_path(directory, rank), device), rank, group)


def check_plan(shard_map: ShardMap, rank: int, loaded: LoadedPlan) -> LoadedPlan:
    """``loaded`` if it is shaped as rank ``rank``'s share (its tokens by the keys it needs), else ShardError."""
    if not 0 <= rank < shard_map.ranks:
        raise ShardError(f"rank {rank} is not one of the {shard_map.ranks} ranks the mask is sharded over")
    p = loaded.plan
    expected = (shard_map.owned_tokens(rank).size, shard_map.needed_tokens(rank).size)
    if (p.q_len, p.kv_len) != expected:
        raise ShardError(f"rank {rank}'s plan is {p.q_len}x{p.kv_len}, but the shard map gives it {expected[0]} tokens and {expected[1]} keys")
    return loaded


def run_local(shard_map: ShardMap, plans: Sequence[Plan | LoadedPlan], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """The whole sequence's output ``[B, H, N, D]`` computed as the ranks would, each rank's share in
    turn in this process (its tokens' queries against the keys it needs), with autograd."""
    if len(plans) != shard_map.ranks:
        raise ShardError(f"the mask is sharded over {shard_map.ranks} ranks, got {len(plans)} plans")
    outputs, order = [], []
    for rank, plan in enumerate(plans):
        loaded = check_plan(shard_map, rank, plan if isinstance(plan, LoadedPlan) else load_plan(plan))
        own, need = (torch.as_tensor(t, device=q.device) for t in (shard_map.owned_tokens(rank), shard_map.needed_tokens(rank)))
        outputs.append(loaded.attention(q.index_select(2, own), k.index_select(2, need), v.index_select(2, need), scale=scale, backend=backend))
        order.append(own)
    return torch.cat(outputs, dim=2).index_select(2, torch.argsort(torch.cat(order)))
