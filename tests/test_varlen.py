"""maskc.varlen_attention (flash-attn's [total, H, D] layout) against the float64 dense reference of
the packed documents' mask and against SDPA with that mask, forward and every gradient, with GQA."""

import numpy as np
import pytest
import torch
from conftest import dense_reference, rel_err

import maskc

pytest.importorskip("transformers")
from maskc.integrations.transformers import masked_sdpa  # noqa: E402


def documents_mask(cu: list[int], total: int, causal: bool, window: int | None) -> np.ndarray:
    doc = np.full(total, -1)
    for d, (a, e) in enumerate(zip(cu[:-1], cu[1:])):
        doc[a:e] = d
    i, j = np.arange(total)[:, None], np.arange(total)[None]
    mask = (doc[:, None] == doc[None]) & (doc[:, None] >= 0)
    if causal:
        mask &= j <= i
    if window is not None:
        mask &= (i - j < window) if causal else (np.abs(i - j) < window)
    return mask


@pytest.mark.parametrize("causal, window", [(True, None), (False, None), (True, 7)])
def test_varlen_matches_float64_and_sdpa(causal, window):
    cu, total = [0, 13, 40, 41, 70], 76  # a one-token document and 6 padding tokens
    g = torch.Generator().manual_seed(3)
    q = torch.randn(total, 4, 16, generator=g, requires_grad=True)
    k, v = (torch.randn(total, 2, 16, generator=g, requires_grad=True) for _ in range(2))
    do = torch.randn(total, 4, 16, generator=g)
    cu_t = torch.tensor(cu, dtype=torch.int32)
    out = maskc.varlen_attention(q, k, v, cu_t, cu_t, 29, 29, causal=causal, window=window, softmax_scale=0.3)
    grads = torch.autograd.grad(out, (q, k, v), do)
    mask = documents_mask(cu, total, causal, window)
    as_bhnd = lambda t: t.detach().transpose(0, 1)[None]  # noqa: E731
    ref = dense_reference(as_bhnd(q), as_bhnd(k), as_bhnd(v), mask, 0.3, as_bhnd(do))
    for name, want, have in zip(("out", "dq", "dk", "dv"), ref, (out, *grads)):
        assert rel_err(as_bhnd(have), want) < 1e-5, name
    bq, bk, bv = (as_bhnd(t).requires_grad_() for t in (q, k, v))
    sdpa = masked_sdpa(bq, bk, bv, torch.from_numpy(mask)[None, None], 0.3)
    assert torch.allclose(as_bhnd(out), sdpa, atol=1e-5)


def test_cross_lengths_are_refused():
    q = torch.randn(10, 2, 8)
    with pytest.raises(ValueError, match="cross-attention"):
        maskc.varlen_attention(q, q, q, torch.tensor([0, 4, 10], dtype=torch.int32), torch.tensor([0, 5, 10], dtype=torch.int32))
