"""Family plans run: ``load_plan(family_plan)`` binds each step's data and runs the attention.

For random per-step data of every family, the output and dq, dk, dv of a bound step must match the
float64 dense reference of the same mask built here in numpy (reference backend; Triton kernels in
the interpreter in fp32 and fp16, every kernel output poisoned first), and agree bitwise with the
statically compiled interval plan of the same mask (same tiles, no schedule), on both backends: in
the bound step's sorted order, for the sorted families, on inputs gathered into it. Also: errors
name the argument, a step repeats no launch decision and reads the family plan's grid traits.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import dense_reference, rel_err
from family_check import NoHostSync, poison_outputs
from test_family_kinds import (
    buckets_mask, doc_ids, documents_mask, forest, position_ids, preorder, renumber, segments, shared_prefix_ids, shared_prefix_mask, tree_mask,
)

import maskc
from maskc.family import DEFAULTS
from maskc.runtime import load_plan
from maskc.runtime.bound import BoundPlan, LoadedFamily
from maskc.runtime.family import BindError
from maskc.runtime.format import TRAITS, FamilyPlan, PlanError, list_traits
from maskc.runtime.kernels import common

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU tests run the kernels in the Triton interpreter")
BLOCK = 32
MAX_LEN = 128
D = 16
TOL = {torch.float32: 1e-5, torch.float16: 1e-2}


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    """Every binding and attention kernel output starts as poison: an unwritten element cannot pass."""
    poison_outputs(monkeypatch)
    monkeypatch.setattr(common, "empty", lambda shape, dtype, device: torch.full(shape, math.nan, dtype=dtype, device=device))


@dataclass
class Step:
    """One step of a family: its kind and parameters, the step data, the caller's dense mask
    ``[B or 1, H or 1, N, N]``, and the heads of q and of k/v."""

    kind: str
    params: dict
    data: dict
    mask: np.ndarray
    q_heads: int = 2
    kv_heads: int = 1


def documents_step(rng, given_as: str) -> Step:
    n = int(rng.integers(70, MAX_LEN))
    if given_as == "cu_seqlens":
        lengths = [length * (rng.random() > 0.2) for length in segments(rng, int(rng.integers(n // 2, n)), n // 3)]
        cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        ids = np.full((1, n), -1)
        ids[0, : cu[-1]] = np.repeat(np.arange(len(lengths)), lengths)
        return Step("documents", {}, {"cu_seqlens": torch.from_numpy(cu), "n": n}, documents_mask(ids, True)[:, None])
    ids = doc_ids(rng, 2, n)
    if given_as == "position_ids":  # bidirectional documents cut to a window
        data = {"position_ids": torch.from_numpy(position_ids(ids, rng))}
        return Step("documents", {"causal": False, "window": 9}, data, documents_mask(ids, False, 9)[:, None])
    if given_as == "prefix":
        prefix = rng.random(ids.shape) < 0.3
        data = {"doc_ids": torch.from_numpy(ids), "prefix": torch.from_numpy(prefix)}
        return Step("documents", {"prefix": True}, data, documents_mask(ids, True, prefix=prefix & (ids >= 0))[:, None])
    return Step("documents", {}, {"doc_ids": torch.from_numpy(ids)}, documents_mask(ids, True)[:, None])


def shared_prefix_step(rng) -> Step:
    groups, answers = shared_prefix_ids(rng, 2, 100, 40)
    data = {"group_ids": torch.from_numpy(groups), "segment_ids": torch.from_numpy(answers)}
    return Step("shared_prefix", {}, data, shared_prefix_mask(groups, answers)[:, None])


def tree_step(rng, numbered_in_preorder: bool) -> Step:
    rows = [forest(rng, 90) for _ in range(2)]
    if numbered_in_preorder:
        rows = [renumber(p, preorder(p)) for p in rows]
    parents = np.array(rows)
    parents[1, 80:] = -2  # a padded row
    params = {"max_depth": 90, "preorder": numbered_in_preorder}
    return Step("token_tree", params, {"parents": torch.from_numpy(parents)}, tree_mask(parents)[:, None])


def buckets_step(rng) -> Step:
    """Hash buckets with dropping, per head, the keys' data per key/value head (GQA 4 over 2)."""
    n = int(rng.integers(60, 110))
    qb, kb = rng.integers(0, 4, (2, 4, n)), rng.integers(0, 4, (2, 2, n))
    q_keep, k_keep = rng.random(qb.shape) < 0.8, rng.random(kb.shape) < 0.8
    q_keep[0, 0] = False  # a head whose queries are all dropped
    per_query_head = lambda x: np.repeat(x, 2, axis=1)  # noqa: E731
    mask = buckets_mask(qb, per_query_head(kb), q_keep, per_query_head(k_keep), True).reshape(2, 4, n, n)
    data = {name: torch.from_numpy(x) for name, x in zip(("q_buckets", "k_buckets", "q_keep", "k_keep"), (qb, kb, q_keep, k_keep))}
    return Step("hash_buckets", {}, data, mask, q_heads=4, kv_heads=2)


def dropping_step(rng) -> Step:
    shape = (1, 2, 100)
    q_keep, k_keep = rng.random(shape) < 0.6, rng.random(shape) < 0.6
    zeros = np.zeros(shape, dtype=int)
    mask = buckets_mask(zeros, zeros, q_keep, k_keep, False).reshape(1, 2, 100, 100)
    data = {"q_keep": torch.from_numpy(q_keep), "k_keep": torch.from_numpy(k_keep)}
    return Step("qk_dropping", {"causal": False}, data, mask, kv_heads=2)


STEPS = {
    "doc_ids": lambda rng: documents_step(rng, "doc_ids"),
    "position_ids": lambda rng: documents_step(rng, "position_ids"),
    "cu_seqlens": lambda rng: documents_step(rng, "cu_seqlens"),
    "prefix": lambda rng: documents_step(rng, "prefix"),
    "shared_prefix": shared_prefix_step,
    "tree": lambda rng: tree_step(rng, False),
    "tree_preorder": lambda rng: tree_step(rng, True),
    "hash_buckets": buckets_step,
    "qk_dropping": dropping_step,
}


def family(kind: str, params: dict | None = None, traits: dict | None = None) -> LoadedFamily:
    """The loaded family plan of ``kind`` (its defaults, then ``params``) for our tiles and length bound."""
    plan = FamilyPlan(kind, {**DEFAULTS[kind], **(params or {})}, MAX_LEN, BLOCK, BLOCK, traits or dict.fromkeys(TRAITS, False))
    loaded = load_plan(plan)
    assert isinstance(loaded, LoadedFamily)
    return loaded


def inputs(step: Step, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Fresh random q, k, v and upstream gradient for a step."""
    batch, n = step.mask.shape[0], step.mask.shape[-1]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, step.q_heads, n, D, generator=g).to(dtype)
    k, v = (torch.randn(batch, step.kv_heads, n, D, generator=g).to(dtype) for _ in range(2))
    return q, k, v, torch.randn(q.shape, generator=g).to(dtype)


def attend(bound: BoundPlan, q, k, v, do, backend: str) -> list[torch.Tensor]:
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    o = bound.attention(q, k, v, backend=backend)
    return [o.detach(), *torch.autograd.grad(o, (q, k, v), do)]


@pytest.mark.parametrize("backend, dtype", [("reference", torch.float32), ("triton", torch.float32), ("triton", torch.float16)])
@pytest.mark.parametrize("name", STEPS)
def test_bound_steps_match_the_float64_reference(name, backend, dtype):
    step = STEPS[name](np.random.default_rng(len(name)))
    q, k, v, do = inputs(step, len(name), dtype)
    loaded = family(step.kind, step.params)
    got = loaded.attention(q, k, v, backend=backend, **step.data)  # bind and run in one call
    bound = loaded.bind(backend, **step.data)
    results = attend(bound, q, k, v, do, backend)
    assert torch.equal(got, results[0])
    want = dense_reference(q, k, v, step.mask, 1 / math.sqrt(D), do)
    for label, x, ref, like in zip(("o", "dq", "dk", "dv"), results, want, (q, q, k, v)):
        assert x.shape == like.shape and x.dtype == like.dtype, label
        assert torch.isfinite(x).all(), f"{label} has non-finite values"
        assert rel_err(x, ref) < TOL[dtype], f"{label}: {rel_err(x, ref):.2e}"
    empty = ~step.mask.any(-1)  # rows with no visible key: exactly zero output and dq
    empty = torch.from_numpy(np.broadcast_to(empty, q.shape[:3]).copy())
    assert (results[0][empty] == 0).all() and (results[1][empty] == 0).all()


def sorted_mask(step: Step, bound: BoundPlan) -> np.ndarray:
    """The caller's mask in the bound step's order, per slice: ``M[s, perm_q[s, i], perm_k[s, j]]``."""
    plan = bound.plan
    mask = np.broadcast_to(step.mask, (plan.batch, plan.heads, *step.mask.shape[2:]))
    if not plan.reordered:
        return np.ascontiguousarray(mask)
    perm_q, perm_k = plan.perm_q.numpy(), plan.perm_k.numpy()
    out = np.empty_like(mask)
    for s in range(plan.batch * plan.heads):
        b, h = divmod(s, plan.heads)
        out[b, h] = mask[b, h][np.ix_(perm_q[s], perm_k[s])]
    return out


def plan_order(t: torch.Tensor, perm: torch.Tensor, mask_heads: int) -> torch.Tensor:
    """``t [B, H, N, D]`` gathered into the bound order: head ``h`` through the permutation of the
    mask slice of its first query head (``perm [slices, N]``, slices ``b * mask_heads + h'``)."""
    batch, heads = t.shape[:2]
    group = mask_heads // heads if mask_heads > 1 else 0
    rows = [[perm[b * mask_heads + h * group if mask_heads > 1 else b] for h in range(heads)] for b in range(batch)]
    index = torch.stack([torch.stack(r) for r in rows]).long()
    return torch.gather(t, 2, index[..., None].expand_as(t))


@pytest.mark.parametrize("name", STEPS)
def test_bound_steps_equal_the_static_interval_plan_bitwise(name):
    step = STEPS[name](np.random.default_rng(len(name) + 1))
    bound = family(step.kind, step.params).bind(**step.data)
    static = static_plan(sorted_mask(step, bound))
    traits = dict(zip(TRAITS, (*list_traits(static.arrays["row_ptr"], static.tiles_n), *list_traits(static.arrays["col_ptr"], static.tiles_m))))
    bound = family(step.kind, step.params, traits).bind(**step.data)  # launched on the same grid as the static plan
    static = load_plan(static)
    q, k, v, do = inputs(step, 3, torch.float32)
    for backend in ("reference", "triton"):
        results = attend(bound, q, k, v, do, backend)
        if bound.plan.reordered:
            heads = bound.plan.heads
            perm_q, perm_k = bound.plan.perm_q, bound.plan.perm_k
            sorted_q, sorted_do = (plan_order(t, perm_q, heads) for t in (q, do))
            sorted_k, sorted_v = (plan_order(t, perm_k, heads) for t in (k, v))
            expected = attend(static, sorted_q, sorted_k, sorted_v, sorted_do, backend)
            results = [plan_order(x, perm, heads) for x, perm in zip(results, (perm_q, perm_q, perm_k, perm_k))]
        else:
            expected = attend(static, q, k, v, do, backend)
        for label, x, want in zip(("o", "dq", "dk", "dv"), results, expected):
            assert torch.equal(x, want), (backend, label)


def static_plan(mask: np.ndarray) -> maskc.Plan:
    """The compiler's interval plan of a ``[B, H, N, N]`` mask, in our tiles, nothing reordered or scheduled."""
    return maskc.compile(mask, block=(BLOCK, BLOCK), variant="intervals", schedule="none", reorder="none", profile="none", backward="tiles")


# --- launches, steps, errors ---------------------------------------------------------------------


def test_steps_decide_launches_once_and_read_the_family_traits(tmp_path):
    rng = np.random.default_rng(5)
    step = STEPS["doc_ids"](rng)
    path = tmp_path / "docs.maskc"
    FamilyPlan("documents", DEFAULTS["documents"], MAX_LEN, BLOCK, BLOCK, {**dict.fromkeys(TRAITS, False), "rows_unbalanced": True}).save(path)
    loaded = load_plan(path)
    q, k, v, _ = inputs(step, 5, torch.float32)
    for seed in range(2):  # new data of the same shape: the same launches, nothing decided again
        with NoHostSync():
            bound = loaded.bind(doc_ids=torch.from_numpy(doc_ids(np.random.default_rng(seed), 2, q.shape[2])))
        route = loaded._route(bound, q, k, v, "triton")
        assert route.tiles.plan is bound.plan
        launches = route.tiles.launches
        if seed == 0:
            first = launches
        assert launches is first and len(loaded._routes) == 1
    assert first.fwd.params["HEADS_FAST"] and first.dq.params["HEADS_FAST"]  # rows_unbalanced, from the family plan
    assert not first.dkdv.params["HEADS_FAST"]


def test_bad_steps_are_named():
    docs = family("documents")
    ids = torch.zeros(1, 40, dtype=torch.int64)
    with pytest.raises(BindError, match="unknown argument 'parents'"):
        docs.bind(parents=ids)
    with pytest.raises(BindError, match="exactly one of doc_ids, position_ids, cu_seqlens; got doc_ids, position_ids"):
        docs.bind(doc_ids=ids, position_ids=ids)
    with pytest.raises(BindError, match="exactly one of .* got none"):
        docs.bind()
    with pytest.raises(BindError, match=f"doc_ids has 200 tokens per row; the family binds at most max_len = {MAX_LEN}"):
        docs.bind(doc_ids=torch.zeros(1, 200, dtype=torch.int64))
    with pytest.raises(BindError, match="cu_seqlens needs n"):
        docs.bind(cu_seqlens=torch.tensor([0, 40]))
    with pytest.raises(BindError, match="prefix=True"):
        docs.bind(doc_ids=ids, prefix=ids == 0)
    with pytest.raises(BindError, match="doc_ids must hold integers"):
        docs.bind(doc_ids=ids.float())
    q = torch.randn(1, 2, 40, D)
    with pytest.raises(ValueError, match="do not match the plan's mask 40x40"):
        docs.bind(doc_ids=ids).attention(q[:, :, :30], q[:, :, :30], q[:, :, :30])
    with pytest.raises(BindError, match="each step needs prefix"):
        family("documents", {"prefix": True}).bind(doc_ids=ids)
    buckets = family("hash_buckets")
    with pytest.raises(BindError, match="needs k_buckets"):
        buckets.bind(q_buckets=torch.zeros(1, 2, 40, dtype=torch.int64))
    with pytest.raises(BindError, match=r"k_buckets \[1, 3, 40\] must be \[B, Hkv, N\]"):
        buckets.bind(q_buckets=torch.zeros(1, 4, 40, dtype=torch.int64), k_buckets=torch.zeros(1, 3, 40, dtype=torch.int64))
    per_head = buckets.bind(q_buckets=torch.zeros(1, 4, 40, dtype=torch.int64), k_buckets=torch.zeros(1, 4, 40, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"give the key data per key/value head \(\[B, 2, N\]\)"):
        per_head.attention(torch.randn(1, 4, 40, D), torch.randn(1, 2, 40, D), torch.randn(1, 2, 40, D))
    with pytest.raises(PlanError, match="family kind"):
        load_plan(FamilyPlan("nonsense", {}, MAX_LEN, BLOCK, BLOCK, dict.fromkeys(TRAITS, False)))
