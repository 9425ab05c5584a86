"""Context parallelism, runtime side: the sharded attention equals the unsharded one, forward and
all three gradients — ranks simulated in one process, and real ranks over gloo."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton case runs the kernels on CPU tensors

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import dense_reference, rel_err

import maskc
from maskc import library
from maskc.runtime import load_plan
from maskc.runtime.distributed import Exchange, ShardedPlan, load_shard, run_local
from maskc.runtime.format.shards import ShardError
from maskc.shard import shard

N = 200


def masks() -> dict[str, object]:
    """Causal documents, prefix-LM, a window, and a random per-head mask with some empty rows."""
    rng = np.random.default_rng(7)
    scattered = rng.random((2, N, N)) < 0.08
    scattered[:, 40:50] = False  # rows that see nothing: zeros, never NaN
    return {
        "documents": library.documents([70, 37, 93], causal=True),
        "prefix_lm": library.prefix_lm(N, 70),
        "window": library.sliding_window(N, 40),
        "random": scattered,
    }


def inputs(seed: int, heads: int = 2, kv_heads: int = 2, dtype=torch.float64, d: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, N, d, generator=g, dtype=dtype)
    k, v = (torch.randn(1, kv_heads, N, d, generator=g, dtype=dtype) for _ in range(2))
    return {"q": q, "k": k, "v": v, "go": torch.randn(1, heads, N, d, generator=g, dtype=dtype)}


def unsharded(mask, x: dict[str, torch.Tensor], backend: str = "reference") -> list[torch.Tensor]:
    """Output and dq, dk, dv of the whole mask's plan in one process."""
    q, k, v = (x[n].clone().requires_grad_() for n in "qkv")
    o = load_plan(maskc.compile(mask, block=32)).attention(q, k, v, backend=backend)
    return [o.detach(), *torch.autograd.grad(o, (q, k, v), x["go"])]


def assert_same(got: list[torch.Tensor], expected: list[torch.Tensor], tol: float) -> None:
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        assert not torch.isnan(a).any(), name
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("ranks", [2, 3, 4])
@pytest.mark.parametrize("kind", ["documents", "prefix_lm", "window", "random"])
def test_ranks_run_in_turn_give_the_unsharded_result(kind, ranks):
    mask = masks()[kind]
    x = inputs(seed=ranks, kv_heads=1 if kind == "documents" else 2)
    sharding = shard(mask, ranks, block=32, profile="none")
    q, k, v = (x[n].clone().requires_grad_() for n in "qkv")
    o = run_local(sharding.map, sharding.plans, q, k, v, backend="reference")
    got = [o.detach(), *torch.autograd.grad(o, (q, k, v), x["go"])]
    assert_same(got, unsharded(mask, x), tol=1e-12)
    dense = mask if isinstance(mask, np.ndarray) else mask.to_dense()
    for a, b in zip(got, dense_reference(x["q"], x["k"], x["v"], dense, 16 ** -0.5, x["go"])):
        assert rel_err(a, b) < 1e-6  # the plan's log-sum-exp is float32


def test_ranks_run_in_turn_on_the_triton_kernels():
    mask = masks()["prefix_lm"]
    x = inputs(seed=11, dtype=torch.float32)
    sharding = shard(mask, 2, block=32, profile="none")
    q, k, v = (x[n].clone().requires_grad_() for n in "qkv")
    o = run_local(sharding.map, sharding.plans, q, k, v, backend="triton")
    got = [o.detach(), *torch.autograd.grad(o, (q, k, v), x["go"])]
    for a, b in zip(got, dense_reference(x["q"], x["k"], x["v"], mask.to_dense(), 16 ** -0.5, x["go"])):
        assert rel_err(a, b) < 1e-5


def test_each_rank_receives_exactly_the_keys_its_plan_needs():
    sharding = shard(masks()["documents"], 4, block=32, profile="none", strategy="lpt", plans=False)
    m = sharding.map
    exchanges = [Exchange.of(m, r) for r in range(m.ranks)]
    for r, e in enumerate(exchanges):
        assert [other.send_splits[r] for other in exchanges] == e.recv_splits
        # an all_to_all of global token ids, as each owner would send them
        sent = [np.split(m.owned_tokens(s)[exchanges[s].send_index], np.cumsum(exchanges[s].send_splits)[:-1]) for s in range(m.ranks)]
        received = np.concatenate([sent[s][r] for s in range(m.ranks)])
        assert np.array_equal(received[e.kv_order], m.needed_tokens(r))


def test_a_rank_s_plan_must_have_its_share_s_shape():
    sharding = shard(masks()["window"], 3, block=32, profile="none")
    with pytest.raises(ShardError, match="rank 1's plan is"):
        ShardedPlan(sharding.map, sharding.plans[0], 1)
    with pytest.raises(ShardError, match="rank 3 is not one of the 3 ranks"):
        ShardedPlan(sharding.map, sharding.plans[0], 3)
    with pytest.raises(ShardError, match="sharded over 3 ranks, got 2 plans"):
        run_local(sharding.map, sharding.plans[:2], *(torch.zeros(1, 1, N, 8) for _ in range(3)))


# --- real ranks over gloo -------------------------------------------------------------------------


def _rank_main(rank: int, ranks: int, root: str) -> None:
    """One rank: load its share of every case, run forward and backward on its tokens, save them."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=ranks)
    try:
        for case in sorted(Path(root).glob("case-*")):
            x = torch.load(case / "inputs.pt")
            sharded = load_shard(case)
            tokens = torch.as_tensor(sharded.tokens)
            q, k, v = (x[n].index_select(2, tokens).requires_grad_() for n in "qkv")
            fetched = sharded.fetch(k, v)
            o = sharded.attend(q, fetched, backend="reference")
            o.backward(x["go"].index_select(2, tokens))
            torch.save({"o": o.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}, case / f"rank{rank}.pt")
        try:
            load_shard(Path(root) / "other-size")
        except ShardError as e:
            (Path(root) / f"refused{rank}.txt").write_text(str(e))
    finally:
        dist.destroy_process_group()


def test_ranks_over_gloo_give_the_unsharded_result(tmp_path):
    ranks = 3  # 7 tiles over 3 processes: uneven shares, each rank exchanging with two others
    expected = {}
    for i, (kind, mask) in enumerate(masks().items()):
        case = tmp_path / f"case-{kind}"
        shard(mask, ranks, block=32, profile="none", strategy="lpt" if kind == "window" else "auto").save(case)
        x = inputs(seed=100 + i, kv_heads=1 if kind == "documents" else 2)
        torch.save(x, case / "inputs.pt")
        expected[kind] = unsharded(mask, x)
    shard(masks()["window"], ranks + 1, block=32, profile="none").save(tmp_path / "other-size")
    mp.spawn(_rank_main, args=(ranks, str(tmp_path)), nprocs=ranks, join=True)
    for kind, want in expected.items():
        case = tmp_path / f"case-{kind}"
        shares = load_shard_map_outputs(case, ranks)
        assert_same(shares, want, tol=1e-12)
    for rank in range(ranks):
        assert f"sharded over {ranks + 1} ranks; this is rank {rank} of a group of {ranks}" in (tmp_path / f"refused{rank}.txt").read_text()


def load_shard_map_outputs(case: Path, ranks: int) -> list[torch.Tensor]:
    """Every rank's saved output and gradients, put back in token order."""
    from maskc.runtime.format.shards import load_manifest

    m = load_manifest(case)
    order = torch.as_tensor(np.concatenate([m.owned_tokens(r) for r in range(ranks)]))
    saved = [torch.load(case / f"rank{r}.pt") for r in range(ranks)]
    return [torch.cat([s[name] for s in saved], dim=2).index_select(2, torch.argsort(order)) for name in ("o", "dq", "dk", "dv")]
