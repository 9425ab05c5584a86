"""Shared helpers: a float64 dense attention reference and random inputs."""

from __future__ import annotations

import numpy as np
import pytest


def dense_attention(q, k, v, mask, scale):
    """Float64 softmax attention with a dense boolean mask; rows with no visible key give 0."""
    import torch

    q, k, v = (t.double() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    keep = torch.from_numpy(np.array(mask, dtype=bool))
    s = (q @ k.transpose(-1, -2) * scale).masked_fill(~keep, -float("inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ v


def dense_reference(q, k, v, mask, scale, grad_out):
    """Float64 output and dq, dk, dv of :func:`dense_attention` for the upstream gradient ``grad_out``."""
    import torch

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = dense_attention(q64, k64, v64, mask, scale)
    grads = torch.autograd.grad(out, (q64, k64, v64), grad_out.double())
    return (out, *grads)


def rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    denom = b.norm().item()
    return (a - b).norm().item() / (denom if denom > 0 else 1.0)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
