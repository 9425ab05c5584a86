"""The attention as registered operators: opcheck, and torch.compile(fullgraph=True) on CPU.

The Triton kernels run on CPU tensors in the interpreter (``TRITON_INTERPRET=1``, set before triton
is imported), behind the same opaque ``custom_op``s as on a GPU.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math

import numpy as np
import pytest
import torch
from conftest import dense_reference, rel_err

import maskc
from maskc.family import DEFAULTS
from maskc.runtime import load_plan, ops
from maskc.runtime.format import TRAITS, FamilyPlan
from maskc.runtime.kernels import common

N = 64


@pytest.fixture(autouse=True)
def _nan_outputs(monkeypatch):
    """Kernel outputs start as NaN: an element a kernel does not write cannot pass as finite."""
    monkeypatch.setattr(common, "empty", lambda shape, dtype, device: torch.full(shape, math.nan, dtype=dtype, device=device))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def ragged_mask(n: int = N) -> np.ndarray:
    """Causal with a global block, a masked-out key and empty rows: full, partial and empty tiles."""
    mask = np.tri(n, dtype=bool)
    mask[n // 2:, : n // 8] = True
    mask[:, 5] = False
    mask[3] = False
    return mask


def scrambled_band(n: int = N, width: int = 6, seed: int = 0) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(n)
    return np.abs(order[:, None] - order[None, :]) < width


PLANS = {
    "block_sparse": lambda: maskc.compile(ragged_mask(), block=(32, 32), variant="block_sparse", reorder="none"),
    "intervals": lambda: maskc.compile(ragged_mask(), block=(32, 32), variant="intervals", reorder="none"),
    "reordered": lambda: maskc.compile(scrambled_band(), block=(32, 32), reorder="rcm"),
    "per_head": lambda: maskc.compile(np.stack([ragged_mask(), np.tri(N, dtype=bool)[::-1]])[None], block=(32, 32),
                                      variant="block_sparse", reorder="none"),
}


def inputs(hq=2, hkv=1, d=16, dtype=torch.float32, seed=0, batch=2, n=N):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, hq, n, d, generator=g, dtype=dtype)
    k, v = (torch.randn(batch, hkv, n, d, generator=g, dtype=dtype) for _ in range(2))
    return q, k, v, torch.randn(q.shape, generator=g, dtype=dtype)


def operator_args(plan, q, k, v, scale=0.3):
    dplan = plan.on(q.device)
    return (q, k, v, list(dplan.row_lists), list(dplan.col_lists), *dplan.scalars[:5], list(dplan.scalars[5]),
            ops.flat_pieces(dplan), scale)


@pytest.mark.parametrize("backend, name", [("reference", name) for name in PLANS] + [("triton", "block_sparse"), ("triton", "reordered")])
def test_operators_pass_opcheck(backend, name):
    """Schema, fake implementation, autograd registration and the trace of both operators."""
    plan = load_plan(PLANS[name](), device="cpu")
    q, k, v, do = inputs(hq=2, hkv=1 if name != "per_head" else 2)
    operators = ops.operators(backend)
    args = operator_args(plan, q.requires_grad_(), k.requires_grad_(), v.requires_grad_())
    torch.library.opcheck(operators.forward, args)
    o, lse = operators.forward(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args))
    dplan = plan.on(q.device)
    torch.library.opcheck(operators.backward, (do, q.detach(), k.detach(), v.detach(), o, lse, list(dplan.row_lists),
                                               list(dplan.col_lists), *dplan.scalars[:5], list(dplan.scalars[5]), 0.3))


def attention_and_grads(fn, q, k, v, do):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), do))


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("name", ["block_sparse", "intervals", "reordered", "per_head"])
def test_compiled_fullgraph_matches_eager_and_float64(backend, name):
    """torch.compile(fullgraph=True) around LoadedPlan.attention: the same output and gradients as
    the eager call, both against the float64 dense softmax, and no recompilation on new data."""
    plan = load_plan(PLANS[name](), device="cpu")
    hkv = 2 if name == "per_head" else 1

    def step(q, k, v):
        return plan.attention(q, k, v, scale=0.3, backend=backend)

    compiled = torch.compile(step, fullgraph=True)
    for seed in (0, 1):
        q, k, v, do = inputs(hq=2, hkv=hkv, seed=seed)
        eager = attention_and_grads(step, q, k, v, do)
        with torch._dynamo.config.patch(error_on_recompile=seed > 0):
            got = attention_and_grads(compiled, q, k, v, do)
        for name_, e, c in zip(("out", "dq", "dk", "dv"), eager, got):
            assert torch.equal(e, c), name_
    ref = dense_reference(q, k, v, _mask_of(name), 0.3, do)
    for name_, want, have in zip(("out", "dq", "dk", "dv"), ref, got):
        assert rel_err(have, want) < 1e-5, name_


def _mask_of(name: str) -> np.ndarray:
    if name == "reordered":
        return scrambled_band()
    if name == "per_head":
        return np.stack([ragged_mask(), np.tri(N, dtype=bool)[::-1]])[None]
    return ragged_mask()


def test_dense_plans_compile_to_sdpa():
    plan = load_plan(maskc.compile(np.tri(N, dtype=bool), block=32, variant="dense_causal"), device="cpu")
    assert plan.plan.variant == "dense_causal"
    q, k, v, do = inputs(hq=2, hkv=2)
    compiled = torch.compile(lambda q, k, v: plan.attention(q, k, v), fullgraph=True)
    got = attention_and_grads(compiled, q, k, v, do)
    for name, want, have in zip(("out", "dq", "dk", "dv"), dense_reference(q, k, v, np.tri(N, dtype=bool), 0.25, do), got):
        assert rel_err(have, want) < 1e-5, name


def test_eager_calls_on_plain_tensors_skip_the_dispatcher():
    """Plain eager calls run the kernels directly (host time); anything watching goes through the operators."""
    q = torch.zeros(1)
    assert not ops.traced(q)
    with torch._subclasses.FakeTensorMode() as mode:
        assert ops.traced(mode.from_tensor(q))


def test_bind_and_attention_compile_once_for_every_step_of_a_family():
    """torch.compile(fullgraph=True) takes a documents family's binding (from position_ids) and the
    attention through the bound step: steps of new document lengths reuse the graph, and equal eager.
    (CPU: binding by torch operations and the reference operator; the Triton binding kernels are
    traced by Dynamo's own Triton support on a GPU, not in the interpreter.)"""
    family = load_plan(FamilyPlan("documents", DEFAULTS["documents"], 128, 32, 32, dict.fromkeys(TRAITS, False)))

    def step(q, k, v, position_ids):
        return family.bind(backend="reference", position_ids=position_ids).attention(q, k, v, backend="reference")

    compiled = torch.compile(step, fullgraph=True)
    for i, lengths in enumerate(([30, 50, 16], [5, 91], [96])):
        position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
        q, k, v, do = inputs(hq=2, hkv=1, seed=i, batch=1, n=96)
        eager = attention_and_grads(lambda *a: step(*a, position_ids), q, k, v, do)
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            got = attention_and_grads(lambda *a: compiled(*a, position_ids), q, k, v, do)
        for name, e, c in zip(("out", "dq", "dk", "dv"), eager, got):
            assert torch.equal(e, c), name


def test_launches_tell_apart_plans_whose_permutations_differ_only_in_stride():
    """A bound sorted step's per-slice permutations ([S, N], a row apart) and one permutation for
    every slice (the same shape, stride 0) launch differently: the decision is not shared."""
    import dataclasses

    from maskc.runtime import reference

    family = load_plan(FamilyPlan("qk_dropping", DEFAULTS["qk_dropping"], N, 32, 32, dict.fromkeys(TRAITS, False)))
    keep = torch.rand(1, 2, N, generator=torch.Generator().manual_seed(3)) < 0.6
    per_slice = family.bind(q_keep=keep, k_keep=keep).plan
    shared = dataclasses.replace(per_slice, perm_q=per_slice.perm_q[:1].expand(2, N), perm_k=per_slice.perm_k[:1].expand(2, N))
    assert per_slice.perm_strides != shared.perm_strides
    q, k, v, _ = inputs(hq=2, hkv=2, batch=1)
    tiles = ops.operators("triton")
    for plan in (per_slice, shared):
        o, _ = tiles.forward(q, k, v, list(plan.row_lists), list(plan.col_lists), *plan.scalars[:5], list(plan.scalars[5]), [], 0.3)
        expected, _ = reference.forward(q, k, v, plan, 0.3)
        assert rel_err(o, expected) < 1e-5
