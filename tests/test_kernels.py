"""The block-sparse Triton kernels (forward and backward) against a float64 dense softmax.

Runs on CPU under ``TRITON_INTERPRET=1`` (set here before triton is imported). Every case compiles a
mask with ``maskc.compile``, runs the kernels through a ``DevicePlan`` and compares o, lse, dq, dk and
dv with the float64 reference built from ``plan.to_mask()``. Kernel outputs are allocated NaN-filled,
so an element a kernel forgets to write fails the comparison.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import dataclasses
import math

import numpy as np
import pytest
import torch

import maskc
from maskc.measure.masks import build_mask
from maskc.measure.reference import attention as dense_reference
from maskc.measure.selfcheck import causal, documents, patch_interpreter_bf16_dot, sliding_window
from maskc.runtime import load_plan
from maskc.runtime.device import DevicePlan
from maskc.runtime.kernels import backward, common, config, forward, launches

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU tests run the kernels in the Triton interpreter")

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2.5e-2}


@pytest.fixture(autouse=True)
def _nan_outputs(monkeypatch):
    """Every kernel output starts as NaN: an unwritten element cannot pass."""

    def nan_empty(shape, dtype, device):
        return torch.full(shape, math.nan, dtype=dtype, device=device)

    monkeypatch.setattr(common, "empty", nan_empty)
    patch_interpreter_bf16_dot()


def rand_mask(shape, density, seed):
    return np.random.default_rng(seed).random(shape) < density


def holes(mask, seed):
    """Empty some query rows and a whole block (fully empty tiles) of a [.., Nq, Nk] mask."""
    mask = mask.copy()
    rng = np.random.default_rng(seed)
    nq, nk = mask.shape[-2:]
    mask[..., rng.choice(nq, size=max(1, nq // 8), replace=False), :] = False
    mask[..., nq // 4: 3 * nq // 4, nk // 4: 3 * nk // 4] = False
    return mask


def inverse(perm):
    """The inverse of a permutation (a 1-D tensor)."""
    return torch.argsort(perm)


def rel(x, ref):
    """Max abs error over the largest reference magnitude (floored: a zero reference is not exact in fp)."""
    x, ref = x.detach().double(), ref.detach().double()
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-2)).item()


def run(mask, *, B=1, Hq=2, Hkv=None, D=32, dtype=torch.float32, block=(32, 32), scale=None, seed=0,
        grads=True, layout="bhnd", tol=None, plan=None, variant="block_sparse", schedule="lpt", heads_fast=None):
    """Compile, run forward (+ backward), compare with the float64 reference; return the outputs.
    ``heads_fast`` overrides the plan's launch grid (both passes) when not None."""
    Hkv = Hkv or Hq
    plan = plan or maskc.compile(mask, block=block, variant=variant, reorder="none", schedule=schedule)
    assert plan.variant == variant
    dplan = DevicePlan.from_plan(plan)
    if heads_fast is not None:  # unbalanced lists launch every head first; neither trait, one head after another
        traits = dict(rows_unbalanced=heads_fast, cols_unbalanced=heads_fast, rows_shared=False, cols_shared=False)
        dplan = dataclasses.replace(dplan, **traits)
    nq, nk = plan.q_len, plan.kv_len
    gen = torch.Generator().manual_seed(seed)
    if layout == "bnhd":  # [B, N, H, D] storage: heads interleaved, non-contiguous [B, H, N, D] views
        q = torch.randn(B, nq, Hq, D, generator=gen).to(dtype).transpose(1, 2)
        k = torch.randn(B, nk, Hkv, D, generator=gen).to(dtype).transpose(1, 2)
        v = torch.randn(B, nk, Hkv, D, generator=gen).to(dtype).transpose(1, 2)
        do = torch.randn(B, nq, Hq, D, generator=gen).to(dtype).transpose(1, 2)
    else:
        q = torch.randn(B, Hq, nq, D, generator=gen).to(dtype)
        k = torch.randn(B, Hkv, nk, D, generator=gen).to(dtype)
        v = torch.randn(B, Hkv, nk, D, generator=gen).to(dtype)
        do = torch.randn(B, Hq, nq, D, generator=gen).to(dtype)
    scale = 1 / math.sqrt(D) if scale is None else scale
    ref = dense_reference(q, k, v, torch.from_numpy(plan.to_mask()), scale, do if grads else None)
    tol = tol or TOL[dtype]

    o, lse = forward(q, k, v, dplan, scale)
    assert o.shape == q.shape and o.dtype == dtype and o.is_contiguous()
    assert lse.shape == (B, Hq, nq) and lse.dtype == torch.float32
    if dplan.reordered:  # the kernels keep the lse in plan positions; compare it in token order
        lse = lse.index_select(-1, inverse(dplan.perm_q[0]))
    assert torch.isfinite(o).all()
    assert rel(o, ref[0]) < tol
    empty = torch.isinf(ref[1])
    assert torch.equal(torch.isposinf(lse), empty), "lse must be +inf exactly on rows with no visible key"
    assert not torch.isnan(lse).any()
    if (~empty).any():
        assert (lse[~empty].double() - ref[1][~empty]).abs().max().item() < 50 * tol
    assert (o[empty.expand_as(o[..., 0])] == 0).all(), "rows with no visible key must be exactly 0"
    out = {"o": o, "lse": lse, "plan": plan}
    if grads:
        dq, dk, dv = backward(do, q, k, v, o, lse if not dplan.reordered else lse.index_select(-1, dplan.perm_q[0]), dplan, scale)
        for name, got, want, like in (("dq", dq, ref[2], q), ("dk", dk, ref[3], k), ("dv", dv, ref[4], v)):
            assert got.shape == like.shape and got.dtype == like.dtype, name
            assert torch.isfinite(got).all(), f"{name} has non-finite values"
            assert rel(got, want) < tol, f"{name}: relative error {rel(got, want):.2e} >= {tol}"
        assert (dq[empty.expand_as(dq[..., 0])] == 0).all(), "empty rows must get zero dq"
        out.update(dq=dq, dk=dk, dv=dv, args=(do, q, k, v, o, lse, dplan, scale))
    return out


# ---------------------------------------------------------------------------------------------------
# masks of every kind, fp32 (the interpreter's fp32 tl.dot is exact)
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("density", [0.05, 0.5, 0.95])
@pytest.mark.parametrize("block", [(32, 32), (64, 64)])
def test_random_masks(density, block):
    run(rand_mask((160, 160), density, seed=int(density * 100)), block=block, seed=1)


@pytest.mark.parametrize("block", [(32, 32), (64, 128)])
def test_empty_rows_and_empty_tiles(block):
    mask = holes(rand_mask((192, 192), 0.6, 3), 4)
    mask[:64, 128:] = False  # one empty tile at either tile size
    out = run(mask, block=block, D=64, seed=2)
    counts = out["plan"].tile_counts()
    assert counts["tiles_empty"] > 0 and counts["tiles_partial"] > 0


def test_all_masked():
    """No visible pair at all (an empty plan): o = 0, lse = +inf, all gradients zero, no NaN."""
    out = run(np.zeros((64, 96), dtype=bool), block=(32, 32))
    assert torch.isposinf(out["lse"]).all()
    assert (out["o"] == 0).all() and (out["dq"] == 0).all() and (out["dk"] == 0).all() and (out["dv"] == 0).all()


def test_single_visible_pair():
    mask = np.zeros((64, 96), dtype=bool)
    mask[40, 70] = True
    # p = 1 on the one pair, so dq = scale * (dP - delta) * k is pure cancellation: zero up to rounding
    out = run(mask, block=(32, 32), tol=1e-4)
    assert torch.isposinf(out["lse"][..., :40]).all() and torch.isfinite(out["lse"][..., 40]).all()


@pytest.mark.parametrize("block", [(32, 32), (64, 64), (128, 128), (64, 128), (128, 64)])
def test_causal_block_sizes(block):
    run(causal(256, 256), block=block, D=32, seed=3)


def test_documents_and_sliding_window():
    run(documents(224, [50, 90, 17, 67]), block=(32, 64), D=64, seed=4)
    run(sliding_window(200, 200, 48), block=(64, 32), D=32, seed=5)


def test_prefix_lm_inline():
    n = 160
    mask = causal(n, n)
    mask[:, :40] = True  # bidirectional prefix
    run(mask, block=(32, 32), seed=6)


# ---------------------------------------------------------------------------------------------------
# shapes: ragged, cross attention, GQA, per-head and per-batch masks, strides, head dims
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nq,nk,block", [(200, 150, (64, 64)), (97, 130, (32, 64)), (130, 97, (128, 128)), (33, 250, (32, 32))])
def test_ragged_cross_attention(nq, nk, block):
    mask = rand_mask((nq, nk), 0.4, nq + nk)
    mask[: nq // 3, : nk // 2] = True  # some full tiles, including ragged ones at the edges
    run(mask, block=block, D=32, seed=nq)


def test_ragged_full_tiles_at_edge():
    """All-true ragged mask: every tile, including the edge ones, is a full tile (bounds-only masking)."""
    out = run(np.ones((100, 70), dtype=bool), block=(64, 64), D=32)
    assert out["plan"].tile_counts()["tiles_partial"] == 0


@pytest.mark.parametrize("walk", [False, True])
@pytest.mark.parametrize("hkv", [2, 1])
def test_gqa(hkv, walk, monkeypatch):
    if walk:  # one dK/dV program per key/value head, as on a GPU with programs enough to fill it
        monkeypatch.setattr(launches, "_sm_count", lambda device: 1)
    run(holes(causal(128, 128), 7), B=2, Hq=4, Hkv=hkv, block=(32, 32), D=32, seed=hkv)


@pytest.mark.parametrize("hkv", [1, 2])
def test_gqa_group_split_or_walked(hkv, monkeypatch):
    """One dK/dV program per query head, float32 shares summed over the group afterwards (global
    key columns here), gives the gradients of one program walking the whole group."""
    mask = sliding_window(160, 160, 24)
    mask[:, :5] = True  # global keys: their columns are far longer than the window's
    split = run(mask, B=2, Hq=4, Hkv=hkv, block=(32, 32), seed=40 + hkv, heads_fast=True)
    monkeypatch.setattr(launches, "_sm_count", lambda device: 1)  # the few programs of a small test fill it
    whole = run(mask, B=2, Hq=4, Hkv=hkv, block=(32, 32), seed=40 + hkv, heads_fast=False)
    for name in ("dk", "dv"):
        assert rel(split[name], whole[name]) < 1e-5, name
    assert torch.equal(split["dq"], whole["dq"])


def test_gqa_group_in_parts(monkeypatch):
    """A group of 8 query heads split in 4 parts (two heads per dK/dV program, float32 shares
    summed after) gives the gradients of one program walking the whole group."""
    monkeypatch.setattr(launches, "_sm_count", lambda device: 15)  # 10 programs: split to two per SM
    assert launches.group_parts(8, False, 10, torch.device("cpu")) == 4
    parts = run(causal(160, 160), B=2, Hq=8, Hkv=1, block=(32, 32), seed=50)
    monkeypatch.setattr(launches, "_sm_count", lambda device: 1)
    whole = run(causal(160, 160), B=2, Hq=8, Hkv=1, block=(32, 32), seed=50)
    for name in ("dk", "dv"):
        assert rel(parts[name], whole[name]) < 1e-5, name
    assert torch.equal(parts["dq"], whole["dq"])


def test_group_parts_rule():
    cpu = torch.device("cpu")
    assert launches.group_parts(1, True, 8, cpu) == 1
    assert launches.group_parts(4, True, 10**6, cpu) == 4  # unbalanced columns
    assert launches.group_parts(16, False, 64, cpu) == 8  # fewer programs than SMs: split to two per SM
    assert launches.group_parts(8, False, 128, cpu) == 4
    assert launches.group_parts(2, False, 64, cpu) == 2  # as far as the group goes
    assert launches.group_parts(4, False, 256, cpu) == 1


def test_per_head_masks_with_gqa():
    masks = np.stack([causal(128, 128), rand_mask((128, 128), 0.3, 8), sliding_window(128, 128, 20), np.zeros((128, 128), bool)])
    masks[3, 5:9, :70] = True  # head 3 is mostly empty
    run(masks, B=2, Hq=4, Hkv=2, block=(32, 32), D=32, seed=9)


def test_per_batch_masks():
    masks = np.stack([causal(96, 96), documents(96, [30, 40, 26])])[:, None]  # [B, 1, N, N]
    run(masks, B=2, Hq=3, block=(32, 32), D=32, seed=10)


def test_per_batch_per_head_masks():
    masks = rand_mask((2, 2, 96, 64), 0.5, 11)
    run(masks, B=2, Hq=2, Hkv=1, block=(32, 32), D=32, seed=11)


def test_strided_inputs():
    run(holes(causal(128, 128), 12), B=2, Hq=4, Hkv=2, block=(64, 32), D=32, layout="bnhd", seed=12)


def test_packed_qkv_and_unit_stride_copy():
    """q/k/v as views of one packed [B, N, 3, H, D] tensor, and a head dim with stride 2 (copied)."""
    B, N, H, D = 2, 96, 2, 32
    mask = holes(rand_mask((N, N), 0.5, 22), 22)
    plan = maskc.compile(mask, block=(32, 32), variant="block_sparse")
    dplan = DevicePlan.from_plan(plan)
    qkv = torch.randn(B, N, 3, H, 2 * D, generator=torch.Generator().manual_seed(22))
    q, k, v = (qkv[:, :, i, :, :D].transpose(1, 2) for i in range(3))
    v = qkv[:, :, 2, :, ::2].transpose(1, 2)  # last-dim stride 2
    ref = dense_reference(q, k, v, torch.from_numpy(plan.to_mask()), 0.2)
    o, lse = forward(q, k, v, dplan, 0.2)
    assert rel(o, ref[0]) < 1e-5


@pytest.mark.parametrize("D", [64, 96])
def test_head_dims(D):
    run(holes(rand_mask((96, 96), 0.5, D), D), block=(32, 64), D=D, Hq=2, Hkv=1, seed=D)


def test_head_dim_128():
    run(causal(64, 64), block=(32, 32), D=128, Hq=1, seed=13)


def test_head_dim_256():
    run(holes(causal(64, 64), 14), block=(32, 32), D=256, Hq=1, seed=14)


@pytest.mark.parametrize("scale", [0.05, 1.7])
def test_scale(scale):
    run(rand_mask((96, 96), 0.5, 15), block=(32, 32), scale=scale, seed=15)


def test_large_scores_stable():
    """Scores of magnitude ~200: the online softmax must stay finite and exact."""
    # fp32 rounding of a score s perturbs p by ~|s| * 2**-24, so the tolerance scales with |s|
    run(holes(rand_mask((128, 128), 0.5, 16), 16), block=(64, 64), scale=6.0, seed=16, tol=1e-4)


# ---------------------------------------------------------------------------------------------------
# interval plans (partial tiles rebuilt from per-column row intervals) and launch orders
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", [(32, 32), (64, 128), (128, 64)])
def test_intervals_causal_and_window(block):
    run(causal(200, 200), block=block, variant="intervals", seed=23)
    run(sliding_window(160, 160, 40), block=block, variant="intervals", Hq=2, Hkv=1, seed=24)


def test_intervals_documents_per_head_gqa():
    masks = np.stack([documents(128, [30, 60, 38]), causal(128, 128), sliding_window(128, 128, 33), documents(128, [100, 28], causal_within=False)])
    run(masks, B=2, Hq=4, Hkv=2, block=(32, 64), variant="intervals", seed=25)


def test_intervals_ragged_cross_and_half():
    run(causal(97, 130), block=(64, 64), variant="intervals", seed=26)
    run(sliding_window(150, 150, 70), block=(64, 64), variant="intervals", D=64, dtype=torch.bfloat16, seed=27)


def test_intervals_sub_steps_and_splits():
    with config.override(fwd_sub_n=32, dq_sub_n=64, dkdv_sub_m=16, dkdv_keys=32, fwd_rows=32, dq_rows=64):
        run(documents(192, [40, 100, 52]), block=(128, 128), variant="intervals", seed=28)


def test_launch_order_changes_nothing():
    """The plan's heaviest-first launch order permutes programs only: bitwise the same results."""
    mask = holes(causal(192, 192), 29)
    ordered = run(mask, block=(32, 32), schedule="lpt", seed=29)
    assert ordered["plan"].arrays["row_order"].size > 0
    plain = run(mask, block=(32, 32), schedule="none", seed=29)
    assert plain["plan"].arrays["row_order"].size == 0
    for name in ("o", "lse", "dq", "dk", "dv"):
        assert torch.equal(ordered[name], plain[name]), name
    for fast in (True, False):
        forced = run(mask, block=(32, 32), schedule="lpt", seed=29, heads_fast=fast)
        for name in ("o", "lse", "dq", "dk", "dv"):
            assert torch.equal(ordered[name], forced[name]), (fast, name)


@pytest.mark.parametrize("name, unbalanced, shared", [("documents", False, False), ("sliding_window", False, False), ("causal", False, True),
                                                  ("prefix_lm", False, True), ("longformer", True, False), ("bigbird", True, False)])
def test_launch_grid_follows_the_measured_rule(name, unbalanced, shared):
    """Every head's heaviest lists first for unbalanced lists, and for lists that share most key
    tiles while all heads' keys and values fit about twice the L2; one head after another else
    (benchmarks/NOTES.md)."""
    dplan = DevicePlan.from_plan(maskc.compile(build_mask(name, 8192).source, block=64, variant="block_sparse"))
    assert (dplan.rows_unbalanced, dplan.rows_shared) == (dplan.cols_unbalanced, dplan.cols_shared) == (unbalanced, shared)
    cpu = torch.device("cpu")  # decides with an H100's L2 cache
    for n in (8192, 32768):  # 64 MiB of keys and values with 16 heads of 128: fits; 256 MiB: does not
        k_bytes = 16 * n * 128 * 2  # bf16
        assert launches.heads_fast(unbalanced, shared, k_bytes, n // 64, cpu) == (unbalanced or (shared and n == 8192)), n
    assert not launches.heads_fast(True, True, k_bytes, launches.MAX_GRID_Y + 1, cpu)  # tiles past the second grid axis


def test_launch_order_columns():
    mask = np.ascontiguousarray(causal(160, 160)[::-1, ::-1])  # anti-causal: the heaviest key tile is the last
    out = run(mask, block=(32, 32), schedule="lpt", Hq=2, Hkv=1, seed=30)
    assert out["plan"].arrays["col_order"].size > 0


def scrambled_band(n, width, seed):
    """A band |i - j| < width under a random token order, with some rows emptied: what RCM is for."""
    order = np.random.default_rng(seed).permutation(n)
    mask = np.abs(order[:, None] - order[None, :]) < width
    mask[order < 5] = False
    return mask


@pytest.mark.parametrize("n, block, Hkv, layout, dtype", [(160, (32, 32), 2, "bhnd", torch.float32),
                                                          (150, (64, 32), 1, "bnhd", torch.bfloat16)])
def test_reordered_plans_read_through_the_permutation(n, block, Hkv, layout, dtype):
    """A reordered plan's kernels take the caller's token order, and compute exactly what the
    permuted problem computes with the plan's lists in their own order."""
    mask = scrambled_band(n, 12, seed=n)
    plan = maskc.compile(mask, block=block, reorder="rcm")
    assert plan.reordered
    out = run(mask, plan=plan, B=2, Hq=2, Hkv=Hkv, layout=layout, dtype=dtype, seed=31)
    dplan = DevicePlan.from_plan(plan)
    assert dplan.perm_strides == (0, 0), "a static plan's one permutation serves every slice"
    permuted = dataclasses.replace(dplan, perm_q=dplan.perm_q[:0], perm_k=dplan.perm_k[:0])
    do, q, k, v, o, lse, _, scale = out["args"]
    perm = dplan.perm_q[0]
    back = inverse(perm)
    o_p, lse_p = forward(*(t.index_select(2, perm) for t in (q, k, v)), permuted, scale)
    assert torch.equal(o_p.index_select(2, back), out["o"])
    assert torch.equal(lse_p.index_select(-1, back), lse)  # run() hands back the lse in token order
    grads_p = backward(*(t.index_select(2, perm) for t in (do, q, k, v)), o_p, lse_p, permuted, scale)
    for name, got in zip(("dq", "dk", "dv"), grads_p):
        assert torch.equal(got.index_select(2, back), out[name]), name


def test_rejects_dense_variants():
    plan = maskc.compile(causal(64, 64), block=(32, 32), variant="dense_causal")
    q = torch.randn(1, 1, 64, 32)
    with pytest.raises(ValueError, match="dense"):
        forward(q, q, q, DevicePlan.from_plan(plan), 0.1)


# ---------------------------------------------------------------------------------------------------
# half precision
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    mask = holes(rand_mask((160, 130), 0.5, 17), 17)
    run(mask, B=1, Hq=4, Hkv=2, block=(64, 64), D=64, dtype=dtype, seed=17)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_causal_large_tile(dtype):
    run(causal(200, 200), block=(128, 128), D=32, dtype=dtype, seed=18)


# ---------------------------------------------------------------------------------------------------
# sub-steps through a tile (launch configs), determinism, errors
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sub", [
    dict(fwd_sub_n=32, dq_sub_n=32, dkdv_sub_m=32, dkdv_keys=128, fwd_rows=128, dq_rows=128),
    dict(fwd_sub_n=64, dq_sub_n=64, dkdv_sub_m=64, dkdv_keys=64, fwd_rows=32, dq_rows=64),
    dict(fwd_sub_n=16, dq_sub_n=16, dkdv_sub_m=16, dkdv_keys=16, fwd_rows=16, dq_rows=16),
    dict(fwd_sub_n=128, dq_sub_n=128, dkdv_sub_m=128, dkdv_keys=32, fwd_rows=64, dq_rows=32),
])
def test_sub_steps(sub):
    """Every sub-step size and tile split must read the same bitmap bits: row row0 + i, word
    (col0 + j) // 32, bit (col0 + j) % 32."""
    mask = holes(rand_mask((200, 190), 0.5, 19), 19)
    with config.override(**sub):
        run(mask, block=(128, 128), D=32, seed=19)


def test_sub_steps_mixed_tiles():
    mask = holes(documents(192, [40, 100, 52]), 20)
    with config.override(fwd_sub_n=32, dq_sub_n=64, dkdv_sub_m=16, dkdv_keys=32):
        run(mask, block=(64, 128), D=32, Hq=2, Hkv=1, seed=20)
    with config.override(fwd_sub_n=64, dq_sub_n=32, dkdv_sub_m=64, dkdv_keys=64):
        run(mask, block=(128, 64), D=32, Hq=2, Hkv=1, seed=20)


@pytest.mark.parametrize("scale", [0.0, -0.5, math.inf, math.nan])
def test_rejects_a_scale_that_is_not_positive(scale):
    """The forward takes the running max before scaling; a scale <= 0 is refused, not mis-computed."""
    plan = maskc.compile(causal(64, 64), block=(32, 32), variant="block_sparse")
    q = torch.randn(1, 2, 64, 32)
    with pytest.raises(ValueError, match="scale"):
        forward(q, q, q, DevicePlan.from_plan(plan), scale)
    with pytest.raises(ValueError, match="scale"):
        load_plan(plan).attention(q, q, q, scale=scale)


def test_full_tiles_in_one_run_or_scattered():
    """Query tile rows whose full tiles are consecutive take the forward's run path; the others
    read their list and skip the mask of their full tiles; both, and rows with no full tile, in
    one plan."""
    mask = rand_mask((192, 192), 0.5, 42)  # 32x32 tiles: partial everywhere ...
    mask[:32, :96] = True  # ... tile row 0: full tiles 0, 1, 2 (a run)
    mask[32:64, :32] = mask[32:64, 64:128] = True  # tile row 1: full tiles 0, 2, 3 (no run)
    plan = maskc.compile(mask, block=(32, 32), variant="block_sparse", reorder="none")
    a = plan.arrays
    assert list(a["row_col"][: a["row_full"][0]]) == [0, 1, 2]
    assert list(a["row_col"][a["row_ptr"][1] : a["row_ptr"][1] + a["row_full"][1]]) == [0, 2, 3]
    run(mask, plan=plan, block=(32, 32), seed=42)


def test_backward_deterministic():
    out = run(holes(causal(96, 96), 21), B=1, Hq=4, Hkv=2, block=(32, 32), seed=21)
    again = backward(*out["args"])
    for a, b in zip((out["dq"], out["dk"], out["dv"]), again):
        assert torch.equal(a, b)


def test_rejects_unsupported_plans():
    plan = maskc.compile(causal(64, 64), block=(32, 32), variant="block_sparse")
    dplan = DevicePlan.from_plan(plan)
    q = torch.randn(1, 2, 64, 32)
    with pytest.raises(ValueError, match="tiles"):
        forward(q, q, q, dataclasses.replace(dplan, block_m=16), 0.1)
    with pytest.raises(ValueError, match="do not match the plan's mask 64x64"):
        forward(q[:, :, :32], q, q, dplan, 0.1)
    with pytest.raises(ValueError, match="multiple"):
        forward(torch.randn(1, 3, 64, 32), q, q, dplan, 0.1)
    heads = DevicePlan.from_plan(maskc.compile(rand_mask((3, 64, 64), 0.5, 0), block=(32, 32), variant="block_sparse"))
    with pytest.raises(ValueError, match="heads"):
        forward(q, q, q, heads, 0.1)
    with pytest.raises(ValueError, match="dtype float16, bfloat16 or float32, not torch.float64"):
        forward(q.double(), q.double(), q.double(), dplan, 0.1)
    with pytest.raises(ValueError, match="sub_n"):
        with config.override(fwd_sub_n=24):
            forward(q, q, q, dplan, 0.1)


def test_config_table_lookup(monkeypatch):
    cfg = config.KernelConfig(fwd_warps=2, fwd_stages=1, fwd_sub_n=32, dq_sub_n=32, dkdv_sub_m=16, dkdv_keys=64, fwd_rows=64, dq_rows=64)
    monkeypatch.setitem(config.TABLE, (0, 0, 64, "fp16", 64, 64), cfg)
    assert config.lookup(torch.device("cpu"), 64, torch.float16, 64, 64) == cfg
    assert config.lookup(torch.device("cpu"), 96, torch.float16, 64, 64) != cfg  # other head-dim bucket
    assert config.lookup(torch.device("cpu"), 48, torch.float16, 64, 64) == cfg  # 48 pads to 64
    with pytest.raises(ValueError):
        config.lookup(torch.device("cpu"), 64, torch.float16, 256, 64)
