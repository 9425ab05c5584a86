"""Bound family plans on a CUDA GPU (skipped elsewhere): a bound step equals the static interval
plan of the same mask bit for bit in the compiled kernels, a training step (binding, forward,
backward) never synchronises with the host, and binding + attention captured in a CUDA graph
replays new data exactly as the eager call computes it, compiling no new kernel."""

import os

import numpy as np
import pytest
import torch

import maskc
from maskc.runtime import load_plan
from maskc.runtime.format import TRAITS, FamilyPlan, list_traits
from maskc.runtime.kernels import bwd, fwd

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                                reason="needs a CUDA GPU and compiled Triton kernels")
BATCH, HEADS, N, D = 2, 4, 4096, 64
DOCUMENTS = {"causal": True, "window": None, "prefix": False}


def packed_ids(generator: torch.Generator) -> torch.Tensor:
    """Document ids ``[BATCH, N]`` on the GPU: about 12 documents per row, a padded tail."""
    ids = torch.cumsum(torch.rand(BATCH, N, generator=generator, device="cuda") < 12 / N, dim=1)
    return ids.masked_fill(torch.arange(N, device="cuda") >= N - N // 8, -1)


def inputs(generator: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(BATCH, HEADS, N, D, generator=generator, device="cuda", dtype=torch.bfloat16) for _ in range(4)]


def step(attend, q, k, v, do) -> list[torch.Tensor]:
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    o = attend(*leaves)
    return [o.detach(), *torch.autograd.grad(o, leaves, do)]


def test_a_bound_step_equals_the_static_plan_bitwise():
    generator = torch.Generator("cuda").manual_seed(1)
    ids = packed_ids(generator)
    host = ids.cpu().numpy()
    mask = (host[:, :, None] == host[:, None, :]) & np.tri(N, dtype=bool) & (host >= 0)[:, :, None]
    static = maskc.compile(mask[:, None], block=(64, 64), variant="intervals", schedule="none", reorder="none", profile="none",
                           backward="tiles")
    traits = dict(zip(TRAITS, (*list_traits(static.arrays["row_ptr"], static.tiles_n), *list_traits(static.arrays["col_ptr"], static.tiles_m))))
    family = load_plan(FamilyPlan("documents", DOCUMENTS, N, 64, 64, traits), "cuda")
    q, k, v, do = inputs(generator)
    got = step(lambda q, k, v: family.attention(q, k, v, doc_ids=ids), q, k, v, do)
    want = step(load_plan(static, "cuda").attention, q, k, v, do)
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, want):
        assert torch.equal(a, b), name


def _compiled_kernels() -> list[int]:
    return [len(kernel.device_caches[torch.cuda.current_device()][0]) for kernel in (fwd._fwd_kernel, bwd._dq_kernel, bwd._dkdv_kernel)]


def test_steps_never_synchronise_and_a_graph_rebinds_new_data():
    generator = torch.Generator("cuda").manual_seed(2)
    family = load_plan(maskc.compile_family({"family": "documents", "max_len": N}), "cuda")
    q, k, v, do = inputs(generator)
    ids = packed_ids(generator)

    def attend(q, k, v):
        return family.attention(q, k, v, position_ids=positions(ids))

    step(attend, q, k, v, do)  # the first call of this shape: checks and launch decisions
    torch.cuda.synchronize()
    compiled = _compiled_kernels()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            ids.copy_(packed_ids(generator))
            step(attend, q, k, v, do)
    finally:
        torch.cuda.set_sync_debug_mode("default")

    graph = torch.cuda.CUDAGraph()
    with torch.no_grad():
        with torch.cuda.graph(graph):
            captured = attend(q, k, v)
        for _ in range(2):
            ids.copy_(packed_ids(generator))
            graph.replay()
            assert torch.equal(captured, attend(q, k, v))
    assert _compiled_kernels() == compiled


def positions(ids: torch.Tensor) -> torch.Tensor:
    """Hugging Face ``position_ids`` of document ids (-1 on padding), on the GPU."""
    j = torch.arange(ids.shape[1], device=ids.device)
    new = torch.ones_like(ids, dtype=torch.bool)
    new[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return (j - torch.cummax(torch.where(new, j, 0), dim=1).values).masked_fill(ids < 0, -1)
