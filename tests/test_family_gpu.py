"""Family binding on a CUDA GPU (skipped elsewhere): the compiled Triton kernels agree with the torch
path at training sizes, binding never synchronises with the host (CUDA's sync debug mode), a
captured CUDA graph rebinds new data on replay, and new data compiles no new kernel."""

import os

import numpy as np
import pytest
import torch

from maskc.runtime import family
from maskc.runtime.family import bind, lists_csr
from maskc.runtime.family import kernels as family_kernels
from maskc.runtime.family import segment_kernels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                                reason="needs a CUDA GPU and compiled Triton kernels")
BATCH, N = 8, 16384


def packed_ids(generator: torch.Generator, batch: int, n: int) -> torch.Tensor:
    """Document ids ``[batch, n]`` on the GPU: about 12 documents per row, a padded tail on each row."""
    cuts = torch.rand(batch, n, generator=generator, device="cuda") < 12 / n
    ids = torch.cumsum(cuts, dim=1)
    tail = torch.arange(n, device="cuda") >= n - torch.randint(0, n // 8, (batch, 1), generator=generator, device="cuda")
    return ids.masked_fill(tail, -1)


def step_inputs(generator: torch.Generator) -> dict[str, torch.Tensor]:
    ids = packed_ids(generator, BATCH, N)
    j = torch.arange(N, device="cuda")
    new = torch.ones_like(ids, dtype=torch.bool)
    new[:, 1:] = ids[:, 1:] != ids[:, :-1]
    positions = j - torch.cummax(torch.where(new, j, 0), dim=1).values
    lengths = torch.randint(0, 2 * N // 64, (64,), generator=generator, device="cuda")
    shape = (2, 4, 4096)
    return {
        "doc_ids": ids,
        "position_ids": positions.masked_fill(ids < 0, -1),
        "cu_seqlens": torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)]).clamp(max=N).to(torch.int32),
        "segments": torch.randint(0, 3, ids.shape, generator=generator, device="cuda"),
        "parents": torch.stack([torch.randint(0, max(i, 1), (BATCH,), generator=generator, device="cuda") - int(i == 0) for i in range(512)], 1),
        "q_buckets": torch.randint(0, 16, shape, generator=generator, device="cuda"),
        "k_buckets": torch.randint(0, 16, shape, generator=generator, device="cuda"),
        "q_keep": torch.rand(shape, generator=generator, device="cuda") < 0.8,
        "k_keep": torch.rand(shape, generator=generator, device="cuda") < 0.8,
    }


def all_runs(x: dict[str, torch.Tensor], backend: str) -> list[family.Runs]:
    return [
        family.documents(x["doc_ids"], backend=backend),
        family.documents(x["doc_ids"], causal=False, window=4096, backend=backend),
        family.documents(x["doc_ids"], prefix=x["segments"] == 0, backend=backend),
        family.documents_from_position_ids(x["position_ids"], backend=backend),
        family.documents_from_cu_seqlens(x["cu_seqlens"], N, backend=backend),
        family.shared_prefix(x["doc_ids"], x["segments"], backend=backend),
        family.token_tree(x["parents"], max_depth=32),
        family.hash_buckets(x["q_buckets"], x["k_buckets"], x["q_keep"], x["k_keep"]),
    ]


def assert_same_binding(a: family.Binding, b: family.Binding) -> None:
    assert torch.equal(a.intervals, b.intervals)
    csr_a, csr_b = lists_csr(a.lists), lists_csr(b.lists)
    for name in csr_a:
        assert np.array_equal(csr_a[name], csr_b[name]), name


@pytest.mark.parametrize("block", [(64, 64), (128, 128), (32, 128)])
def test_compiled_kernels_agree_with_the_torch_path(block):
    x = step_inputs(torch.Generator("cuda").manual_seed(0))
    for fast, reference in zip(all_runs(x, "triton"), all_runs(x, "reference")):
        assert_same_binding(bind(fast, *block, backend="triton"), bind(reference, *block, backend="reference"))


def test_binding_never_synchronises():
    x = step_inputs(torch.Generator("cuda").manual_seed(1))
    for runs in all_runs(x, "triton"):  # compile outside the watched region
        bind(runs, 64, 64, backend="triton")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for backend in ("triton", "reference"):
            for runs in all_runs(x, backend):
                bind(runs, 64, 64, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_captured_graph_rebinds_new_data_without_recompiling():
    generator = torch.Generator("cuda").manual_seed(2)
    static = step_inputs(generator)

    def step():
        return [bind(runs, 64, 64, backend="triton") for runs in all_runs(static, "triton")]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    compiled = _compiled_kernels()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for _ in range(2):
        fresh = step_inputs(generator)
        for name, value in fresh.items():
            static[name].copy_(value)
        graph.replay()
        torch.cuda.synchronize()
        for got, want in zip(captured, [bind(runs, 64, 64, backend="reference") for runs in all_runs(fresh, "reference")]):
            assert_same_binding(got, want)
    assert _compiled_kernels() == compiled


def _compiled_kernels() -> list[int]:
    """How many compiled variants each family kernel holds for this GPU (Triton's per-device cache)."""
    kernels = (family_kernels._columns_kernel, family_kernels._column_lists_kernel, family_kernels._row_lists_kernel,
               segment_kernels._segment_runs_kernel)
    return [len(kernel.device_caches[torch.cuda.current_device()][0]) for kernel in kernels]
