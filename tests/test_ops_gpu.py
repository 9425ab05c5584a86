"""The registered operator under ``torch.compile(mode="reduce-overhead")`` on a CUDA GPU (skipped
elsewhere): the call is captured in a CUDA graph that reads a static plan's tensors where they are
(only the graph's own inputs q, k and v are copied in at a replay), and the replay computes what
the eager call does, forward and backward."""

import os

import numpy as np
import pytest
import torch

import maskc
from maskc.runtime import load_plan

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                                reason="needs a CUDA GPU and compiled Triton kernels")


def _plan_and_inputs():
    mask = np.tri(512, dtype=bool)
    mask[:, 3] = False  # not exactly causal: the tile kernels run
    plan = load_plan(maskc.compile(mask, block=64, variant="block_sparse"), device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    return plan, [torch.randn(1, 2, 512, 64, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4)]


def test_reduce_overhead_reads_the_plan_in_place():
    from torch._dynamo.utils import counters

    plan, (q, k, v, _) = _plan_and_inputs()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(lambda q, k, v: plan.attention(q, k, v), fullgraph=True, mode="reduce-overhead")
    with torch.no_grad():
        expected = plan.attention(q, k, v)
        for _ in range(3):  # warm-up, record, replay
            out = compiled(q, k, v).clone()
    assert torch.equal(out, expected)
    assert counters["inductor"]["cudagraph_recorded_non_static_inputs"] == 3  # q, k, v; not the plan's 16 tensors


def test_reduce_overhead_trains_like_eager():
    plan, (q, k, v, do) = _plan_and_inputs()
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = plan.attention(*leaves)
    expected_grads = torch.autograd.grad(expected, leaves, do)
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: plan.attention(q, k, v), fullgraph=True, mode="reduce-overhead")
    for _ in range(3):
        out = compiled(*leaves)
        grads = torch.autograd.grad(out, leaves, do)
        out = out.detach().clone()
    assert torch.equal(out, expected)
    assert all(torch.equal(a, b) for a, b in zip(grads, expected_grads))
