"""The one float64 reference and error measure (``maskc.measure.reference``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from maskc import library  # noqa: E402
from maskc.measure import reference  # noqa: E402


def softmax_attention(q, k, v, keep, scale):
    """The textbook form, for comparison: float64 softmax over the visible scores."""
    s = (q.double() @ k.double().transpose(-1, -2) * scale).masked_fill(~keep, -math.inf)
    return torch.softmax(s, -1) @ v.double(), torch.logsumexp(s, -1)


def inputs(b, hq, hkv, nq, nk, d, seed):
    gen = torch.Generator().manual_seed(seed)
    q, grad = (torch.randn(b, hq, nq, d, generator=gen) for _ in range(2))
    k, v = (torch.randn(b, hkv, nk, d, generator=gen) for _ in range(2))
    return q, k, v, grad


def test_output_lse_and_gradients_match_the_softmax_through_autograd(rng):
    q, k, v, grad = inputs(2, 3, 3, 40, 56, 16, 0)
    keep = rng.random((3, 40, 56)) < 0.6  # per-head mask, every row with a visible key
    assert keep.any(-1).all()
    ref = reference.attention(q, k, v, keep, 0.3, grad)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    out, lse = softmax_attention(*leaves, torch.from_numpy(keep), 0.3)
    want = (out, *torch.autograd.grad(out, leaves, grad.double()))
    for got, expected in zip((ref.out, ref.dq, ref.dk, ref.dv), want, strict=True):
        assert got.dtype == torch.float64 and torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert torch.allclose(ref.lse, lse, rtol=1e-12)


def test_rows_with_no_visible_key_give_zero_and_an_infinite_lse(rng):
    q, k, v, grad = inputs(1, 2, 2, 32, 32, 8, 1)
    keep = rng.random((32, 32)) < 0.5
    keep[5] = keep[17] = False
    ref = reference.attention(q, k, v, keep, 0.5, grad)
    assert all(torch.isfinite(t).all() for t in (ref.out, ref.dq, ref.dk, ref.dv))
    assert (ref.out[:, :, [5, 17]] == 0).all() and (ref.dq[:, :, [5, 17]] == 0).all()
    assert torch.isposinf(ref.lse[:, :, [5, 17]]).all() and torch.isfinite(ref.lse[:, :, :5]).all()


def test_grouped_key_value_heads_read_their_group_and_sum_its_gradients():
    q, k, v, grad = inputs(2, 4, 2, 24, 24, 8, 2)
    keep = library.causal(24).to_dense()[0, 0]
    grouped = reference.attention(q, k, v, keep, 0.25, grad)
    expanded = reference.attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), keep, 0.25, grad)
    assert torch.allclose(grouped.out, expanded.out, rtol=1e-13, atol=1e-15)
    assert torch.allclose(grouped.dk, expanded.dk.view(2, 2, 2, 24, 8).sum(2), rtol=1e-12, atol=1e-14)
    assert torch.allclose(grouped.dv, expanded.dv.view(2, 2, 2, 24, 8).sum(2), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(20, 30), (3, 20, 30), (2, 1, 20, 30), (2, 3, 20, 30)], ids=["shared", "per-head", "per-batch", "both"])
def test_the_forward_alone_is_the_same_a_few_heads_at_a_time(rng, monkeypatch, shape):
    q, k, v, grad = inputs(2, 3, 1, 20, 30, 8, 3)
    keep = rng.random(shape) < 0.5
    whole = reference.attention(q, k, v, keep, 0.4, grad)
    monkeypatch.setattr(reference, "CHUNK_BYTES", 1)  # one head at a time
    chunked = reference.attention(q, k, v, keep, 0.4)
    assert chunked.dq is None and chunked.out.shape == whole.out.shape
    assert torch.allclose(chunked.out, whole.out, rtol=1e-13, atol=1e-15)
    assert torch.equal(torch.isinf(chunked.lse), torch.isinf(whole.lse))
    finite = torch.isfinite(whole.lse)
    assert torch.allclose(chunked.lse[finite], whole.lse[finite], rtol=1e-13)


def test_rel_err_is_the_relative_frobenius_error_and_absolute_against_zero():
    want = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    assert reference.rel_err(want + torch.tensor([[0.0, 0.5], [0.0, 0.0]]), want) == pytest.approx(0.1)
    assert reference.rel_err(want.half(), want) == 0.0
    assert reference.rel_err(torch.full((2, 2), 0.5), torch.zeros(2, 2)) == pytest.approx(1.0)


def test_reference_rows_are_the_rows_of_the_whole_reference():
    q, k, v, _ = inputs(1, 3, 3, 96, 96, 16, 4)
    source = library.documents([30, 50, 16])
    rows = reference.error_rows(96, 10)
    got = reference.reference_rows(q, k, v, source, rows, 0.25)
    want = reference.attention(q, k, v, source.to_dense()[0, 0], 0.25).out[:, :, torch.as_tensor(rows)]
    assert got.shape == (1, 3, len(rows), 16) and torch.allclose(got, want, rtol=1e-13, atol=1e-15)


def test_error_rows_spread_over_the_sequence():
    spread = reference.error_rows(1000, 3)
    assert spread.tolist() == [0, 500, 999]
    assert np.array_equal(reference.error_rows(5, 256), np.arange(5))
