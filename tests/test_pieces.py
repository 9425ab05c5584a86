"""Dense pieces: found exactly, validated in plans, chosen by the model, and the backward through them."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # the tile kernels run the forward, on CPU tensors

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import maskc
from maskc import library
from maskc.compiler import detect_intervals, structured_intervals
from maskc.errors import MaskError
from maskc.pieces import MAX_PIECES, find_pieces
from maskc.runtime import format as fmt
from maskc.runtime import load_plan
from maskc.runtime import pieces as dense_pieces
from maskc.runtime.format import PlanError
from maskc.work import plan_candidate

from conftest import dense_reference, rel_err


def pieces_mask(pieces: np.ndarray, q_len: int, kv_len: int) -> np.ndarray:
    """The mask the pieces cover, asserting that no pair is covered twice."""
    mask = np.zeros((q_len, kv_len), dtype=bool)
    for q0, q1, k0, k1, causal in pieces:
        block = np.ones((q1 - q0, k1 - k0), dtype=bool)
        block = np.tril(block) if causal else block
        assert not (mask[q0:q1, k0:k1] & block).any()
        mask[q0:q1, k0:k1] |= block
    return mask


def _source(kind: str, draw) -> maskc.sources.MaskSource:
    n = draw(st.integers(8, 160))
    if kind == "prefix_lm":
        return library.prefix_lm(n, draw(st.integers(0, n)))
    if kind == "documents":
        lengths = draw(st.lists(st.integers(1, 40), min_size=1, max_size=20))
        return library.documents(lengths, causal=draw(st.booleans()))
    if kind == "shared_question":
        return library.shared_question(draw(st.integers(1, 40)), draw(st.lists(st.integers(1, 40), min_size=1, max_size=6)))
    if kind == "causal_blockwise":
        return library.causal_blockwise(n, draw(st.integers(1, n)))
    if kind == "sliding_window":
        return library.sliding_window(n, draw(st.integers(1, n)), causal=draw(st.booleans()))
    if kind == "longformer":
        return library.longformer(n, draw(st.integers(1, n)), draw(st.lists(st.integers(0, n - 1), max_size=3, unique=True)))
    return library.union(library.prefix_lm(n, draw(st.integers(0, n))), library.documents([n // 2, n - n // 2]))


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from(["prefix_lm", "documents", "shared_question", "causal_blockwise", "sliding_window", "longformer", "union"]))
def test_pieces_cover_exactly_the_mask(data, kind):
    source = _source(kind, data.draw)
    vectors = structured_intervals(source)
    vectors = vectors if vectors is not None else detect_intervals(source)[0]
    pieces = find_pieces(vectors, source.q_len) if vectors is not None else None
    if pieces is None:
        assert kind in ("sliding_window", "longformer", "documents", "causal_blockwise", "union")  # bands, or too many pieces
        if kind == "causal_blockwise":  # one rectangle per block
            assert -(-source.q_len // source.block) > MAX_PIECES
        return
    assert 1 <= pieces.shape[0] <= MAX_PIECES
    assert np.array_equal(pieces_mask(pieces, source.q_len, source.kv_len), source.to_dense()[0, 0])
    assert np.all(pieces[pieces[:, 4] == 1, 1] - pieces[pieces[:, 4] == 1, 0] == pieces[pieces[:, 4] == 1, 3] - pieces[pieces[:, 4] == 1, 2])


@settings(max_examples=30, deadline=None)
@given(st.data(), st.sampled_from(["prefix_lm", "documents", "shared_question", "causal_blockwise", "union"]),
       st.sampled_from(["block_sparse", "intervals"]))
def test_the_reader_takes_every_plans_own_pieces(data, kind, variant):
    """The exactness check never refuses the pieces the compiler found (its refusals:
    test_pieces_that_are_not_the_mask_are_refused)."""
    source = _source(kind, data.draw)
    try:
        plan = maskc.compile(source, block=32, variant=variant, backward="pieces")
    except MaskError:  # no pieces, or more than a plan may carry
        return
    back = fmt.decode(plan.to_bytes())
    assert np.array_equal(back.arrays["pieces"], plan.arrays["pieces"]) and back.arrays["pieces"].shape[0] >= 1


def test_the_masks_made_of_pieces_are_found():
    assert find_pieces(structured_intervals(library.prefix_lm(300, 77)), 300).tolist() == [[0, 300, 0, 77, 0], [77, 300, 77, 300, 1]]
    assert find_pieces(structured_intervals(library.causal(64)), 64).tolist() == [[0, 64, 0, 64, 1]]
    question = find_pieces(structured_intervals(library.shared_question(50, [30, 40])), 120)
    assert question.tolist() == [[0, 50, 0, 50, 1], [50, 120, 0, 50, 0], [50, 80, 50, 80, 1], [80, 120, 80, 120, 1]]
    assert find_pieces(structured_intervals(library.sliding_window(300, 40)), 300) is None  # a band: one piece per column
    assert find_pieces(structured_intervals(library.documents([10] * (MAX_PIECES + 1))), 10 * (MAX_PIECES + 1)) is None


def _pieced_plan(source=None, block=32):
    return maskc.compile(source or library.prefix_lm(100, 30), block=block, backward="pieces")


def _with_pieces(plan, pieces):
    return dataclasses.replace(plan, arrays={**plan.arrays, "pieces": np.array(pieces, dtype="<i4")})


def test_a_plan_with_pieces_round_trips_and_older_versions_have_none():
    plan = _pieced_plan()
    back = fmt.decode(plan.to_bytes())
    assert np.array_equal(back.arrays["pieces"], plan.arrays["pieces"]) and back.arrays["pieces"].shape == (2, 5)
    assert plan_candidate(back).name == "block_sparse/32x32+pieces"
    assert maskc.compile(library.prefix_lm(100, 30), block=32).arrays["pieces"].shape == (0, 5)


@pytest.mark.parametrize("pieces, message", [
    ([[0, 100, 0, 30, 0], [30, 100, 30, 100, 1], [0, 1, 99, 100, 0]], "pairs"),
    ([[0, 100, 0, 31, 0], [30, 100, 30, 100, 1]], "overlap"),
    ([[0, 101, 0, 30, 0], [30, 100, 30, 100, 1]], "q_len"),
    ([[0, 100, 0, 30, 0], [30, 100, 30, 99, 1]], "square"),
    ([[0, 100, 0, 30, 2], [30, 100, 30, 100, 1]], "causal flag"),
    ([[0, 100, 0, 30, 0]] * (MAX_PIECES + 1), f"at most {MAX_PIECES}"),
])
def test_hostile_pieces_are_refused(pieces, message):
    plan = _with_pieces(_pieced_plan(), pieces)
    with pytest.raises(PlanError, match=message):
        fmt.validate(plan)


@pytest.mark.parametrize("variant", ["block_sparse", "intervals"])
@pytest.mark.parametrize("pieces", [
    [[0, 30, 0, 100, 0], [30, 100, 30, 100, 1]],  # as many pairs, in bounds and disjoint, but not the mask
    [[0, 100, 0, 30, 0], [30, 100, 30, 100, 0]],  # the causal square sent as a full one (pair count differs)
])
def test_pieces_that_are_not_the_mask_are_refused(variant, pieces):
    plan = _with_pieces(maskc.compile(library.prefix_lm(100, 30), block=32, variant=variant, backward="pieces"), pieces)
    with pytest.raises(PlanError, match="pieces"):
        fmt.validate(plan)
    with pytest.raises(PlanError, match="pieces"):
        fmt.decode(plan.to_bytes())


@pytest.mark.parametrize("variant", ["block_sparse", "intervals"])
def test_pieces_of_a_bitmap_or_interval_plan_that_are_the_mask_pass(variant):
    source = library.shared_question(50, [30, 40])
    plan = maskc.compile(source, block=32, variant=variant, backward="pieces")
    assert plan.arrays["pieces"].shape[0] == 4
    fmt.validate(plan)
    back = fmt.decode(plan.to_bytes())
    assert np.array_equal(pieces_mask(back.arrays["pieces"], 120, 120), source.to_dense()[0, 0])


def test_only_one_slice_tile_plans_in_token_order_carry_pieces():
    two_heads = maskc.compile(library.stack([library.prefix_lm(100, 30)] * 2), block=32)
    two_heads = _with_pieces(two_heads, _pieced_plan().arrays["pieces"])
    with pytest.raises(PlanError, match="one-slice"):
        fmt.validate(two_heads)
    with pytest.raises(MaskError, match="dense pieces"):
        maskc.compile(library.sliding_window(300, 40), block=32, backward="pieces")
    with pytest.raises(MaskError, match="dense_causal plan cannot"):
        maskc.compile(library.causal(64), block=32, variant="dense_causal", backward="pieces")
    with pytest.raises(MaskError, match="backward"):
        maskc.compile(library.causal(64), backward="sometimes")


def test_a_dense_source_finds_its_pieces_too():
    plan = maskc.compile(library.prefix_lm(100, 30).to_dense(), block=32, backward="pieces")
    assert plan.arrays["pieces"].tolist() == [[0, 100, 0, 30, 0], [30, 100, 30, 100, 1]]


@pytest.mark.parametrize("source", [library.prefix_lm(150, 40), library.shared_question(30, [40, 25, 50])], ids=["prefix_lm", "shared_question"])
def test_backward_through_pieces_matches_the_reference(source):
    loaded = load_plan(_pieced_plan(source))
    n = source.q_len
    gen = torch.Generator().manual_seed(3)
    q, k, v, grad = (torch.randn(2, 3, n, 32, generator=gen) for _ in range(4))
    scale = 0.2
    ref = dense_reference(q, k, v, source.to_dense()[0, 0], scale, grad)
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    out = loaded.attention(qs, ks, vs, scale=scale, backend="triton")
    assert loaded.on(q.device).pieces and dense_pieces.supported(q)
    out.backward(grad)
    for got, want in zip((out, qs.grad, ks.grad, vs.grad), ref):
        assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("kv_heads", [2, 1], ids=["gqa", "mqa"])
def test_grouped_heads_run_through_the_pieces_as_their_query_heads(kv_heads, monkeypatch):
    source = library.prefix_lm(96, 20)
    loaded = load_plan(_pieced_plan(source))
    gen = torch.Generator().manual_seed(5)
    q, grad = (torch.randn(1, 4, 96, 16, generator=gen) for _ in range(2))
    k, v = (torch.randn(1, kv_heads, 96, 16, generator=gen) for _ in range(2))
    calls = []
    by_pieces = dense_pieces._by_pieces
    monkeypatch.setattr(dense_pieces, "_by_pieces", lambda *args: calls.append(args[2].shape) or by_pieces(*args))
    ref = dense_reference(q, k, v, source.to_dense()[0, 0], 0.25, grad)
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    out = loaded.attention(qs, ks, vs, scale=0.25, backend="triton")
    out.backward(grad)
    assert calls == [torch.Size([1, 4, 96, 16])]  # k (and v) repeated to the query heads
    assert ks.grad.shape == k.shape and vs.grad.shape == v.shape
    for got, want in zip((out, qs.grad, ks.grad, vs.grad), ref):
        assert rel_err(got, want) < 1e-5


def test_pieces_backward_leaves_uncovered_rows_and_keys_at_zero():
    pieces = ((0, 4, 2, 6, True),)
    q, k, v, do = (torch.randn(1, 1, 8, 8, dtype=torch.float64) for _ in range(4))
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:4, 2:6] = np.tril(np.ones((4, 4), dtype=bool))
    out, *want = dense_reference(q, k, v, mask, 0.5, do)
    s = (q @ k.transpose(-1, -2) * 0.5).masked_fill(~torch.from_numpy(mask), -float("inf"))
    lse = torch.logsumexp(s, -1)
    got = dense_pieces.backward(do, q, k, v, out, lse, pieces, 0.5)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-12)
    assert torch.all(got[0][:, :, 4:] == 0) and torch.all(got[1][:, :, :2] == 0) and torch.all(got[2][:, :, 6:] == 0)


def test_the_model_predicts_pieces_from_the_profile():
    from maskc import cost

    work = cost.Work(100, 100, 1, 1, 3000, pieces=((True, 2000), (False, 1000)))
    costs = cost.PiecesCost(piece_ms=0.1, causal_pair_ms=1e-6, full_pair_ms=2e-6)
    assert costs.time(work.pieces, 16) == pytest.approx(0.2 + 16 * (2000e-6 + 2000e-6))
    assert cost.Work.from_dict(work.as_dict()) == work


@pytest.mark.parametrize("workload", [dict(dtype="fp32"), dict(head_dim=256)], ids=["fp32", "wide"])
def test_the_model_never_predicts_pieces_for_a_call_that_runs_the_tile_backward(workload):
    from maskc import cost

    profile = cost.Profile("Test GPU", "cuda", "0" * 64, "<test>", pieces={(b, d): cost.PiecesCost(0.1, 1e-9, 1e-9)
                                                                          for b in cost.HEAD_DIM_BUCKETS for d in cost.DTYPES})
    lists = cost.ListWork.from_counts(np.array([1]), np.array([0]))
    work = cost.Work(100, 100, 1, 1, 3000, lists, lists, pieces=((True, 2000),))
    with pytest.raises(cost.ProfileError, match="tile backward"):
        cost.predict(profile, cost.Candidate("block_sparse", (64, 64), pieces=True), work, cost.Workload(**workload))
    assert maskc.runtime.format.pieces_take("bf16", 128) and not maskc.runtime.format.pieces_take("bf16", 100)


def test_the_cli_refuses_pieces_a_mask_does_not_have_in_one_line(tmp_path):
    from click.testing import CliRunner

    from maskc.cli.main import cli

    spec = tmp_path / "window.json"
    spec.write_text('{"kind": "sliding_window", "n": 512, "window": 64, "causal": true}')
    result = CliRunner().invoke(cli, ["compile", str(spec), "-o", str(tmp_path / "w.plan"), "--backward", "pieces", "--no-cache"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error:") and "dense pieces" in lines[0]
    assert not (tmp_path / "w.plan").exists()
