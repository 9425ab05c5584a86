"""Binding visible runs: canonical intervals and ELL tile lists, through the Triton kernels (in the
interpreter) and the torch path, against the compiler's static plans of the same masks; errors;
no host synchronisation; shapes that depend only on the sizes."""

import os
import subprocess
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch
from family_check import REFERENCE, TRITON, NoHostSync, assert_bound, bind_both, output_shapes, poison_outputs

from maskc.intervals import canonical
from maskc.runtime.family import BindError, Runs, bind, intervals_from_runs
from maskc.runtime.family import kernels as family_kernels
from maskc.runtime.format import TILE_SIZES

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU tests run the kernels in the Triton interpreter")


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    poison_outputs(monkeypatch)


def random_runs(rng, slices, q_len, kv_len):
    """Runs of every kind: empty (both ways round), out of bounds, whole columns, single rows."""
    start = rng.integers(-3, q_len + 3, size=(slices, kv_len))
    end = start + rng.integers(-2, q_len + 2, size=(slices, kv_len))
    whole = rng.random((slices, kv_len)) < 0.1
    start[whole], end[whole] = 0, q_len
    return start, end


def test_runs_beyond_int32_are_clamped_not_wrapped():
    start = torch.tensor([[2**32, -(2**40), 3, 2**33 + 5]])
    end = torch.tensor([[2**32 + 9, 2**40, 2**32 + 1, 7]])
    runs = Runs(start, end, 10, batch=1, heads=1)
    bind_both(runs, 32, 32, dense_of_runs(start.clamp(0, 10).numpy(), end.clamp(0, 10).numpy(), 10))


def dense_of_runs(start, end, q_len):
    rows = np.arange(q_len)[None, :, None]
    return (rows >= start[:, None, :]) & (rows < end[:, None, :])


@pytest.mark.parametrize("seed", range(8))
def test_random_runs_bind_like_static_plans(seed):
    rng = np.random.default_rng(seed)
    slices, q_len, kv_len = int(rng.integers(1, 4)), int(rng.integers(1, 200)), int(rng.integers(1, 200))
    block_m, block_n = (int(b) for b in rng.choice(TILE_SIZES, 2))
    start, end = random_runs(rng, slices, q_len, kv_len)
    runs = Runs(torch.from_numpy(start), torch.from_numpy(end), q_len, batch=slices, heads=1)
    bind_both(runs, block_m, block_n, dense_of_runs(start, end, q_len))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_intervals_from_runs_are_canonical(dtype):
    rng = np.random.default_rng(7)
    start, end = random_runs(rng, 3, 50, 70)
    vectors = intervals_from_runs(torch.from_numpy(start).to(dtype), torch.from_numpy(end).to(dtype), 50)
    assert vectors.dtype == torch.int32
    assert np.array_equal(vectors.numpy(), canonical(vectors.numpy(), 50))
    rows = np.arange(50)[None, :, None]
    lts, lte, uts, ute = (vectors.numpy()[:, i, None, :] for i in range(4))
    visible = ~(((rows >= lts) & (rows < lte)) | ((rows >= uts) & (rows < ute)))
    assert np.array_equal(visible, dense_of_runs(start, end, 50))


@pytest.mark.parametrize("block", [(32, 32), (64, 32), (32, 128)])
def test_edge_runs_and_ragged_tiles(block):
    """Tiles that are exactly full on the ragged edge, full columns next to empty ones, a single row."""
    q_len, kv_len = 97, 75
    start = np.array([[0] * 25 + [q_len] * 25 + [96] * 25, [32] * 75, [0] * 75])
    end = np.array([[q_len] * 25 + [q_len] * 25 + [97] * 25, [64] * 75, [1] * 75])
    runs = Runs(torch.from_numpy(start), torch.from_numpy(end), q_len, batch=1, heads=3)
    bind_both(runs, *block, dense_of_runs(start, end, q_len))


def test_long_lists_walk_in_chunks(monkeypatch):
    """Lists longer than the chunk a program holds carry their prefix sums across chunks."""
    monkeypatch.setattr(family_kernels, "MAX_VALUES", 16)  # column lists: 16 tiles at a time, row lists: 2
    rng = np.random.default_rng(3)
    start, end = random_runs(rng, 2, 600, 170)
    runs = Runs(torch.from_numpy(start), torch.from_numpy(end), 600, batch=2, heads=1)
    assert_bound(bind(runs, 32, 32, TRITON), dense_of_runs(start, end, 600))


def test_backends_agree_on_every_listed_entry():
    rng = np.random.default_rng(11)
    start, end = random_runs(rng, 2, 130, 150)
    runs = Runs(torch.from_numpy(start), torch.from_numpy(end), 130, batch=2, heads=1)
    a, b = bind(runs, 64, 32, TRITON), bind(runs, 64, 32, REFERENCE)
    assert torch.equal(a.intervals, b.intervals)
    for name in ("row", "col"):
        for field in ("lo", "hi", "full"):
            assert torch.equal(getattr(a.lists, f"{name}_{field}"), getattr(b.lists, f"{name}_{field}"))
        other, tile = ("col", "tile") if name == "row" else ("row", "tile")
        for lo, hi in zip(getattr(a.lists, f"{name}_lo").tolist(), getattr(a.lists, f"{name}_hi").tolist()):
            for f in (other, tile):
                assert torch.equal(getattr(a.lists, f"{name}_{f}")[lo:hi], getattr(b.lists, f"{name}_{f}")[lo:hi])


@pytest.mark.parametrize("backend", [TRITON, REFERENCE])
def test_no_host_sync_and_static_shapes(backend):
    """Binding reads no value on the host, and two steps of different data have the same shapes."""
    rng = np.random.default_rng(5)
    shapes = []
    for _ in range(2):
        start, end = random_runs(rng, 2, 70, 50)
        runs = Runs(torch.from_numpy(start), torch.from_numpy(end), 70, batch=2, heads=1)
        with NoHostSync() as mode:
            shapes.append(output_shapes(bind(runs, 32, 32, backend)))
        assert mode.seen  # the mode did watch the operations
    assert shapes[0] == shapes[1]


def test_bad_arguments_are_named():
    runs = Runs(torch.zeros(2, 10, dtype=torch.int32), torch.ones(2, 10, dtype=torch.int32), 10, batch=2, heads=1)
    with pytest.raises(BindError, match="backend must be one of"):
        bind(runs, 32, 32, "cuda")
    with pytest.raises(BindError, match="tile size 16x32 is not supported"):
        bind(runs, 16, 32)
    with pytest.raises(BindError, match="runs.end must hold integers"):
        bind(Runs(runs.start, runs.end.float(), 10, 2, 1), 32, 32)
    with pytest.raises(BindError, match=r"runs.end has shape \[2, 9\], but runs.start has \[2, 10\]"):
        bind(Runs(runs.start, runs.end[:, :9], 10, 2, 1), 32, 32)
    with pytest.raises(BindError, match="runs.end is on meta"):
        bind(Runs(runs.start, runs.end.to("meta"), 10, 2, 1), 32, 32)
    with pytest.raises(BindError, match="runs.start has 2 slices, but batch 1 x heads 1 make 1"):
        bind(Runs(runs.start, runs.end, 10, 1, 1), 32, 32)
    with pytest.raises(BindError, match=r"runs.perm_q must be \[2, 10\]"):
        bind(Runs(runs.start, runs.end, 10, 2, 1, perm_q=runs.start[:1]), 32, 32)
    with pytest.raises(BindError, match="q_len must be a positive integer"):
        bind(Runs(runs.start, runs.end, 0, 2, 1), 32, 32)


def test_tile_count_is_bounded_before_allocating():
    runs = Runs(torch.zeros(1, 4096, dtype=torch.int32), torch.ones(1, 4096, dtype=torch.int32), 2**30, batch=1, heads=1)
    with pytest.raises(BindError, match="tiles; at most"):
        bind(runs, 32, 32)


def test_the_family_package_keeps_the_runtime_rules():
    """``maskc.runtime.family`` is runtime: nothing of the compiler or ``maskc.measure``, no scipy or networkx."""
    script = "import sys, maskc.runtime.family\nprint(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout.split())
    assert "torch" in loaded and "maskc.runtime.family" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("scipy", "networkx")}
    assert not {m for m in loaded if m.startswith("maskc.") and not m.startswith("maskc.runtime")}
