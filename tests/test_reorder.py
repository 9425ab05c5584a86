"""RCM reordering: tiles recovered, exact round trips, the runtime's gather/scatter, the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import dense_reference, rel_err

import maskc
from maskc import library
from maskc.errors import MaskError
from maskc.reorder import PatternBuilder, PermutedSource, bandwidth, rcm_permutation
from maskc.runtime import load_plan
from maskc.runtime.format import decode, mask_rows
from maskc.sources import PlanSource
from maskc.verify import first_difference


def band(n: int, width: int) -> np.ndarray:
    i = np.arange(n)
    return np.abs(i[:, None] - i[None, :]) < width


def scrambled(mask: np.ndarray, seed: int) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(mask.shape[-1])
    return mask[..., order, :][..., order]


def visited(plan) -> int:
    c = plan.tile_counts()
    return c["tiles_full"] + c["tiles_partial"]


@pytest.mark.parametrize("block", [64, 128])
def test_rcm_recovers_a_band_hidden_by_a_random_permutation(block):
    n, width = 2048, 64
    mask = scrambled(band(n, width), seed=0)
    plain = maskc.compile(band(n, width), block=block)
    hidden = maskc.compile(mask, block=block, reorder="none")
    plan = maskc.compile(mask, block=block, reorder="rcm")
    assert plan.reordered and plan.variant == "block_sparse"
    assert visited(hidden) == plan.tile_counts()["tiles_total"]  # scattered over every tile
    assert visited(plan) <= 1.5 * visited(plain)
    record = plan.options["reorder"]
    assert record["tiles_before"] == {"full": 0, "partial": visited(hidden)}
    assert record["tiles_after"]["full"] + record["tiles_after"]["partial"] == visited(plan)
    assert record["bandwidth_after"] < 2 * width <= record["bandwidth_before"]
    assert plan.mask_sha256 == hidden.mask_sha256 and plan.visible_pairs == int(mask.sum())


def test_round_trip_with_a_permutation_is_exact(rng):
    mask = scrambled(band(300, 9), seed=1)
    mask[rng.random(mask.shape) < 0.01] = True  # a few stray pairs
    plan = maskc.compile(mask, block=32, reorder="rcm")
    back = decode(plan.to_bytes())
    assert back.reordered and np.array_equal(back.arrays["perm"], plan.arrays["perm"])
    assert np.array_equal(back.to_mask()[0, 0], mask)
    assert first_difference(back, mask) is None
    source = PlanSource(back)
    for start, stop in ((0, 300), (17, 95), (299, 300), (40, 40)):
        assert np.array_equal(source.rows(0, 0, start, stop), mask[start:stop])
    other = mask.copy()
    other[5, 7] = not other[5, 7]
    assert first_difference(back, other) == f"batch 0, head 0, query 5, key 7: mask has {bool(other[5, 7])}, plan has {bool(mask[5, 7])}"


def test_one_permutation_serves_every_slice():
    masks = np.stack([scrambled(band(200, 6), seed=s) for s in (2, 3)])[:, None]  # [2, 1, 200, 200]: per batch
    plan = maskc.compile(masks, block=32, reorder="rcm")
    assert plan.batch == 2 and plan.arrays["perm"].shape == (200,)
    assert np.array_equal(decode(plan.to_bytes()).to_mask(), masks)
    for s in range(2):
        assert np.array_equal(mask_rows(plan, s, 50, 150), masks[s, 0, 50:150])


def test_permuted_source_is_p_m_pt():
    mask = scrambled(band(150, 5), seed=4) | (np.random.default_rng(0).random((150, 150)) < 0.02)
    builder = PatternBuilder((1, 1, 150, 150))
    builder.add(0, 0, mask[:70])
    builder.add(0, 70, mask[70:])
    patterns = builder.patterns()
    perm = rcm_permutation(patterns)
    assert sorted(perm.tolist()) == list(range(150))
    source = PermutedSource(patterns, perm, (1, 1, 150, 150), "m")
    assert np.array_equal(source.to_dense(block_rows=33)[0, 0], mask[perm][:, perm])
    i, j = np.nonzero(mask | mask.T)
    assert bandwidth(patterns) == int(np.abs(i - j).max())
    inverse = np.argsort(perm)
    assert bandwidth(patterns, perm) == int(np.abs(inverse[i] - inverse[j]).max())


def test_pattern_builder_stops_at_its_bound():
    builder = PatternBuilder((1, 1, 64, 64), max_pairs=100)
    builder.add(0, 0, np.ones((64, 64), dtype=bool))
    assert builder.overflow
    with pytest.raises(MaskError, match="too dense to reorder"):
        builder.patterns()


@pytest.mark.parametrize(
    "mask, options, message",
    [
        (np.ones((40, 50), dtype=bool), {}, "only self-attention masks"),
        (np.ones((40, 40), dtype=bool), {"variant": "intervals"}, "a reordered plan is block-sparse"),
        (np.ones((40, 40), dtype=bool), {"variant": "dense"}, "a reordered plan is block-sparse"),
    ],
)
def test_reordering_refusals(mask, options, message):
    with pytest.raises(MaskError, match=message):
        maskc.compile(mask, block=32, reorder="rcm", **options)


def test_too_dense_to_reorder(monkeypatch):
    import maskc.reorder

    monkeypatch.setattr(maskc.reorder, "MAX_REORDER_PAIRS", 1000)
    with pytest.raises(MaskError, match="too dense to reorder"):
        maskc.compile(np.tril(np.ones((100, 100), dtype=bool)), block=32, reorder="rcm")


def run(plan, q, k, v, grad_out):
    out = load_plan(plan).attention(q, k, v, backend="reference")
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


@pytest.mark.parametrize("batch, hq, hkv", [(1, 2, 2), (2, 4, 2)])
def test_reference_backend_on_a_reordered_plan(batch, hq, hkv):
    n, d = 160, 16
    mask = scrambled(library.hash_buckets(n, 5, causal=True, seed=3).to_dense()[0, 0], seed=5)
    mask[:7] = False  # rows with no visible key
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, hq, n, d, generator=g, requires_grad=True)
    k = torch.randn(batch, hkv, n, d, generator=g, requires_grad=True)
    v = torch.randn(batch, hkv, n, d, generator=g, requires_grad=True)
    grad_out = torch.randn(batch, hq, n, d, generator=g)
    reordered = maskc.compile(mask, block=32, reorder="rcm")
    assert reordered.reordered
    got = run(reordered, q, k, v, grad_out)
    plain = run(maskc.compile(mask, block=32, reorder="none"), q, k, v, grad_out)
    ref = dense_reference(q, k, v, np.broadcast_to(mask, (batch, hq, n, n)), d**-0.5, grad_out)
    for name, a, b, c in zip(("out", "dq", "dk", "dv"), got, plain, ref):
        assert torch.isfinite(a).all(), name
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), name
        assert rel_err(a, c) < 1e-5, name
    assert torch.all(got[0][:, :, :7] == 0) and torch.all(got[1][:, :, :7] == 0)


def test_device_plan_holds_the_permutation_for_every_slice_and_side():
    plan = maskc.compile(scrambled(band(100, 4), seed=6), block=32, reorder="rcm")
    dplan = load_plan(plan, "cpu").on(torch.device("cpu"))
    perm = torch.from_numpy(plan.arrays["perm"].astype(np.int64))
    assert dplan.reordered and dplan.perm_q.dtype == dplan.perm_k.dtype == torch.int32
    assert dplan.perm_q.shape == dplan.perm_k.shape == (plan.batch * plan.heads, 100)
    assert torch.equal(dplan.perm_q[0].long(), perm) and torch.equal(dplan.perm_k[0].long(), perm)
    assert dplan.perm_strides == (0, 0)  # one permutation, shared by the slices: a view, not copies
