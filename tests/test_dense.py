"""Dense plans: all-true and exactly causal masks compile to no lists and run through SDPA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import dense_reference, rel_err

import maskc
from maskc import library
from maskc.errors import MaskError
from maskc.runtime import load_plan
from maskc.runtime import loaded as loaded_module
from maskc.runtime.format import decode

DENSE = {"dense": lambda n: np.ones((n, n), dtype=bool), "dense_causal": lambda n: np.tri(n, dtype=bool)}


@pytest.mark.parametrize("variant", sorted(DENSE))
@pytest.mark.parametrize("source", ["array", "library"])
def test_dense_plans_store_no_lists_and_decode_to_their_mask(variant, source):
    n = 200
    mask = DENSE[variant](n)
    given = mask if source == "array" else (library.full(n) if variant == "dense" else library.causal(n))
    plan = maskc.compile(given, block=64, variant=variant)
    assert plan.variant == variant and plan.hash_of == "intervals" and not plan.reordered
    assert plan.arrays["bitmaps"].shape == (0, 64, 2) and plan.arrays["row_order"].size == 0
    data = plan.to_bytes()
    assert len(data) < 1200  # no lists, no intervals: the shape and the hash
    back = decode(data)
    assert np.array_equal(back.to_mask()[0, 0], mask)
    assert back.tile_counts() == maskc.compile(mask, block=64, variant="intervals").tile_counts()
    assert back.mask_sha256 == maskc.compile(mask, block=64, variant="intervals").mask_sha256


@pytest.mark.parametrize(
    "mask, variant, message",
    [
        (np.tri(50, dtype=bool), "dense", "is not all-true"),
        (np.ones((50, 50), dtype=bool), "dense_causal", "is not exactly causal"),
        (np.tri(50, k=1, dtype=bool), "dense_causal", "is not exactly causal"),
        (np.ones((40, 50), dtype=bool), "dense_causal", "needs a square mask"),
        (np.random.default_rng(0).random((50, 50)) < 0.5, "dense", "is not all-true"),
    ],
)
def test_only_exact_masks_compile_dense(mask, variant, message):
    with pytest.raises(MaskError, match=message):
        maskc.compile(mask, block=32, variant=variant)


@pytest.mark.parametrize("variant", sorted(DENSE))
@pytest.mark.parametrize("batch, hq, hkv", [(1, 2, 2), (2, 4, 1)])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_dense_dispatch_matches_the_reference(variant, batch, hq, hkv, backend):
    n, d = 96, 16
    mask = DENSE[variant](n)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(batch, hq, n, d, generator=g, requires_grad=True)
    k = torch.randn(batch, hkv, n, d, generator=g, requires_grad=True)
    v = torch.randn(batch, hkv, n, d, generator=g, requires_grad=True)
    grad_out = torch.randn(batch, hq, n, d, generator=g)
    dense = load_plan(maskc.compile(mask, block=32, variant=variant))
    tiles = load_plan(maskc.compile(mask, block=32, variant="block_sparse"))
    got = dense.attention(q, k, v, scale=0.3, backend=backend)
    got = (got, *torch.autograd.grad(got, (q, k, v), grad_out))
    want = tiles.attention(q, k, v, scale=0.3, backend="reference")
    want = (want, *torch.autograd.grad(want, (q, k, v), grad_out))
    ref = dense_reference(q, k, v, np.broadcast_to(mask, (batch, hq, n, n)), 0.3, grad_out)
    for name, a, b, c in zip(("out", "dq", "dk", "dv"), got, want, ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), name
        assert rel_err(a, c) < 1e-5, name


def test_gqa_without_enable_gqa(monkeypatch):
    """torch < 2.5 has no ``enable_gqa``: the k/v heads are repeated for their query heads instead."""
    mask = np.tri(64, dtype=bool)
    plan = load_plan(maskc.compile(mask, block=32, variant="dense_causal"))
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(2, 4, 64, 8, generator=g), torch.randn(2, 2, 64, 8, generator=g), torch.randn(2, 2, 64, 8, generator=g)
    with_gqa = plan.attention(q, k, v)
    monkeypatch.setattr(loaded_module, "_HAS_ENABLE_GQA", False)
    assert torch.allclose(plan.attention(q, k, v), with_gqa, atol=1e-6)


def test_dense_device_plan_holds_no_lists():
    dplan = load_plan(maskc.compile(library.causal(300), block=64, variant="dense_causal"), "cpu").on(torch.device("cpu"))
    assert dplan.variant == "dense_causal" and dplan.row_lo.numel() == 0 and dplan.col_row.numel() == 0
    assert dplan.perm_q.numel() == 0 and dplan.row_order.numel() == 0


def test_dense_plans_still_check_shapes():
    plan = load_plan(maskc.compile(np.ones((32, 32), dtype=bool), block=32, variant="dense"))
    q = torch.randn(1, 1, 31, 8)
    with pytest.raises(ValueError, match="do not match the plan's mask 32x32"):
        plan.attention(q, q, q)
