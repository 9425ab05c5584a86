"""The interval form: canonical vectors, detection from rows, exact tile classes, structured sources,
interval plans against bitmap plans and dense masks, FlashMask interop, and the 131072-token bar."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import maskc
from maskc import library
from maskc.bitmaps import bitmap_plan
from maskc.cache import PlanCache
from maskc.choice import AUTO_PAIRS
from maskc.errors import MaskError
from maskc.flashmask import from_startend_row_indices, to_startend_row_indices
from maskc.intervals import canonical, intervals_sha256
from maskc.runtime.format import decode, masked_pairs, tile_classes, tile_map, visible_rows
from maskc.scan import detect_intervals, fingerprint
from maskc.sources import ArraySource, IntervalSource, MaskSource

BLOCKS = [(32, 32), (64, 32), (32, 64), (64, 64)]


# --- independent references ----------------------------------------------------------------------


def masked_runs_per_column(mask: np.ndarray) -> np.ndarray:
    """``[slices, kv]`` number of maximal runs of masked rows, counted the obvious way."""
    masked = ~mask.reshape((-1,) + mask.shape[-2:])
    starts = masked[:, :1, :].astype(int) + (masked[:, 1:, :] & ~masked[:, :-1, :]).sum(axis=1, keepdims=True)
    return starts[:, 0, :]


def dense_from_vectors(vectors: np.ndarray, q_len: int) -> np.ndarray:
    """``[S, q, kv]`` mask of interval vectors, one pair at a time (shares no code with the runtime)."""
    s, _, kv = vectors.shape
    out = np.ones((s, q_len, kv), dtype=bool)
    for i in range(s):
        for j in range(kv):
            lts, lte, uts, ute = vectors[i, :, j]
            out[i, lts:lte, j] = False
            out[i, uts:ute, j] = False
    return out


def brute_tile_map(mask2d: np.ndarray, bm: int, bn: int) -> np.ndarray:
    tm, tn = -(-mask2d.shape[0] // bm), -(-mask2d.shape[1] // bn)
    out = np.zeros((tm, tn), dtype=np.int8)
    for m in range(tm):
        for n in range(tn):
            t = mask2d[m * bm:(m + 1) * bm, n * bn:(n + 1) * bn]
            out[m, n] = 1 if t.all() else (2 if t.any() else 0)
    return out


@st.composite
def interval_vectors(draw):
    """Random valid vectors (intervals may overlap, touch or be empty) and their q_len."""
    s, q, kv = draw(st.integers(1, 3)), draw(st.integers(1, 140)), draw(st.integers(1, 140))
    r = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ends = np.sort(r.integers(0, q + 1, size=(s, 2, 2, kv)), axis=2)
    if draw(st.booleans()):  # many empty or whole-column intervals, the edge cases
        ends[r.random(ends.shape) < 0.3] = r.choice([0, q])
        ends = np.sort(ends, axis=2)
    vectors = ends.reshape(s, 4, kv)  # (LTS, LTE), (UTS, UTE)
    return vectors.astype(np.int32), q


# --- canonical vectors and exact tile classes ----------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(interval_vectors())
def test_canonical_vectors_keep_the_mask_and_name_it_uniquely(case):
    vectors, q = case
    dense = dense_from_vectors(vectors, q)
    canon = canonical(vectors, q)
    assert np.array_equal(dense_from_vectors(canon, q), dense)
    assert np.array_equal(canonical(canon, q), canon)
    for i, slice_mask in enumerate(dense):  # the same mask read from rows gives the same vectors
        tracked, failure = detect_intervals(ArraySource(slice_mask), block_rows=7)
        assert failure is None and np.array_equal(tracked[0], canon[i])
    assert masked_pairs(vectors) == int((~dense).sum())
    for iv, full in zip(canon, dense):
        (lts, lte, uts, ute), has_upper, has_lower = iv, iv[3] > iv[2], iv[1] > iv[0]
        assert np.all(has_upper | ((uts == 0) & (ute == 0)))  # an empty upper interval is [0, 0)
        assert np.all(has_lower | ((lts == q) & (lte == q)))  # an empty lower interval is [q, q)
        assert np.all(ute[has_upper & has_lower] < lts[has_upper & has_lower])  # two runs: upper first, never touching
        assert np.all(uts[has_upper & ~has_lower] == 0) and np.all(lts[has_lower & ~has_upper] > 0)  # one run: upper iff at row 0
        assert np.array_equal(visible_rows(iv, 0, q), full)


@settings(max_examples=80, deadline=None)
@given(interval_vectors(), st.sampled_from(BLOCKS))
def test_tile_classes_from_intervals_are_exact(case, block):
    vectors, q = case
    dense = dense_from_vectors(vectors, q)
    for iv, mask2d in zip(vectors, dense):
        classes = tile_classes(iv, q, *block)
        assert np.array_equal(classes, brute_tile_map(mask2d, *block))
        plan = maskc.compile(mask2d, block=block, variant="block_sparse")
        assert np.array_equal(classes, tile_map(plan))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(1, 90), st.integers(1, 90), st.sampled_from([0.02, 0.3, 0.9]), st.integers(1, 40))
def test_detection_decides_exactly_which_masks_fit(seed, q, kv, density, block_rows):
    r = np.random.default_rng(seed)
    mask = r.random((q, kv)) < density
    if seed % 2:  # structured enough to fit, with a few random flips that may break it
        mask = dense_from_vectors(canonical(np.sort(r.integers(0, q + 1, size=(1, 2, 2, kv)), axis=2).reshape(1, 4, kv), q), q)[0]
        mask[r.integers(q, size=2), r.integers(kv, size=2)] ^= seed % 4 == 1
    fits = bool(np.all(masked_runs_per_column(mask) <= 2))
    vectors, failure = detect_intervals(ArraySource(mask), block_rows=block_rows)
    assert (vectors is not None) == fits and (failure is None) == fits
    if fits:
        assert np.array_equal(dense_from_vectors(vectors, q)[0], mask)
    else:
        assert "more than two runs" in failure
        with pytest.raises(MaskError, match="does not fit the interval form"):
            maskc.compile(mask, variant="intervals")


# --- structured sources: interval plan, bitmap plan and dense mask agree -------------------------


@st.composite
def lengths(draw, total_max=90):
    return draw(st.lists(st.integers(1, 30), min_size=1, max_size=6).filter(lambda v: sum(v) <= total_max))


@st.composite
def simple_sources(draw, n=None):
    n = n or draw(st.integers(1, 90))
    kind = draw(st.sampled_from(["causal", "full", "sliding", "prefix", "blockwise", "documents", "longformer"]))
    if kind == "causal":
        return library.causal(n)
    if kind == "full":
        return library.full(n)
    if kind == "sliding":
        return library.sliding_window(n, draw(st.integers(1, n + 3)), causal=draw(st.booleans()))
    if kind == "prefix":
        return library.prefix_lm(n, draw(st.integers(0, n)))
    if kind == "blockwise":
        return library.causal_blockwise(n, draw(st.integers(1, n + 3)))
    if kind == "documents":
        parts = draw(st.lists(st.integers(1, 30), min_size=1, max_size=6))
        parts = parts + [n - sum(parts)] if sum(parts) < n else [n]
        return library.documents(parts, causal=draw(st.booleans()))
    lead = draw(st.integers(0, 3))
    tail = draw(st.integers(0, 2))
    tokens = sorted(set(range(min(lead, n))) | set(range(max(0, n - tail), n)))
    return library.longformer(n, draw(st.integers(1, 12)), tokens, causal=draw(st.booleans()))


@st.composite
def structured_sources(draw):
    kind = draw(st.sampled_from(["simple", "simple", "shared", "tree", "medusa", "longformer_any", "bigbird", "buckets", "union", "intersection", "stack", "cross"]))
    if kind == "simple":
        return draw(simple_sources())
    if kind == "shared":
        return library.shared_question(draw(st.integers(1, 30)), draw(lengths(60)))
    if kind == "tree":
        size = draw(st.integers(1, 40))
        return library.token_tree([-1] + [draw(st.integers(-1, i - 1)) for i in range(1, size)])
    if kind == "medusa":
        return library.medusa(draw(st.integers(1, 20)), library.candidate_tree(draw(st.integers(1, 30)), seed=draw(st.integers(0, 5))))
    if kind == "longformer_any":
        n = draw(st.integers(1, 80))
        tokens = draw(st.lists(st.integers(0, n - 1), max_size=5))
        return library.longformer(n, draw(st.integers(1, 10)), tokens, causal=draw(st.booleans()))
    if kind == "bigbird":
        n = draw(st.integers(8, 80))
        return library.bigbird(n, draw(st.integers(1, 6)), [0], draw(st.integers(0, 1)), block=8, seed=draw(st.integers(0, 9)))
    if kind == "buckets":
        return library.hash_buckets(draw(st.integers(1, 60)), draw(st.integers(1, 4)), causal=draw(st.booleans()), seed=draw(st.integers(0, 9)))
    if kind == "cross":
        return library.full(draw(st.integers(1, 70)), kv_len=draw(st.integers(1, 70)))
    n = draw(st.integers(1, 80))
    parts = [draw(simple_sources(n)) for _ in range(draw(st.integers(2, 3)))]
    if kind == "stack":
        return library.stack(parts, dim=draw(st.sampled_from(["heads", "batch"])))
    return library.union(*parts) if kind == "union" else library.intersection(*parts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structured_sources(), st.sampled_from(BLOCKS))
def test_interval_plan_bitmap_plan_and_dense_mask_agree(source, block):
    dense = source.to_dense()
    fits = bool(np.all(masked_runs_per_column(dense) <= 2))
    vectors = source.intervals()
    if vectors is not None:  # the structure's vectors are exact, and only given when the mask fits
        assert fits
        assert np.array_equal(dense_from_vectors(canonical(vectors, source.q_len), source.q_len), dense.reshape(-1, *dense.shape[2:]))
    bitmap = maskc.compile(source, block=block, variant="block_sparse")
    assert np.array_equal(bitmap.to_mask(), dense)
    if not fits:
        with pytest.raises(MaskError, match="does not fit the interval form"):
            maskc.compile(source, block=block, variant="intervals")
        assert maskc.compile(source, block=block).to_bytes() == bitmap.to_bytes()  # auto falls back
        return
    plan = maskc.compile(source, block=block, variant="intervals")
    assert plan.variant == "intervals" and plan.hash_of == "intervals"
    assert np.array_equal(plan.to_mask(), dense)
    assert np.array_equal(decode(plan.to_bytes()).to_mask(), dense)
    assert plan.visible_pairs == bitmap.visible_pairs == int(dense.sum())
    for s in range(plan.slices):
        assert np.array_equal(tile_map(plan, s), tile_map(bitmap, s))
    for name in ("row_ptr", "row_full", "row_col", "col_ptr", "col_full", "col_row"):
        assert np.array_equal(plan.arrays[name], bitmap.arrays[name]), name
    # the bitmaps rebuilt from the intervals (how long structured masks get bitmaps) are the ones read from rows
    rebuilt = bitmap_plan(plan)
    for name in ("row_ptr", "row_full", "row_col", "row_tile", "col_ptr", "col_full", "col_row", "col_tile", "bitmaps"):
        assert np.array_equal(rebuilt.arrays[name], bitmap.arrays[name]), name
    assert np.array_equal(rebuilt.to_mask(), dense) and rebuilt.mask_sha256 == plan.mask_sha256
    # the same mask from its dense form gives the byte-identical plan, hash included
    assert maskc.compile(dense, block=block, variant="intervals").to_bytes() == plan.to_bytes()
    assert fingerprint(source) == fingerprint(dense) == (plan.mask_sha256, "intervals")


def test_which_kinds_give_their_intervals_from_structure():
    n = 64
    gives = [
        library.causal(n), library.full(n, kv_len=40), library.sliding_window(n, 9), library.sliding_window(n, 9, causal=False),
        library.documents([10, 30, 24]), library.documents([10, 30, 24], causal=False), library.prefix_lm(n, 20),
        library.shared_question(20, [30, 14]), library.causal_blockwise(n, 16), library.longformer(n, 5, [0, 1, 63]),
        library.token_tree([-1, 0, 1, 1, 0, 4]), library.medusa(20, [-1, 0, 1, -1]),
        library.union(library.sliding_window(n, 8), library.prefix_lm(n, 4)),
        library.intersection(library.documents([32, 32]), library.sliding_window(n, 8)),
        library.stack([library.causal(n), library.prefix_lm(n, 3)]),
    ]
    for source in gives:
        assert source.intervals() is not None, source.name
    never = [library.bigbird(n, 3, [0], 2, block=16), library.hash_buckets(n, 4)]
    scattered = [library.longformer(n, 3, [0, 20, 40]), library.token_tree([-1, 0, 0, 1])]
    for source in never + scattered:
        assert source.intervals() is None, source.name
    # a tree not numbered in preorder may still fit: then the rows decide, exactly
    tree = library.token_tree([-1, 0, 0, 1])
    assert maskc.compile(tree, variant="intervals", block=32).to_mask()[0, 0].tolist() == tree.to_dense()[0, 0].tolist()
    # each operand fits, their union does not: every column sees rows 10..19 and 40..49 only
    first = IntervalSource(np.tile(np.array([20, n, 0, 10])[None, :, None], (1, 1, n)), (1, 1, n, n), "rows 10-19")
    second = IntervalSource(np.tile(np.array([50, n, 0, 40])[None, :, None], (1, 1, n)), (1, 1, n, n), "rows 40-49")
    gap = library.union(first, second)
    assert gap.intervals() is None and np.all(masked_runs_per_column(gap.to_dense()) == 3)
    assert library.intersection(first, second).intervals() is not None  # nothing visible: one run


def test_union_and_intersection_rows_and_errors():
    a, b = library.sliding_window(30, 4), library.prefix_lm(30, 6)
    assert np.array_equal(library.union(a, b).to_dense(), a.to_dense() | b.to_dense())
    assert np.array_equal(library.intersection(a, b).to_dense(), a.to_dense() & b.to_dense())
    heads = library.stack([library.causal(30), library.full(30)])
    mixed = library.intersection(heads, a)
    assert mixed.shape == (1, 2, 30, 30)
    assert np.array_equal(mixed.to_dense(), heads.to_dense() & a.to_dense())
    assert np.array_equal(canonical(mixed.intervals(), 30), maskc.compile(mixed.to_dense(), variant="intervals").arrays["intervals"])
    with pytest.raises(MaskError, match="at least two"):
        library.union(a)
    with pytest.raises(MaskError, match=r"sources\[1\] .* is \[31, 31\]"):
        library.union(a, library.causal(31))
    with pytest.raises(MaskError, match="do not broadcast"):
        library.union(heads, library.stack([a, a, a]))


def test_causal_blockwise_rows():
    n, block = 23, 5
    expected = np.array([[j // block <= i // block for j in range(n)] for i in range(n)])
    assert np.array_equal(library.causal_blockwise(n, block).to_dense()[0, 0], expected)
    with pytest.raises(MaskError, match="causal_blockwise: block must be positive"):
        library.causal_blockwise(8, 0)


# --- the runtime: the reference backend on interval plans ----------------------------------------


@pytest.mark.parametrize(
    "source, block",
    [
        (library.documents([40, 7, 60, 21], causal=True), (32, 32)),
        (library.stack([library.sliding_window(100, 17), library.prefix_lm(100, 33)]), (32, 64)),
        (library.longformer(90, 6, [0, 1], causal=False), (64, 32)),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_reference_backend_gives_the_same_results_on_both_variants(source, block):
    torch = pytest.importorskip("torch")
    from maskc.runtime import load_plan

    g = torch.Generator().manual_seed(0)
    heads = max(2, source.heads)
    q, k, v = (torch.randn(1, heads, source.q_len, 16, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, heads, source.q_len, 16, generator=g, dtype=torch.float64)
    results = []
    for variant in ("intervals", "block_sparse"):
        plan = load_plan(maskc.compile(source, block=block, variant=variant))
        assert plan.on(torch.device("cpu")).variant == variant
        out = plan.attention(q, k, v, backend="reference")
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_device_plan_carries_the_intervals():
    torch = pytest.importorskip("torch")
    from maskc.runtime.device import DevicePlan

    plan = maskc.compile(library.causal(100), block=(32, 32), variant="intervals")
    dplan = DevicePlan.from_plan(plan)
    assert dplan.variant == "intervals" and dplan.intervals.dtype == torch.int32
    assert torch.equal(dplan.intervals, torch.from_numpy(np.array(plan.arrays["intervals"])))
    assert dplan.bitmaps.shape == (0, 32, 1) and int(dplan.row_tile.min()) == -2
    bitmap = DevicePlan.from_plan(maskc.compile(library.causal(100), block=(32, 32), variant="block_sparse"))
    assert bitmap.variant == "block_sparse" and bitmap.intervals.shape == (0, 4, 100)


# --- auto, hashes and the cache ------------------------------------------------------------------


class NoRows(MaskSource):
    """Wraps a structured source and fails the test if the compiler reads a row."""

    def __init__(self, source: MaskSource):
        self.source, self.shape, self.name = source, source.shape, source.name

    def rows(self, b, h, start, stop):
        raise AssertionError(f"rows({start}, {stop}) read from {self.name}")

    def intervals(self):
        return self.source.intervals()


def test_auto_keeps_small_masks_on_bitmaps_and_takes_intervals_for_long_ones():
    assert maskc.compile(library.causal(300)).variant == "block_sparse"
    assert maskc.compile(np.random.default_rng(0).random((100, 100)) < 0.5).variant == "block_sparse"  # does not fit
    n = 65536
    assert n * n >= AUTO_PAIRS
    assert maskc.compile(NoRows(library.sliding_window(n, 1024))).variant == "intervals"
    many_partials = library.documents([37] * 4000)  # one partial tile per document boundary
    assert maskc.compile(NoRows(many_partials)).variant == "intervals"


def test_cache_is_shared_by_a_spec_and_the_dense_mask(tmp_path):
    cache = PlanCache(tmp_path)
    spec = {"kind": "documents", "lengths": [100, 37, 200], "causal": True}
    first, hit1 = cache.compile(spec, block=64, variant="intervals")
    second, hit2 = cache.compile(maskc.open_mask(spec).to_dense(), block=64, variant="intervals")
    assert (hit1, hit2) == (False, True) and first.to_bytes() == second.to_bytes()
    source = maskc.open_mask(spec)
    assert first.mask_sha256 == intervals_sha256(source.shape, canonical(source.intervals(), source.q_len))
    third, hit3 = cache.compile(spec, block=64, variant="block_sparse")
    assert not hit3 and third.hash_of == "bits" and third.mask_sha256 == maskc.compiler.mask_sha256(spec)


# --- FlashMask -----------------------------------------------------------------------------------


def _docs_figure(rows: list[str]) -> np.ndarray:
    return np.array([[c == "1" for c in row] for row in rows])


# FlashMask's documented examples (flashmask_attention docstring): values, causal flag, dense mask
FLASHMASK_EXAMPLES = {
    "causal document": (
        [[4], [4], [4], [4], [7], [7], [7], [10], [10], [10]], True,
        ["1000000000", "1100000000", "1110000000", "1111000000", "0000100000",
         "0000110000", "0000111000", "0000000100", "0000000110", "0000000111"],
    ),
    "document": (
        [[4, 0], [4, 0], [4, 0], [4, 0], [7, 4], [7, 4], [7, 4], [10, 7], [10, 7], [10, 7]], False,
        ["1111000000"] * 4 + ["0000111000"] * 3 + ["0000000111"] * 3,
    ),
    "global + sliding window": (
        [[10, 10, 0, 0], [10, 10, 0, 0], [4, 10, 0, 0], [5, 10, 0, 0], [6, 10, 2, 3],
         [7, 10, 2, 4], [8, 10, 2, 5], [9, 10, 2, 6], [10, 10, 2, 7], [10, 10, 2, 8]], False,
        ["1111111111", "1111111111", "1111000000", "1111100000", "1101110000",
         "1100111000", "1100011100", "1100001110", "1100000111", "1100000011"],
    ),
    "causal blockwise": (
        [[4, 7], [4, 7], [4, 7], [4, 7], [10, 10], [10, 10], [10, 10], [10, 10], [10, 10], [10, 10]], True,
        ["1000000000", "1100000000", "1110000000", "1111000000", "0000100000",
         "0000110000", "0000111000", "1111111100", "1111111110", "1111111111"],
    ),
}


@pytest.mark.parametrize("name", sorted(FLASHMASK_EXAMPLES))
def test_flashmask_documented_examples(name):
    values, causal, figure = FLASHMASK_EXAMPLES[name]
    array = np.array(values, dtype=np.int32)[None, None]
    source = from_startend_row_indices(array, causal)
    assert np.array_equal(source.to_dense()[0, 0], _docs_figure(figure))
    plan = maskc.compile(source, block=32, variant="intervals")
    back, back_causal = to_startend_row_indices(plan)
    assert np.array_equal(from_startend_row_indices(back, back_causal).to_dense(), source.to_dense())


@pytest.mark.parametrize(
    "source, causal, width",
    [
        (library.documents([30, 50, 20]), True, 1),
        (library.causal_blockwise(100, 16), False, 2),  # bidirectional within a block
        (library.intersection(library.documents([60, 40]), library.sliding_window(100, 8)), True, 1),
        (library.documents([30, 50, 20], causal=False), False, 2),
        (library.prefix_lm(100, 20), False, 2),
        (library.stack([library.longformer(100, 5, [0, 99]), library.causal(100)]), False, 4),
        (library.full(60, kv_len=90), False, 2),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_flashmask_export_picks_the_smallest_form(source, causal, width):
    for variant in ("intervals", "block_sparse"):
        array, got_causal = to_startend_row_indices(maskc.compile(source, block=32, variant=variant))
        assert array.dtype == np.int32 and array.shape == (source.batch, source.heads, source.kv_len, width)
        assert got_causal == causal
        q_len = None if causal else source.q_len
        assert np.array_equal(from_startend_row_indices(array, got_causal, q_len).to_dense(), source.to_dense())


@settings(max_examples=60, deadline=None)
@given(interval_vectors(), st.booleans())
def test_flashmask_round_trip_of_any_interval_mask(case, square):
    vectors, q = case
    if square:  # square masks may come back in causal form
        vectors, q = np.minimum(vectors, vectors.shape[-1]), vectors.shape[-1]
    shape = (1, vectors.shape[0], q, vectors.shape[-1])
    plan = maskc.compile(IntervalSource(vectors, shape, "random"), block=32, variant="intervals")
    array, causal = to_startend_row_indices(plan)
    back = from_startend_row_indices(array, causal, None if causal else q)
    assert np.array_equal(back.to_dense(), plan.to_mask())


def test_flashmask_refuses_what_it_cannot_express():
    with pytest.raises(MaskError, match="does not fit FlashMask's column intervals"):
        to_startend_row_indices(maskc.compile(library.hash_buckets(64, 4), block=32))
    ok = np.zeros((1, 1, 8, 2), dtype=np.int32)
    for bad, causal, message in [
        (np.zeros((1, 8, 2), dtype=np.int32), True, r"shape \[B, H, Nk, 1\|2\|4\]"),
        (np.zeros((1, 1, 8, 3), dtype=np.int32), True, r"shape \[B, H, Nk, 1\|2\|4\]"),
        (np.zeros((1, 1, 8, 4), dtype=np.int32), True, "no causal form with 4 values"),
        (np.zeros((1, 1, 8, 1), dtype=np.int32), False, "no bidirectional form with 1 values"),
        (ok.astype(np.float32), True, "must hold integers"),
        (ok + 9, True, r"startend_row_indices\[0, 0, 0, 0\] = 9 is outside \[0, q_len=8\]"),
        (ok - 1, False, "outside"),
    ]:
        with pytest.raises(MaskError, match=message):
            from_startend_row_indices(bad, causal)
    with pytest.raises(MaskError, match="square"):
        from_startend_row_indices(ok, True, q_len=9)
    # a start past its end masks nothing, as in FlashMask's kernels
    crossed = np.array([[[[5, 2]] * 8]], dtype=np.int32)
    assert from_startend_row_indices(crossed, True).to_dense()[0, 0].tolist() == np.tri(8, dtype=bool).tolist()


def test_interval_source_rows_are_checked():
    source = IntervalSource(np.array([[[8], [8], [0], [0]]]), (1, 1, 8, 1), "one")
    with pytest.raises(MaskError, match="outside the mask"):
        source.rows(0, 0, 0, 9)


# --- the bar: 131072 tokens from structure -------------------------------------------------------

N = 131072
BAR_SPECS = {
    "documents": {"kind": "documents", "lengths": None, "causal": True},
    "prefix_lm": {"kind": "prefix_lm", "n": N, "prefix": 40000},
    "sliding_window": {"kind": "sliding_window", "n": N, "window": 4096, "causal": True},
}
BAR_PLAN_BYTES = {"documents": 2098199, "prefix_lm": 2106401, "sliding_window": 2098199}  # format 4 (an empty pieces array), no profile


def bar_lengths() -> list[int]:
    """Sixteen packed documents of 512 to 16383 tokens (seeded), summing to 131072."""
    r = np.random.default_rng(0)
    out: list[int] = []
    while sum(out) < N:
        out.append(int(r.integers(512, 16384)))
    out[-1] -= sum(out) - N
    return out


def bar_spec(kind: str) -> dict:
    spec = dict(BAR_SPECS[kind])
    if kind == "documents":
        spec["lengths"] = bar_lengths()
    return spec


@pytest.mark.parametrize("kind", sorted(BAR_SPECS))
def test_131072_tokens_compile_from_structure_without_reading_rows(kind):
    source = NoRows(maskc.open_mask(bar_spec(kind)))
    plan = maskc.compile(source)
    assert plan.variant == "intervals" and plan.q_len == N
    assert len(plan.to_bytes()) == BAR_PLAN_BYTES[kind]


def test_131072_token_cli_compile_time_memory_and_size(tmp_path):
    """``maskc compile spec.json`` at 131072 tokens, each in a fresh process: time, peak memory, plan size."""
    runner = textwrap.dedent(
        """
        import json, resource, sys, time
        start = time.perf_counter()
        from maskc.cli.main import cli
        cli(["compile", sys.argv[1], "-o", sys.argv[2], "-q"], prog_name="maskc")
        print(json.dumps({"seconds": time.perf_counter() - start, "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        """
    )
    env = {"MASKC_CACHE_DIR": str(tmp_path / "cache"), "MASKC_PROFILE": "none", "PATH": "/usr/bin:/bin"}
    measured = {}
    for kind in sorted(BAR_SPECS):
        spec, plan = tmp_path / f"{kind}.json", tmp_path / f"{kind}.plan"
        spec.write_text(json.dumps(bar_spec(kind)))
        out = subprocess.run([sys.executable, "-c", runner, str(spec), str(plan)], check=True, capture_output=True, text=True, env=env).stdout
        measured[kind] = json.loads(out.strip().splitlines()[-1])
        assert plan.stat().st_size == BAR_PLAN_BYTES[kind] < 4 << 20
        assert measured[kind]["maxrss_mib"] < 1024
        assert measured[kind]["seconds"] < 10  # the bar is 2 s on 2 cores; generous against noisy CI machines
    print(measured)
